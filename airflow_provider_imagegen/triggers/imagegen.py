"""ImageGenTrigger: the deferrable wait for the image API, run in the triggerer's event loop.

It holds only the connection id and the validated request bodies (never the key), reads the
connection with the async API, sends each request on the hook's async path with bounded
concurrency, and fires one small JSON event: per prompt either its image URLs or its error,
with the error's class kept so that a permanent error stays permanent on the worker.

Nothing here blocks the triggerer's event loop: one HTTP connection pool is opened per trigger
run (sharing one TLS context per process, built in a worker thread the first time; building it
costs tens of milliseconds), the connection comes from ``aget_connection``, and every request is
awaited. Cancelling ``run()`` (trigger timeout, triggerer shutdown, the task being killed)
cancels the requests in flight and closes the pool.

Trade-off: the API is synchronous, so a triggerer restart mid-request sends that request again
(and it may be billed twice). The worker-side retry safety (manifest, recorded URLs) still holds.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

import httpx
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_imagegen import exceptions
from airflow_provider_imagegen.exceptions import ImageGenError

# imported here, not inside run(): an import inside the event loop would block it
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
from airflow_provider_imagegen.models import ImageGenerationRequest

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator

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


class _SharedTransport(httpx.AsyncBaseTransport):
    """Lends one connection pool to the hook's short-lived clients; only its owner closes the pool.

    ``httpx.AsyncClient`` closes its transport on exit; the hook opens one client per request, so
    without this wrapper every request would build (and then close) its own pool and TLS context.
    """

    def __init__(self, pool: httpx.AsyncHTTPTransport) -> None:
        self.pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send through the shared pool."""
        return await self.pool.handle_async_request(request)

    async def aclose(self) -> None:
        """A borrowing client is done: keep the pool open for the other requests."""


class ImageGenTrigger(BaseTrigger):
    """Generate images for one or more prompts in the triggerer.

    :param imagegen_conn_id: the ``imagegen`` connection (only its id is serialised).
    :param requests: prompt index → request body (as built by ``ImageGenerationRequest.to_json``).
    :param max_concurrency: requests in flight at once.
    """

    def __init__(
        self,
        imagegen_conn_id: str,
        requests: dict[int, dict[str, Any]] | dict[str, dict[str, Any]],
        max_concurrency: int = 4,
    ) -> None:
        super().__init__()
        self.imagegen_conn_id = imagegen_conn_id
        self.requests = {str(index): dict(body) for index, body in requests.items()}
        self.max_concurrency = max(1, int(max_concurrency))

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and kwargs; the kwargs hold no secret."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "imagegen_conn_id": self.imagegen_conn_id,
                "requests": self.requests,
                "max_concurrency": self.max_concurrency,
            },
        )

    def _hook(self, transport: httpx.AsyncBaseTransport) -> ImageGenHook:
        return ImageGenHook(self.imagegen_conn_id, async_transport=transport)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Send every request (bounded), then yield one event with every prompt's outcome."""
        pool = httpx.AsyncHTTPTransport(
            verify=await shared_ssl_context(),
            limits=httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency),
        )
        try:
            results = await self._generate_all(self._hook(_SharedTransport(pool)))
        finally:
            await pool.aclose()
        yield TriggerEvent({"results": results})

    async def _generate_all(self, hook: ImageGenHook) -> dict[str, dict[str, Any]]:
        indexes = list(self.requests)
        try:
            # read once, with the async API, before fanning out (the sync lookup can raise here)
            await hook.asettings()
        except Exception as error:
            failed = event_from_error(_as_imagegen_error(error))
            self.log.error("Connection %r unusable: %s", self.imagegen_conn_id, failed["message"])
            return {index: dict(failed) for index in indexes}
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(index: str) -> dict[str, Any]:
            async with gate:
                try:
                    request = ImageGenerationRequest.build(**self.requests[index])
                    result = await hook.asend(request)
                except Exception as error:
                    outcome = event_from_error(_as_imagegen_error(error))
                    self.log.warning("Prompt %s failed: %s: %s", index, outcome["error_class"], outcome["message"])
                    return outcome
            self.log.info(
                "Prompt %s: %d image URL(s) in %.1f s (%d attempt(s))",
                index,
                len(result.image_urls),
                result.elapsed,
                result.attempts,
            )
            return {
                "status": "success",
                "image_urls": result.image_urls,
                "elapsed": round(result.elapsed, 3),
                "attempts": result.attempts,
                "request_id": result.request_id,
            }

        outcomes = await asyncio.gather(*(one(index) for index in indexes))
        return dict(zip(indexes, outcomes, strict=True))


def _as_imagegen_error(error: Exception) -> ImageGenError:
    """Our errors as they are; anything else (a missing connection, a bug) as a retryable base error."""
    if isinstance(error, ImageGenError):
        return error
    return ImageGenError(f"{type(error).__name__}: {error}")


def event_from_error(error: ImageGenError) -> dict[str, Any]:
    """An error as a JSON-safe event entry that keeps its class and whether it is permanent."""
    entry: dict[str, Any] = {
        "status": "error",
        "error_class": type(error).__name__,
        "message": str(error),
        "permanent": bool(error.permanent),
    }
    for name in ("status_code", "request_id", "code", "retry_after"):
        value = error.__dict__.get(name)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            entry[name] = value
    return entry


def error_from_event(outcome: dict[str, Any]) -> ImageGenError:
    """Rebuild the error of an event entry as an instance of its original class (or the base class)."""
    cls = getattr(exceptions, str(outcome.get("error_class")), None)
    message = str(outcome.get("message") or "the trigger reported an error")
    error: ImageGenError
    if isinstance(cls, type) and issubclass(cls, ImageGenError):
        error = cls.__new__(cls)
        ImageGenError.__init__(error, message)
        for name in ("status_code", "request_id", "code", "retry_after"):
            if name in outcome:
                setattr(error, name, outcome[name])
    else:
        error = ImageGenError(message)
    error.permanent = bool(outcome.get("permanent", error.permanent))
    return error
