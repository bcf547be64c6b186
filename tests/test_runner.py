"""The runner with fake work: order, bounds, fail_fast, all-or-nothing copies, one aggregated failure.

No emulator, no S3: each test runs in milliseconds. Barriers and events, not sleeps, make the
overlaps happen.
"""

from __future__ import annotations

import logging
import threading

import pytest

from airflow_provider_imagegen.exceptions import ImageGenError, ImageGenValidationError
from airflow_provider_imagegen.runner import NotStarted, Runner

LOG = logging.getLogger("tests.runner")


def _runner(**kwargs) -> Runner:
    kwargs.setdefault("max_concurrency", 2)
    kwargs.setdefault("upload_concurrency", 3)
    kwargs.setdefault("fail_fast", False)
    return Runner(log=LOG, **kwargs)


class Gauge:
    """Counts how many calls are inside at once, and the most ever."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.now -= 1


def test_results_come_back_in_job_order_whatever_order_they_finish_in():
    release = {i: threading.Event() for i in range(5)}

    def work(i: int) -> list[str]:
        if i < 4:
            release[i].wait(5)  # job i waits for job i + 1 to finish first
        release.get(i - 1, threading.Event()).set()
        return [f"{i}a", f"{i}b"]

    with _runner(max_concurrency=5) as runner:
        assert runner.run(range(5), work) == [f"{i}{s}" for i in range(5) for s in "ab"]


def test_generation_slots_bound_the_api_calls_and_landing_slots_the_copies():
    generating, landing = Gauge(), Gauge()
    both = threading.Barrier(4, timeout=5)  # 2 generating and 2 landing at one moment: the stages overlap

    def work(i: int) -> list[int]:
        if i < 2:
            with runner.copy_slot(), landing:
                both.wait()
        else:
            with runner.generation_slot(), generating:
                both.wait()
        return [i]

    with _runner(max_concurrency=2) as runner:
        assert runner.run(range(4), work) == [0, 1, 2, 3]
    assert generating.most == 2
    assert landing.most == 2


def test_more_jobs_than_slots_never_exceed_the_bound():
    gauge = Gauge()

    def work(i: int) -> list[int]:
        with runner.generation_slot(), gauge:
            threading.Event().wait(0.005)
        return [i]

    with _runner(max_concurrency=3) as runner:
        assert runner.run(range(20), work) == list(range(20))
    assert gauge.most == 3


def test_one_failed_job_of_one_is_raised_as_it_is():
    error = ImageGenValidationError("n", 0, "1 to 10")
    with _runner() as runner, pytest.raises(ImageGenValidationError) as caught:
        runner.run([0], lambda i: (_ for _ in ()).throw(error))
    assert caught.value is error


def test_failures_are_aggregated_after_the_others_finish():
    finished = []

    def work(i: int) -> list[int]:
        if i in (1, 3):
            raise ImageGenError(f"boom {i}")
        finished.append(i)
        return [i]

    with _runner() as runner, pytest.raises(ImageGenError) as caught:
        runner.run(range(5), work)
    assert sorted(finished) == [0, 2, 4]
    assert str(caught.value).startswith("2 of 5 prompts failed: prompt 1: ImageGenError: boom 1; prompt 3")
    assert caught.value.permanent is False


def test_an_aggregate_is_permanent_only_when_every_failure_is():
    def work(i: int) -> list[int]:
        if i == 0:
            raise ImageGenValidationError("n", 0, "1 to 10")
        if i == 1:
            raise ImageGenError("transient")
        return [i]

    with _runner() as runner, pytest.raises(ImageGenError) as caught:
        runner.run(range(3), work)
    assert caught.value.permanent is False

    with _runner() as runner, pytest.raises(ImageGenError) as caught:
        runner.run(range(3), lambda i: (_ for _ in ()).throw(ImageGenValidationError("n", i, "x")))
    assert caught.value.permanent is True


def test_fail_fast_starts_no_api_call_after_a_failure():
    called = []

    def work(i: int) -> list[int]:
        with runner.generation_slot(turn=i):
            called.append(i)
            if i == 0:
                raise ImageGenError("first fails")
        return [i]

    with _runner(max_concurrency=1, fail_fast=True) as runner, pytest.raises(ImageGenError) as caught:
        runner.run(range(6), work)
    assert called == [0]  # one slot: the failure is marked before the slot is released
    assert "1 of 6 prompts failed (5 not started: fail_fast)" in str(caught.value)


def test_api_slots_are_granted_in_job_order():
    order = []

    def work(i: int) -> list[int]:
        if i % 3 == 0:  # a job that needs no API call gives its turn up when it ends
            return [i]
        with runner.generation_slot(turn=i):
            order.append(i)
            threading.Event().wait(0.002)
        return [i]

    for _ in range(5):
        order.clear()
        with _runner(max_concurrency=1) as runner:
            assert runner.run(range(12), work) == list(range(12))
        assert order == [i for i in range(12) if i % 3]


def test_without_fail_fast_every_prompt_is_tried():
    called = []

    def work(i: int) -> list[int]:
        with runner.generation_slot():
            called.append(i)
            raise ImageGenError("all fail")

    with _runner(max_concurrency=1) as runner, pytest.raises(ImageGenError, match="6 of 6 prompts failed"):
        runner.run(range(6), work)
    assert sorted(called) == list(range(6))


def test_generation_slot_refuses_once_stopping():
    with _runner(fail_fast=True) as runner:
        with pytest.raises(ValueError, match="API refused"), runner.generation_slot():
            raise ValueError("API refused")
        with pytest.raises(NotStarted), runner.generation_slot():
            pytest.fail("must not run")


def test_copy_all_is_bounded_ordered_and_reports_progress():
    gauge, progress = Gauge(), []

    def copy(i: int) -> str:
        with gauge:
            threading.Event().wait(0.005)
        return f"img{i}"

    with _runner(upload_concurrency=3) as runner:
        result = runner.copy_all(
            9, copy, undo=lambda done: pytest.fail("nothing to undo"), progress=lambda n, r: progress.append(n)
        )
    assert result == [f"img{i}" for i in range(9)]
    assert gauge.most == 3
    assert progress == list(range(1, 10))  # counted one at a time


def test_copy_all_undoes_the_successful_copies_and_cancels_the_rest():
    started, undone = [], []
    failed = threading.Event()

    def copy(i: int) -> str:
        started.append(i)
        if i == 1:
            failed.set()
            raise ImageGenError("copy 1 failed")
        return f"img{i}"

    with _runner(upload_concurrency=2) as runner, pytest.raises(ImageGenError, match="copy 1 failed"):
        runner.copy_all(50, copy, undo=undone.extend)
    assert len(started) < 50  # the copies not yet started were cancelled
    assert sorted(undone) == sorted(f"img{i}" for i in started if i != 1)


def test_one_item_runs_on_the_calling_thread():
    threads = []
    with _runner() as runner:
        runner.run([0], lambda i: threads.append(threading.current_thread()) or [i])
        runner.copy_all(1, lambda i: threads.append(threading.current_thread()), undo=lambda done: None)
    assert threads == [threading.current_thread()] * 2


def test_start_in_background_runs_in_the_background_and_needs_the_with_block():
    runner = _runner()
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        runner.start_in_background(print)
    with runner:
        future = runner.start_in_background(lambda a, b: a + b, 2, 3)
        assert future.result(timeout=5) == 5
    with pytest.raises(RuntimeError):
        runner.start_in_background(print)


def test_every_thread_runs_with_the_callers_context():
    """A triggerer routes a trigger's log lines by context variables: the copy threads must carry them."""
    import contextvars

    trigger_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("trigger_id", default=None)
    trigger_id.set(7)
    together = threading.Barrier(3, timeout=10)  # three threads at once, none of them the caller

    def job(index: int) -> list[tuple[int | None, str]]:
        together.wait()
        return [(trigger_id.get(), threading.current_thread().name)]

    with _runner(max_concurrency=3) as runner:
        seen = runner.run([0, 1, 2], job)
        copied = runner.copy_all(3, lambda index: trigger_id.get(), undo=lambda done: None, progress=lambda *a: None)
        background = runner.start_in_background(trigger_id.get).result()

    assert [value for value, _ in seen] == [7, 7, 7]
    assert len({name for _, name in seen}) == 3, "the jobs ran on three threads"
    assert copied == [7, 7, 7]
    assert background == 7
