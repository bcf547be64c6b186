"""The API-call side of the hook, free of Airflow: connection settings, retry policy, response parsing.

Everything here is a pure function or a small value type, so it is tested without a network
or an Airflow connection, and shared by the sync path (the hook) and the async one (the trigger).
Image downloads (URL policy, redirects, the capped stream) have their own module, ``download``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import random
import threading
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import urlsplit, urlunsplit

import httpx
import tenacity

from airflow_provider_imagegen import __version__
from airflow_provider_imagegen.exceptions import (
    ImageGenBadResponseError,
    ImageGenDownloadError,
    ImageGenError,
    ImageGenNoImagesError,
    ImageGenRateLimitError,
    ImageGenValidationError,
    error_from_response,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Mapping

DEFAULT_BASE_URL = "https://api.highwayapi.ai"
DEFAULT_ENDPOINT = "/v3/gpt-image-2-text-to-image"
DEFAULT_TIMEOUT = 600.0  # a high-quality 4K image can take minutes
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 3
MAX_RETRIES_LIMIT = 20  # the connection form's maximum
MAX_RETRY_AFTER = 120.0  # a longer wait is better spent by an Airflow retry than a blocked worker
USER_AGENT = f"airflow-provider-imagegen/{__version__} httpx/{httpx.__version__}"
MAX_ANSWER_BYTES = 4 * 1024 * 1024  # ten signed URLs take a few kilobytes
MAX_ERROR_BODY_BYTES = 64 * 1024  # an error message is cut to 500 characters anyway


@dataclass(frozen=True)
class ConnectionSettings:
    """What the hook needs from an ``imagegen`` connection. The key is kept out of ``repr``."""

    api_key: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    endpoint: str = DEFAULT_ENDPOINT
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES

    @property
    def url(self) -> str:
        """The full URL of the generation endpoint."""
        return self.base_url + self.endpoint

    @property
    def public_url(self) -> str:
        """The endpoint's URL without credentials, query or fragment (what a manifest may record)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    @property
    def httpx_timeout(self) -> httpx.Timeout:
        """Short connect, long read: generation is slow, an unreachable host should fail fast."""
        return httpx.Timeout(self.timeout, connect=self.connect_timeout)

    def headers(self) -> dict[str, str]:
        """Headers of a generation call. Only this call carries the key, never image downloads."""
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": "identity",
        }


def _number(
    conn_id: str, name: str, value: Any, kind: type[int] | type[float], minimum: float, maximum: float
) -> int | float:
    # URI-form connections turn extras into strings: "30" and "2" are fine; "nan", "inf", "2.5"
    # retries, booleans and out-of-range values are not (a NaN timeout would disable the timeout).
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if (
        isinstance(value, bool)
        or not math.isfinite(number)
        or not minimum <= number <= maximum
        or (kind is int and not number.is_integer())
    ):
        what = "an integer" if kind is int else "a number"
        raise ImageGenValidationError(
            f"connection {conn_id!r} extra {name}", value, f"{what} from {minimum:g} to {maximum:g}"
        )
    return int(number) if kind is int else number


class _Hidden:
    """Stands for a secret in an error's ``value``: its repr says what is wrong, never what it is."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}, not shown>"


def check_api_key(conn_id: str, password: str | None) -> str:
    """The API key with surrounding whitespace removed; refused (without printing it) if unusable.

    Secrets backends and files often add a trailing newline or carriage return: it is stripped.
    A key that still holds a control character, or a non-ASCII one, cannot be sent in an HTTP
    header; it is refused with an error that says which, never showing the key.

    :param conn_id: connection id, for the message.
    :param password: the connection's password field.
    """
    field_name = f"connection {conn_id!r} API Key (password)"
    key = (password or "").strip()
    if not key:
        raise ImageGenValidationError(field_name, "", "a non-empty API key")
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in key):
        raise ImageGenValidationError(
            field_name, _Hidden("a key holding a control character"), "printable ASCII without control characters"
        )
    if not key.isascii():
        raise ImageGenValidationError(
            field_name, _Hidden("a key holding a non-ASCII character"), "printable ASCII (an HTTP header value)"
        )
    return key


def check_base_url(conn_id: str, base_url: str) -> str:
    """Refuse a Base URL holding credentials, a query or a fragment, without printing them.

    Credentials in the URL would be sent as Basic auth in place of the Bearer key (and printed
    wherever the URL is); a query or fragment would end up in the middle of the endpoint's URL.

    :param conn_id: connection id, for the message.
    :param base_url: the normalised Base URL.
    """
    parts = urlsplit(base_url)
    problem = ""
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        problem = "credentials (user:password@)"
    elif parts.query or parts.fragment or "?" in base_url or "#" in base_url:
        problem = "a query string or fragment"
    if problem:
        host = parts.hostname or ""
        shown = f"{parts.scheme}://{host}" + (f":{parts.port}" if _port_or_none(parts) else "") + parts.path
        raise ImageGenValidationError(
            f"connection {conn_id!r} Base URL (host)",
            _Hidden(f"{shown} with {problem}"),
            "a URL without credentials, query or fragment (put the key in API Key)",
        )
    if parts.scheme not in ("http", "https"):
        raise ImageGenValidationError(f"connection {conn_id!r} Base URL (host)", parts.scheme, "http or https")
    return base_url


def _port_or_none(parts: Any) -> int | None:
    try:
        return int(parts.port) if parts.port else None
    except ValueError:
        return None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, as spelled) is this machine's loopback."""
    host = host.strip("[]").rstrip(".").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_warning(settings: ConnectionSettings) -> str | None:
    """A warning when the key would travel over plain http to a host that is not this machine."""
    parts = urlsplit(settings.base_url)
    if parts.scheme != "http" or is_loopback_host(parts.hostname or ""):
        return None
    return (
        f"The imagegen connection sends the API key over plain http to {parts.hostname}: "
        "anyone on the network path can read it. Use an https Base URL."
    )


