"""What a try cost (``metrics``): ``TryTally``'s figures, its summary line, what it sends, and that
sending never fails a task. The StatsD end-to-end test is ``tests/metrics/``; this one needs nothing.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from airflow_provider_imagegen import version_compat
from airflow_provider_imagegen.exceptions import (
    ImageGenBadResponseError,
    ImageGenContentPolicyError,
    ImageGenNoImagesError,
    ImageGenRateLimitError,
)
from airflow_provider_imagegen.metrics import PREFIX, Figures, TryTally, prompt_cost
from airflow_provider_imagegen.models import CopiedImage
from tests.support import RecordingLog, RecordingStats


class BrokenStats:
    def incr(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError("statsd is down")

    timing = incr


def _tally(stats: Any = None) -> tuple[TryTally, RecordingLog]:
    log = RecordingLog()
    tally = TryTally(log)
    tally._stats = stats if stats is not None else RecordingStats()
    return tally, log


def _images(count: int, size: int = 1000) -> list[CopiedImage]:
    return [CopiedImage(i, "b", f"p/{i:02d}.png", "image/png", size + i, "0" * 64, 1024, 1024) for i in range(count)]


def test_a_paid_generation_is_counted_and_sent():
    tally, _ = _tally()
    tally.generated(requested=3, received=2, seconds=1.25)
    assert tally.figures == Figures(generation_calls=1, images_requested=3, images_received=2, api_seconds=1.25)
    assert tally._stats.sent == [
        ("incr", f"{PREFIX}.generation_calls.success", 1, {"outcome": "success"}),
        ("timing", f"{PREFIX}.generation", 1250.0, None),
    ]


def test_a_failed_call_counts_as_failed_under_its_class():
    tally, _ = _tally()
    tally.failed(ImageGenRateLimitError("slow down", status_code=429), 0.5)
    assert tally.figures == Figures(failed_calls=1, api_seconds=0.5)
    assert tally._stats.sent == [
        ("incr", f"{PREFIX}.generation_calls.ImageGenRateLimitError", 1, {"outcome": "ImageGenRateLimitError"}),
        ("timing", f"{PREFIX}.generation", 500.0, None),
    ]


@pytest.mark.parametrize("error", [ImageGenBadResponseError("not JSON"), ImageGenNoImagesError("no images")])
def test_a_2xx_the_provider_cannot_use_counts_as_paid(error):
    assert error.answered
    tally, _ = _tally()
    tally.failed(error, 2.0)
    assert (tally.figures.generation_calls, tally.figures.failed_calls) == (1, 0)
    assert tally._stats.sent[0][1] == f"{PREFIX}.generation_calls.{type(error).__name__}"


def test_an_error_reported_by_the_trigger_sends_no_timing():
    tally, _ = _tally()
    tally.failed(ImageGenContentPolicyError("refused", status_code=400))
    assert tally.figures == Figures(failed_calls=1)
    assert [kind for kind, *_ in tally._stats.sent] == ["incr"]


def test_stored_and_reused_images():
    tally, _ = _tally()
    images = _images(3)
    tally.stored(images, 0.75)
    tally.reused(_images(2))
    tally.reused(_images(4), send=False)  # already sent before the task deferred
    figures = tally.figures
    assert (figures.images_stored, figures.bytes_stored, figures.images_reused) == (3, 3003, 6)
    assert tally._stats.sent == [
        ("incr", f"{PREFIX}.images_stored", 3, None),
        ("incr", f"{PREFIX}.bytes_stored", 3003, None),
        ("timing", f"{PREFIX}.copy_to_s3", 750.0, None),
        ("incr", f"{PREFIX}.images_reused", 2, None),
    ]


def test_the_summary_line():
    tally, _ = _tally()
    tally.generated(requested=2, received=2, seconds=1.5)
    tally.failed(ImageGenRateLimitError("slow down", status_code=429), 0.25)
    tally.failed(ImageGenBadResponseError("not JSON"), 1.0)
    tally.stored(_images(2), 0.1)
    tally.reused(_images(1))
    assert tally.summary(3) == (
        "Cost of this try: 2 paid generation call(s) and 1 failed for 3 prompt(s); "
        "images requested 2, received 2, stored 2, reused from an earlier try 1; 2001 bytes stored; "
        "API time 2.75 s"
    )
    fresh, _ = _tally()
    assert fresh.summary(1) == (
        "Cost of this try: 0 paid generation call(s) for 1 prompt(s); images requested 0, received 0, "
        "stored 0, reused from an earlier try 0; 0 bytes stored; API time 0.00 s"
    )


def test_events_from_many_threads_all_add_up():
    tally, _ = _tally()

    def report() -> None:
        for _ in range(200):
            tally.generated(requested=1, received=1, seconds=0.001)
            tally.stored(_images(1, size=10), 0.0)

    threads = [threading.Thread(target=report) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    figures = tally.figures
    assert (figures.generation_calls, figures.images_stored, figures.bytes_stored) == (1600, 1600, 16000)


def test_sending_never_raises_and_says_why_in_the_log():
    tally, log = _tally(BrokenStats())
    tally.generated(requested=1, received=1, seconds=1.0)
    tally.failed(ImageGenRateLimitError("slow down", status_code=429), 0.1)
    tally.stored(_images(1), 0.1)
    tally.reused(_images(1))
    assert tally.figures.generation_calls == 1  # counted all the same
    assert len(log.at("warning")) == 8  # every send: 2 + 2 + 3 + 1
    assert all("statsd is down" in line for line in log.at("warning"))


def test_a_metrics_facade_that_cannot_be_built_does_not_fail_the_task(monkeypatch):
    def broken() -> Any:
        raise ImportError("no metrics backend")

    monkeypatch.setattr(version_compat, "stats_facade", broken)
    log = RecordingLog()
    tally = TryTally(log)
    tally.generated(requested=1, received=1, seconds=1.0)
    assert tally.figures.generation_calls == 1
    assert "no metrics backend" in log.at("warning")[0]


def test_prompt_cost_is_what_the_manifest_records():
    images = _images(2)
    assert prompt_cost(calls=1, requested=3, received=2, images=images, seconds=1.23456) == {
        "generation_calls": 1,
        "images_requested": 3,
        "images_received": 2,
        "images_stored": 2,
        "bytes_stored": 2001,
        "api_seconds": 1.235,
    }
    assert prompt_cost(calls=1, requested=1, received=1, images=[], seconds=None)["api_seconds"] == 0.0


def test_a_tally_kept_for_the_worker_sends_nothing_and_the_worker_sends_it_all_once():
    """The start trigger copies with a quiet tally; the worker replays it: each metric sent once, by the task."""
    import json

    kept = TryTally(RecordingLog(), send=False)
    kept._stats = RecordingStats()
    kept.generated(requested=2, received=2, seconds=1.5)
    kept.stored(_images(2), 0.25)
    assert kept._stats.sent == [], "the triggerer sends nothing"

    exported = json.loads(json.dumps(kept.export()))  # through the trigger's event
    worker, _ = _tally()
    worker.replay(exported)

    assert worker.figures == kept.figures
    assert worker._stats.sent == [
        ("incr", f"{PREFIX}.generation_calls.success", 1, {"outcome": "success"}),
        ("timing", f"{PREFIX}.generation", 1500.0, None),
        ("incr", f"{PREFIX}.images_stored", 2, None),
        ("incr", f"{PREFIX}.bytes_stored", 2001, None),
        ("timing", f"{PREFIX}.copy_to_s3", 250.0, None),
    ]
    assert "1 paid generation call(s)" in worker.summary(1)
    assert "stored 2" in worker.summary(1)
