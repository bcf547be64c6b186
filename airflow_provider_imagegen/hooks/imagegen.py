"""ImageGenHook: an ``imagegen`` connection → a pooled HTTP client → typed calls of the image API."""

from __future__ import annotations

import asyncio
import time
import weakref
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

import httpx
import tenacity
from airflow.sdk import BaseHook

from airflow_provider_imagegen.exceptions import (
    ImageGenAuthenticationError,
    ImageGenBadRequestError,
    ImageGenError,
    ImageGenNotFoundError,
    error_from_transport,
    request_id_of,
    scrub,
)
from airflow_provider_imagegen.get_provider_info import DEFAULT_CONN_ID
from airflow_provider_imagegen.hooks import download
from airflow_provider_imagegen.hooks._client import (
    USER_AGENT,
    ConnectionSettings,
    RetryPolicy,
    aread_answer,
    parse_image_urls,
    plain_http_warning,
    raise_for_status,
    read_answer,
    settings_from_connection,
    shared_ssl_context,
)
from airflow_provider_imagegen.hooks.address import checking_transport
from airflow_provider_imagegen.hooks.download import DEFAULT_DOWNLOAD_DEADLINE, DEFAULT_MAX_IMAGE_BYTES
from airflow_provider_imagegen.models import ImageGenerationRequest, ImageGenerationResult
from airflow_provider_imagegen.version_compat import amask_secret, aread_connection

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager

    from airflow.sdk import Connection
    from typing_extensions import Unpack

    from airflow_provider_imagegen.models import RequestParameters


