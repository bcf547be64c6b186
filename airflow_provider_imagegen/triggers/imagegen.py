"""ImageGenTrigger: the deferrable wait for the image API, run in the triggerer's event loop.

It holds only the connection id and the validated request bodies (never the key), reads the
connection with the async API, sends each request on the hook's async path with bounded
concurrency, and fires one small JSON event: per prompt either its image URLs or its error,
with the error's class kept so that a permanent error stays permanent on the worker.

Nothing here blocks the triggerer's event loop: the hook's async client is one connection pool
per trigger run, sharing one TLS context per process (built in a worker thread the first time),
the connection comes from ``aget_connection``, and every request is awaited. Cancelling
``run()`` (trigger timeout, triggerer shutdown, the task being killed) cancels the requests in
flight and closes the pool.

Trade-off: the API is synchronous, so a triggerer restart mid-request sends that request again
(and it may be billed twice). The worker-side retry safety (manifest, recorded URLs) still holds.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_imagegen.exceptions import ImageGenError, event_from_error

# imported here, not inside run(): an import inside the event loop would block it
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
from airflow_provider_imagegen.models import ImageGenerationRequest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


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

    def _hook(self) -> ImageGenHook:
        return ImageGenHook(self.imagegen_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Send every request (bounded), then yield one event with every prompt's outcome."""
        hook = self._hook()
        try:
            results = await self._generate_all(hook)
        finally:
            await hook.aclose()
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