def normalise_base_url(host: str | None, port: int | None = None) -> str:
    """``api.example.com`` → ``https://api.example.com``; empty → the public API; no trailing slash.

    ``port`` (the connection's port field, set by URI-form connections such as
    ``imagegen://:key@localhost:8080``) is added when the host does not carry a port itself.
    """
    host = (host or "").strip()
    if not host:
        return DEFAULT_BASE_URL
    if "://" not in host:
        host = "https://" + host
    host = host.rstrip("/")
    if port:
        parts = urlsplit(host)
        if parts.port is None:
            host = parts._replace(netloc=f"{parts.netloc}:{int(port)}").geturl()
    return host


def settings_from_connection(
    conn_id: str,
    host: str | None,
    password: str | None,
    extra: Mapping[str, Any],
    port: int | None = None,
) -> ConnectionSettings:
    """Turn an ``imagegen`` connection's fields into settings, checking each one.

    :param conn_id: connection id, for error messages.
    :param host: the Base URL (scheme optional, default the public API).
    :param password: the API key (required).
    :param extra: ``endpoint``, ``timeout`` (read timeout, s), ``connect_timeout`` (s), ``max_retries``.
    :param port: the connection's port, if any (only URI-form connections set it).
    """
    api_key = check_api_key(conn_id, password)
    base_url = check_base_url(conn_id, normalise_base_url(host, port))
    endpoint = str(extra.get("endpoint") or DEFAULT_ENDPOINT).strip()
    if not endpoint.startswith("/"):
        endpoint = "/" + endpoint
    settings: dict[str, Any] = {}
    for name, kind, minimum, maximum in (
        ("timeout", float, 0.001, 86_400),
        ("connect_timeout", float, 0.001, 3_600),
        ("max_retries", int, 0, MAX_RETRIES_LIMIT),
    ):
        if extra.get(name) not in (None, ""):
            settings[name] = _number(conn_id, name, extra[name], kind, minimum, maximum)
    if "?" in endpoint or "#" in endpoint or any(not char.isprintable() for char in endpoint):
        raise ImageGenValidationError(
            f"connection {conn_id!r} extra endpoint", _Hidden("a path with a query or control characters"), "a path"
        )
    return ConnectionSettings(api_key=api_key, base_url=base_url, endpoint=endpoint, **settings)


def _answer_limit(response: httpx.Response) -> int:
    return MAX_ANSWER_BYTES if response.is_success else MAX_ERROR_BODY_BYTES


def _capped_answer(response: httpx.Response, body: bytes, truncated: bool) -> httpx.Response:
    if truncated and response.is_success:
        raise ImageGenBadResponseError(
            f"The image API answered HTTP {response.status_code} with a body above {MAX_ANSWER_BYTES} bytes"
        )
    dropped = ("content-encoding", "content-length", "transfer-encoding")
    headers = [(name, value) for name, value in response.headers.multi_items() if name.lower() not in dropped]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=response.request,
        extensions={"reason_phrase": response.extensions.get("reason_phrase", b"")},
    )


def _undecodable(response: httpx.Response, error: ImageGenError) -> tuple[bytes, bool]:
    if response.is_success:
        raise ImageGenBadResponseError(f"The image API's answer could not be read: {error}") from None
    return b"", False  # the status alone still says what failed


def read_answer(response: httpx.Response) -> httpx.Response:
    """A streamed API answer read with a size cap (and a bounded decoder): the body is held in memory.

    A 2xx body above :data:`MAX_ANSWER_BYTES` is a bad response; an error body is cut to
    :data:`MAX_ERROR_BODY_BYTES`. Stacked or unknown content encodings are refused.

    :param response: a response opened with ``client.stream`` (not yet read).
    """
    from airflow_provider_imagegen.hooks.download import read_capped

    try:
        body, truncated = read_capped(response, _answer_limit(response))
    except ImageGenDownloadError as error:
        body, truncated = _undecodable(response, error)
    return _capped_answer(response, body, truncated)


async def aread_answer(response: httpx.Response) -> httpx.Response:
    """The async twin of :func:`read_answer`."""
    from airflow_provider_imagegen.hooks.download import aread_capped

    try:
        body, truncated = await aread_capped(response, _answer_limit(response))
    except ImageGenDownloadError as error:
        body, truncated = _undecodable(response, error)
    return _capped_answer(response, body, truncated)


