"""ImageGenTrigger: the deferrable wait for the image API, run in the triggerer's event loop.

It holds only the connection id and the validated request bodies (never the key), reads the
connection with the async API, sends each request on the hook's async path with bounded
concurrency, and fires one small JSON event: per prompt either its image URLs or its error,
with the error's class kept so that a permanent error stays permanent on the worker.

Trade-off: the API is synchronous, so a triggerer restart mid-request sends that request again
(and it may be billed twice). The worker-side retry safety (manifest, recorded URLs) still holds.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_imagegen import exceptions
from airflow_provider_imagegen.exceptions import ImageGenError
from airflow_provider_imagegen.models import ImageGenerationRequest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook


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
        self.max_concurrency = max_concurrency

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
        from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

        return ImageGenHook(self.imagegen_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Send every request (bounded), then yield one event with every prompt's outcome."""
        hook = self._hook()
        gate = asyncio.Semaphore(max(1, self.max_concurrency))

        async def one(body: dict[str, Any]) -> dict[str, Any]:
            async with gate:
                try:
                    request = ImageGenerationRequest.build(**body)
                    result = await hook.asend(request)
                except ImageGenError as error:
                    return event_from_error(error)
            return {
                "status": "success",
                "image_urls": result.image_urls,
                "elapsed": round(result.elapsed, 3),
                "attempts": result.attempts,
                "request_id": result.request_id,
            }

        indexes = list(self.requests)
        outcomes = await asyncio.gather(*(one(self.requests[index]) for index in indexes))
        yield TriggerEvent({"results": dict(zip(indexes, outcomes, strict=True))})


def event_from_error(error: ImageGenError) -> dict[str, Any]:
    """An error as a JSON-safe event entry that keeps its class and whether it is permanent."""
    return {
        "status": "error",
        "error_class": type(error).__name__,
        "message": str(error),
        "permanent": bool(error.permanent),
    }


def error_from_event(outcome: dict[str, Any]) -> ImageGenError:
    """Rebuild the error of an event entry as an instance of its original class (or the base class)."""
    cls = getattr(exceptions, str(outcome.get("error_class")), None)
    message = str(outcome.get("message") or "the trigger reported an error")
    error: ImageGenError
    if isinstance(cls, type) and issubclass(cls, ImageGenError):
        error = cls.__new__(cls)
        ImageGenError.__init__(error, message)
    else:
        error = ImageGenError(message)
    error.permanent = bool(outcome.get("permanent", error.permanent))
    return error