class ImageGenHook(BaseHook):
    """Talk to the GPT Image 2 text-to-image API through an ``imagegen`` connection.

    The connection holds the Base URL (host; default ``https://api.highwayapi.ai``), the API key
    (password) and, in extra, ``endpoint``, ``timeout`` (read timeout in seconds), ``connect_timeout``
    and ``max_retries``. The key is sent only to the generation endpoint, never to image URLs, and
    is registered with Airflow's secrets masker when the connection is read.

    :param imagegen_conn_id: the ``imagegen`` connection to use.
    :param max_retries: overrides the connection's ``max_retries``.
    :param timeout: overrides the connection's read ``timeout`` (seconds).
    :param retry_policy: backoff settings (its ``max_retries`` is replaced by the connection's).
    :param max_image_bytes: the most bytes accepted for one image download.
    :param download_deadline: seconds one image download may take in all.
    :param transport: an httpx transport for the sync client (tests: ``httpx.MockTransport``).
    :param async_transport: the same for the async client.
    """

    conn_name_attr = "imagegen_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "imagegen"
    hook_name = "GPT Image 2"

    def __init__(
        self,
        imagegen_conn_id: str = default_conn_name,
        *,
        max_retries: int | None = None,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        download_deadline: float = DEFAULT_DOWNLOAD_DEADLINE,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__()
        self.imagegen_conn_id = imagegen_conn_id
        self._max_retries = max_retries
        self._timeout = timeout
        self._retry_policy = retry_policy or RetryPolicy()
        self.max_image_bytes = max_image_bytes
        self.download_deadline = download_deadline
        self._transport = transport
        self._async_transport = async_transport
        self._settings: ConnectionSettings | None = None
        self._aclient: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(imagegen_conn_id={self.imagegen_conn_id!r})"

    # -- the connection form on Airflow 3.1 (3.2+ reads provider info and never calls these) ---

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The form's extra fields, from the provider info's ``conn-fields`` (needs wtforms)."""
        from airflow_provider_imagegen.get_provider_info import connection_form_widgets

        return connection_form_widgets()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and placeholder fields, from the provider info's ``ui-field-behaviour``."""
        from airflow_provider_imagegen.get_provider_info import ui_field_behaviour

        return ui_field_behaviour()

    # -- connection --------------------------------------------------------------------------

    def _settings_from(self, conn: Connection, extra: dict[str, Any]) -> ConnectionSettings:
        settings = settings_from_connection(conn.conn_id, conn.host, conn.password, extra, conn.port)
        warning = plain_http_warning(settings)
        if warning:
            self.log.warning("%s", warning)
        overrides: dict[str, Any] = {}
        if self._max_retries is not None:
            overrides["max_retries"] = self._max_retries
        if self._timeout is not None:
            overrides["timeout"] = self._timeout
        if overrides:
            from dataclasses import replace

            settings = replace(settings, **overrides)
        return settings

    @property
    def settings(self) -> ConnectionSettings:
        """The connection's settings, read once (sync)."""
        if self._settings is None:
            connection = self.get_connection(self.imagegen_conn_id)
            from airflow.sdk.log import mask_secret

            if connection.password and connection.password.strip():
                mask_secret(connection.password.strip())  # before any check can fail and print
            settings = self._settings_from(connection, connection.extra_dejson)
            mask_secret(settings.api_key)
            self._settings = settings
        return self._settings

    async def asettings(self) -> ConnectionSettings:
        """The connection's settings, read once with the async connection API (for triggers)."""
        if self._settings is None:
            self._settings = self._settings_from(*await _read_connection_once(self, self.imagegen_conn_id))
        return self._settings

    async def aclient(self) -> httpx.AsyncClient:
        """One pooled async client per hook, built without blocking the event loop (for triggers).

        Its TLS context is shared by the whole process: loading the CA roots takes tens of
        milliseconds, which would stall every other trigger in the loop if done per request.
        """
        if self._aclient is None:
            settings = await self.asettings()
            verify: Any = True if self._async_transport else await shared_ssl_context()
            self._aclient = httpx.AsyncClient(
                timeout=settings.httpx_timeout,
                headers={"User-Agent": USER_AGENT},
                transport=self._async_transport,
                verify=verify,
                follow_redirects=False,
            )
        return self._aclient

    async def aclose(self) -> None:
        """Close the async client, if one was opened."""
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    def get_conn(self) -> httpx.Client:
        """The pooled HTTP client (one per hook)."""
        return self.client

    @cached_property
    def client(self) -> httpx.Client:
        """One pooled client per hook; the Bearer header is added per call, not here."""
        return httpx.Client(
            timeout=self.settings.httpx_timeout,
            headers={"User-Agent": USER_AGENT},
            transport=self._transport or checking_transport(self.settings.base_url),
            follow_redirects=False,
        )

    def close(self) -> None:
        """Close the pooled client, if one was opened."""
        if "client" in self.__dict__:
            self.client.close()
            del self.__dict__["client"]

    @property
    def policy(self) -> RetryPolicy:
        """The retry policy with the connection's retry budget."""
        from dataclasses import replace

        return replace(self._retry_policy, max_retries=self.settings.max_retries)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        self.log.warning(
            "Image API call failed (%s); retrying in %.1f s (attempt %d of %d)",
            error,
            wait,
            state.attempt_number + 1,
            self.policy.max_retries + 1,
        )

    # -- generation --------------------------------------------------------------------------

    def generate_images(self, prompt: str, **params: Unpack[RequestParameters]) -> ImageGenerationResult:
        """Generate images; returns their (short-lived) URLs. Validates everything before any call.

        Retries connect errors, timeouts, 408, 409, 429 and 5xx with backoff that honours
        Retry-After; never retries 400, 401, 403, 404, 422 or content-policy rejections.

        :param prompt: the text prompt, 0 to 32000 characters.
        :param params: the request's other parameters, by keyword; one left out takes
            :class:`~airflow_provider_imagegen.models.ImageGenerationRequest`'s default.
            ``n``: how many images, 1 to 10 (the API may return fewer);
            ``size``: one of :data:`~airflow_provider_imagegen.models.SIZES` or ``auto``;
            ``quality``: ``low``, ``medium`` or ``high``; ``background``: ``opaque`` or ``auto``;
            ``moderation``: ``low`` or ``auto``; ``output_format``: ``png`` or ``jpeg``;
            ``output_compression``: 0 to 100, only with jpeg (with png omit it or use 100).
        """
        return self.send(ImageGenerationRequest.build(prompt, **params))

    def send(self, request: ImageGenerationRequest) -> ImageGenerationResult:
        """Send an already validated request, with retries."""
        settings, started = self.settings, time.monotonic()
        retrying = tenacity.Retrying(**self.policy.tenacity_kwargs(self._log_retry))
        answer = retrying(self._post_once, settings, request)
        return _result(request, answer, started, retrying.statistics)

    def _post_once(self, settings: ConnectionSettings, request: ImageGenerationRequest) -> tuple[list[str], str | None]:
        with _transport_errors_mapped(settings), self.client.stream(**_post(settings, request)) as streamed:
            response = read_answer(streamed)
        return _answer(response, settings)

    async def agenerate_images(self, prompt: str, **params: Unpack[RequestParameters]) -> ImageGenerationResult:
        """:meth:`generate_images` from an event loop: the same arguments, checks and retries (via :meth:`asend`)."""
        return await self.asend(ImageGenerationRequest.build(prompt, **params))

    async def asend(self, request: ImageGenerationRequest) -> ImageGenerationResult:
        """Send an already validated request from an event loop, with retries (the trigger's path)."""
        settings, started = await self.asettings(), time.monotonic()
        retrying = tenacity.AsyncRetrying(**self.policy.tenacity_kwargs(self._log_retry))
        client = await self.aclient()

        async def post_once() -> tuple[list[str], str | None]:
            with _transport_errors_mapped(settings):
                async with client.stream(**_post(settings, request)) as streamed:
                    response = await aread_answer(streamed)
            return _answer(response, settings)

        answer: tuple[list[str], str | None] = await retrying(post_once)
        return _result(request, answer, started, retrying.statistics)

    # -- downloads ---------------------------------------------------------------------------

    def open_image(self, url: str) -> AbstractContextManager[download.ImageStream]:
        """Stream one image: ``with hook.open_image(url) as image: for chunk in image.iter_bytes(): ...``.

        The URL is checked first (https, or the API's own origin; no internal hosts). No
        Authorization header is sent; redirects are followed only to https URLs. A non-200
        answer (an expired URL gives 403/404) raises
        :class:`~airflow_provider_imagegen.exceptions.ImageGenDownloadError`.

        :param url: an image URL the API returned.
        """
        settings = self.settings
        return download.open_image(
            self.client,
            url,
            base_url=settings.base_url,
            timeout=httpx.Timeout(min(settings.timeout, self.download_deadline), connect=settings.connect_timeout),
            max_bytes=self.max_image_bytes,
            deadline=self.download_deadline,
        )

    # -- UI ----------------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """Check the Base URL, endpoint and API key without paying for an image.

        It sends one deliberately invalid request (``n=0`` and an empty prompt), which the API
        must reject before generating anything: a 400/422 answer means the endpoint was reached
        and the key accepted; 401/403 means the key was refused; 404 means a wrong endpoint.
        """
        try:
            settings = self.settings
        except ImageGenError as error:
            return False, str(error)
        if settings.api_key == MASKED_SECRET:
            return False, (
                "The API key reached the test masked ('***'), so it was not sent: Airflow 3.1's Connections "
                "list tests a saved connection with its password as the list shows it. Airflow 3.2+ tests "
                "the stored key; on 3.1, run a task to check the key."
            )
        try:
            with (
                httpx.Client(
                    timeout=httpx.Timeout(30.0, connect=settings.connect_timeout),
                    headers={"User-Agent": USER_AGENT},
                    transport=self._transport,
                ) as client,
                client.stream("POST", settings.url, json={"prompt": "", "n": 0}, headers=settings.headers()) as sent,
            ):
                response = read_answer(sent)
            raise_for_status(response, settings.api_key)
        except httpx.TransportError as error:
            return False, str(error_from_transport(error, secret=settings.api_key))
        except (ImageGenAuthenticationError, ImageGenNotFoundError) as error:
            return False, str(error)
        except ImageGenBadRequestError:
            return True, f"Connected to {settings.public_url}; the API key was accepted (no image was generated)."
        except ImageGenError as error:
            return False, str(error)
        except (httpx.HTTPError, ValueError) as error:  # e.g. a header httpx cannot encode
            return False, scrub(f"Could not send the test request: {type(error).__name__}: {error}", settings.api_key)
        return False, f"{settings.public_url} accepted an invalid request; is this the GPT Image 2 endpoint?"


MASKED_SECRET = "***"  # noqa: S105 (the mask, not a secret)
"""What Airflow's secrets masker shows in place of a password (and what Airflow 3.1's UI tests with)."""


def _post(settings: ConnectionSettings, request: ImageGenerationRequest) -> dict[str, Any]:
    """The generation call, as ``stream()`` arguments of either client: the body, with the Bearer key."""
    return {"method": "POST", "url": settings.url, "json": request.to_json(), "headers": settings.headers()}


@contextmanager
def _transport_errors_mapped(settings: ConnectionSettings) -> Iterator[None]:
    """An httpx transport failure of the generation call as one of ours (the key scrubbed)."""
    try:
        yield
    except httpx.TransportError as error:
        raise error_from_transport(error, secret=settings.api_key) from None


def _answer(response: httpx.Response, settings: ConnectionSettings) -> tuple[list[str], str | None]:
    """The image URLs and the request id of a generation answer; an HTTP error status raises."""
    raise_for_status(response, settings.api_key)
    return parse_image_urls(response), request_id_of(response.headers, settings.api_key)


def _result(
    request: ImageGenerationRequest, answer: tuple[list[str], str | None], started: float, statistics: dict[str, Any]
) -> ImageGenerationResult:
    urls, request_id = answer
    return ImageGenerationResult(
        image_urls=urls,
        request=request,
        elapsed=time.monotonic() - started,
        attempts=statistics.get("attempt_number", 1),
        request_id=request_id,
    )


# conn_id -> the lookup in flight, per event loop: a burst of triggers shares one read
_reads_in_flight: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Task[Any]]] = (
    weakref.WeakKeyDictionary()
)


async def _read_connection_once(hook: BaseHook, conn_id: str) -> tuple[Connection, dict[str, Any]]:
    """The connection and its extra, its password masked; triggers asking at once share one read.

    Hundreds of triggers deferred by one batch start together in the triggerer's loop, and each
    lookup goes through the supervisor. Only reads in flight are shared, nothing is cached: a
    trigger started after the read finished reads the connection again (and sees any edit).
    """
    reads = _reads_in_flight.setdefault(asyncio.get_running_loop(), {})
    read = reads.get(conn_id)
    if read is None:
        read = asyncio.ensure_future(_read_and_mask(hook, conn_id))
        reads[conn_id] = read
        read.add_done_callback(lambda _: reads.pop(conn_id, None))
    return await asyncio.shield(read)  # a cancelled trigger must not cancel the others' read


async def _read_and_mask(hook: BaseHook, conn_id: str) -> tuple[Connection, dict[str, Any]]:
    connection, extra = await aread_connection(hook, conn_id)
    if connection.password:
        await amask_secret(connection.password)
        if connection.password.strip() and connection.password.strip() != connection.password:
            await amask_secret(connection.password.strip())  # the form that is sent
    return connection, extra