def parse_image_urls(response: httpx.Response) -> list[str]:
    """The image URLs of a 2xx generation response, or a bad-response error saying what is wrong.

    The contract's prose says ``images`` is an "array of generated image URLs" while its example
    answer is ``{"images": [{}]}``: an item is either an http(s) URL string or an object carrying
    one in ``url`` (its other fields, like the answer's other keys, are ignored). Anything else
    fails the call permanently, naming the item's shape (keys and types), never a value.
    """
    try:
        body = response.json()
    except ValueError:
        raise ImageGenBadResponseError(
            f"The image API answered HTTP {response.status_code} with a body that is not JSON "
            f"({len(response.content)} bytes, content type {response.headers.get('content-type')!r})"
        ) from None
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, list):
        shape = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise ImageGenBadResponseError(f"The image API answered without an 'images' list (got {shape})")
    if not images:
        raise ImageGenNoImagesError("No images returned by the image API (an empty 'images' list)")
    urls: list[str] = []
    for position, item in enumerate(images):
        url = item.get("url") if isinstance(item, dict) else item
        if not _is_http_url(url):
            raise ImageGenBadResponseError(
                f"The image API returned something other than an image URL: images[{position}] is "
                f"{_item_shape(item)} (expected an http(s) URL, or an object with one in 'url')"
            )
        urls.append(url)
    return urls


_SHOWN_KEYS = 8  # of an unusable item's keys, in a message


def _is_http_url(value: Any) -> TypeGuard[str]:
    """Whether ``value`` is a string with an http or https scheme."""
    if not isinstance(value, str):
        return False
    try:
        return urlsplit(value).scheme in ("http", "https")
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False


def _key_name(key: str) -> str:
    """A key as a message may show it: a short identifier as is, anything else (a URL?) by its length."""
    return key if key.isidentifier() and len(key) <= 40 else f"<a key of {len(key)} characters>"


def _item_shape(item: Any) -> str:
    """An ``images`` item described by its keys and types, never its values (a value may be a signed URL)."""
    if isinstance(item, dict):
        names = sorted(item)
        fields = [f"{_key_name(name)}: {type(item[name]).__name__}" for name in names[:_SHOWN_KEYS]]
        if len(names) > _SHOWN_KEYS:
            fields.append(f"and {len(names) - _SHOWN_KEYS} more")
        problem = "whose 'url' is not an http(s) URL" if "url" in item else "and no 'url'"
        return f"an object (dict) with keys {{{', '.join(fields)}}} {problem}"
    if isinstance(item, str):
        return f"a str of {len(item)} characters that is not an http(s) URL"
    return f"of type {type(item).__name__}"


def raise_for_status(response: httpx.Response, api_key: str) -> None:
    """Raise the mapped exception for a non-2xx response (body already read)."""
    if not response.is_success:
        raise error_from_response(response, secret=api_key)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for retryable errors: honour Retry-After, else exponential with jitter, capped."""

    max_retries: int = DEFAULT_MAX_RETRIES
    initial: float = 0.5
    maximum: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = MAX_RETRY_AFTER

    def wait(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        if isinstance(error, ImageGenRateLimitError) and error.retry_after is not None:
            return error.retry_after
        backoff = min(self.maximum, self.initial * 2 ** (attempt - 1))
        return backoff * (1 + random.uniform(0, self.jitter))

    def should_retry(self, error: BaseException) -> bool:
        """Only errors that can pass; a Retry-After beyond the cap is left to an Airflow retry."""
        if not isinstance(error, ImageGenError) or not error.retryable:
            return False
        retry_after = getattr(error, "retry_after", None)
        return retry_after is None or retry_after <= self.max_retry_after

    def tenacity_kwargs(self, before_sleep: Callable[[tenacity.RetryCallState], None]) -> dict[str, Any]:
        """Arguments for ``tenacity.Retrying`` / ``AsyncRetrying`` implementing this policy."""

        def wait(state: tenacity.RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return self.wait(state.attempt_number, error)

        return {
            "retry": tenacity.retry_if_exception(self.should_retry),
            "stop": tenacity.stop_after_attempt(self.max_retries + 1),
            "wait": wait,
            "before_sleep": before_sleep,
            "reraise": True,
        }


_SSL_CONTEXT: ssl.SSLContext | None = None
_SSL_CONTEXT_LOCK = threading.Lock()


def _build_ssl_context() -> ssl.SSLContext:
    """The process-wide TLS context (certifi roots), built once: loading the roots takes ~40 ms."""
    global _SSL_CONTEXT
    with _SSL_CONTEXT_LOCK:
        if _SSL_CONTEXT is None:
            _SSL_CONTEXT = httpx.create_ssl_context()
        return _SSL_CONTEXT


async def shared_ssl_context() -> ssl.SSLContext:
    """The process-wide TLS context, built off the event loop the first time."""
    if _SSL_CONTEXT is not None:
        return _SSL_CONTEXT
    return await asyncio.to_thread(_build_ssl_context)
