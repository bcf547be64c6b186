"""What a try cost, counted once: the summary log line, the manifest figures and Airflow's metrics.

:class:`TryTally` is told every event of one try (an API call's outcome, images stored, images
reused) by the pipeline's threads; it adds them up for the summary line logged at the end of the
try and sends each to Airflow's own metrics system (StatsD, Datadog or OpenTelemetry, whichever
the deployment's ``[metrics]`` section turns on; nothing is sent when none is). The metric
names, all under Airflow's ``[metrics] statsd_prefix`` (default ``airflow``), are :data:`METRICS`.

The same names carry an ``outcome`` tag where the backend supports tags (OpenTelemetry, Datadog).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_imagegen.models import CopiedImage
    from airflow_provider_imagegen.task_log import TaskLog

PREFIX = "imagegen"

METRICS: tuple[tuple[str, str, str], ...] = (
    (
        f"{PREFIX}.generation_calls.<outcome>",
        "counter",
        "generation calls: ``success``, or the error class after the hook's retries (``ImageGenRateLimitError``...)",
    ),
    (f"{PREFIX}.images_stored", "counter", "images copied to S3 and verified"),
    (f"{PREFIX}.images_reused", "counter", "images reused from an earlier try (no API call)"),
    (f"{PREFIX}.bytes_stored", "counter", "bytes of the images copied to S3"),
    (f"{PREFIX}.generation", "timer", "one generation call (ms)"),
    (f"{PREFIX}.copy_to_s3", "timer", "one prompt's copy to S3 and its manifest (ms)"),
)
"""Every metric ``TryTally`` sends: (name, kind, what it counts or times); the docs' table is made from it."""


@dataclass
class Figures:
    """What one try did, or one event of it (:class:`TryTally` adds them up for the summary line)."""

    generation_calls: int = 0
    failed_calls: int = 0
    images_requested: int = 0
    images_received: int = 0
    images_stored: int = 0
    images_reused: int = 0
    bytes_stored: int = 0
    api_seconds: float = 0.0


class TryTally:
    """Totals of one try, each event also sent to Airflow's metrics.

    The copy threads report concurrently: each event is appended as its own small
    :class:`Figures` (``list.append`` is atomic) and the totals are added up when asked for,
    so no lock is needed.

    A tally kept where the try does not end (a trigger that copies for the worker) is built with
    ``send=False``: it keeps its metrics instead of sending them, and :meth:`export` hands the
    events and the metrics to the worker's tally (:meth:`replay`), which logs the summary line and
    sends them, so each is counted once, by the task.

    :param log: the task's logger (for the summary line).
    :param send: send each metric now (else keep it for :meth:`export`).
    """

    def __init__(self, log: TaskLog, *, send: bool = True) -> None:
        self.log = log
        self._events: list[Figures] = []
        self._stats: Any = None
        self._kept: list[list[Any]] | None = None if send else []

    @property
    def figures(self) -> Figures:
        """The totals so far."""
        total = Figures()
        for event in list(self._events):
            for item in fields(Figures):
                setattr(total, item.name, getattr(total, item.name) + getattr(event, item.name))
        return total

    def _send(self, kind: str, name: str, value: float, **tags: str) -> None:
        if self._kept is not None:
            self._kept.append([kind, name, value, tags])
            return
        try:
            if self._stats is None:
                from airflow_provider_imagegen.version_compat import stats_facade

                self._stats = stats_facade()
            if kind == "timing":
                self._stats.timing(f"{PREFIX}.{name}", value, tags=tags or None)
            else:
                self._stats.incr(f"{PREFIX}.{name}", count=int(value), tags=tags or None)
        except Exception as error:  # metrics must never fail a task
            self.log.warning("Could not send metric %s.%s: %s", PREFIX, name, error)

    def generated(self, *, requested: int, received: int, seconds: float) -> None:
        """One paid generation call: ``received`` of ``requested`` images in ``seconds`` of API time."""
        self._events.append(
            Figures(generation_calls=1, images_requested=requested, images_received=received, api_seconds=seconds)
        )
        self._send("incr", "generation_calls.success", 1, outcome="success")
        self._send("timing", "generation", seconds * 1000.0)

    def failed(self, error: BaseException, seconds: float | None = None) -> None:
        """One generation call that failed with ``error`` (after the hook's own retries)."""
        outcome = type(error).__name__
        if getattr(error, "answered", False):  # a 2xx the provider could not use: paid all the same
            self._events.append(Figures(generation_calls=1, api_seconds=seconds or 0.0))
        else:
            self._events.append(Figures(failed_calls=1, api_seconds=seconds or 0.0))
        self._send("incr", f"generation_calls.{outcome}", 1, outcome=outcome)
        if seconds is not None:
            self._send("timing", "generation", seconds * 1000.0)

    def stored(self, images: list[CopiedImage], seconds: float) -> None:
        """Images copied to S3 and verified in this try (one prompt's copy took ``seconds``)."""
        size = sum(image.size_bytes for image in images)
        self._events.append(Figures(images_stored=len(images), bytes_stored=size))
        self._send("incr", "images_stored", len(images))
        self._send("incr", "bytes_stored", size)
        self._send("timing", "copy_to_s3", seconds * 1000.0)

    def reused(self, images: list[CopiedImage], *, send: bool = True) -> None:
        """Images an earlier try stored and verified, returned again without any call.

        :param images: the images.
        :param send: also count them in the metrics (not when they were sent before deferring).
        """
        self._events.append(Figures(images_reused=len(images)))
        if send:
            self._send("incr", "images_reused", len(images))

    def export(self) -> dict[str, Any]:
        """The events and the kept metrics, as plain JSON (for a trigger's event)."""
        return {"events": [asdict(event) for event in self._events], "metrics": list(self._kept or [])}

    def replay(self, exported: dict[str, Any]) -> None:
        """Add another tally's :meth:`export` to this one, and send the metrics it kept.

        :param exported: what :meth:`export` returned.
        """
        names = {item.name for item in fields(Figures)}
        for event in exported.get("events", []):
            self._events.append(Figures(**{key: value for key, value in event.items() if key in names}))
        for kind, name, value, tags in exported.get("metrics", []):
            self._send(str(kind), str(name), float(value), **{str(k): str(v) for k, v in dict(tags).items()})

    def summary(self, prompts: int) -> str:
        """The one line logged at the end of a try."""
        f = self.figures
        return (
            f"Cost of this try: {f.generation_calls} paid generation call(s)"
            f"{f' and {f.failed_calls} failed' if f.failed_calls else ''} for {prompts} prompt(s); "
            f"images requested {f.images_requested}, received {f.images_received}, stored {f.images_stored}, "
            f"reused from an earlier try {f.images_reused}; {f.bytes_stored} bytes stored; "
            f"API time {f.api_seconds:.2f} s"
        )


def prompt_cost(
    *, calls: int, requested: int, received: int, images: list[CopiedImage], seconds: float | None
) -> dict[str, Any]:
    """The figures one prompt's manifest records of the generation that produced its images.

    :param calls: paid generation calls behind these images (1; an earlier try's call counts too).
    :param requested: images asked for (``n``).
    :param received: images the API returned.
    :param images: the images stored.
    :param seconds: the call's API time.
    """
    return {
        "generation_calls": calls,
        "images_requested": requested,
        "images_received": received,
        "images_stored": len(images),
        "bytes_stored": sum(image.size_bytes for image in images),
        "api_seconds": round(seconds or 0.0, 3),
    }
