"""The runner: a task try's threads, and the bounds and failure rules they follow.

A try runs its prompts (``run``) with ``2 * max_concurrency`` threads, so that while some prompts
are copied to S3 others already wait for the API; the generation slots and the copy slots keep
each stage within ``max_concurrency``. One prompt's images are copied ``upload_concurrency`` at a
time (``copy_all``: all or nothing), and its pending record is written while the copy runs
(``start_in_background``). With ``fail_fast`` the first failure stops every API call not yet started.
Results come back in prompt order; failures come back as one error naming every failed prompt.

Nothing here knows about images, S3 or Airflow: the work is passed in as functions, so the rules
are tested with fakes in milliseconds.
"""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import ALL_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from airflow_provider_imagegen.exceptions import several_failures

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from types import TracebackType

    from airflow_provider_imagegen.task_log import TaskLog

J = TypeVar("J")
R = TypeVar("R")


class NotStarted(Exception):
    """A prompt skipped by ``fail_fast`` after another one failed (reported as "not started")."""


class Runner:
    """Bounded concurrency for one task try; use as a context manager (it owns a small thread pool).

    :param max_concurrency: prompts calling the API at once, and prompts copying to S3 at once.
    :param upload_concurrency: images of one prompt copied at once.
    :param fail_fast: stop at the first failed prompt; otherwise finish the others, then fail.
    :param log: where the summary of a failed batch goes.
    """

    def __init__(self, *, max_concurrency: int, upload_concurrency: int, fail_fast: bool, log: TaskLog) -> None:
        self.max_concurrency = max_concurrency
        self.upload_concurrency = upload_concurrency
        self.fail_fast = fail_fast
        self.log = log
        self._generation_slots = threading.BoundedSemaphore(max_concurrency)
        self._copy_slots = threading.BoundedSemaphore(max_concurrency)
        self._stopping = threading.Event()
        self._progress = threading.Lock()
        self._background: ThreadPoolExecutor | None = None
        # API slots go to the prompts in prompt order: the first prompt is always the first to pay
        self._order = threading.Condition()
        self._passed: set[int] = set()
        self._next_turn = 0

    def __enter__(self) -> Runner:
        # writes the pending records while the copies run; one pool per try, not a thread per prompt
        self._background = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="imagegen-record")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._background is not None:
            self._background.shutdown(wait=True)
            self._background = None

    # -- prompts -----------------------------------------------------------------------------------

    def run(self, jobs: Sequence[J], work: Callable[[J], list[R]]) -> list[R]:
        """``work`` for every job, bounded; the results concatenated in job order.

        :param jobs: the prompts' jobs, in prompt order.
        :param work: one prompt from start to commit; raises on failure.
        :raises ImageGenError: the only job's error as it is; for several jobs, one error naming
            every failed prompt (permanent when every failure was), after the others finished
            (or, with ``fail_fast``, after those already started finished).
        """

        def guarded(turn: int) -> list[R]:
            try:
                return work(jobs[turn])
            except BaseException:
                if self.fail_fast:
                    self._stopping.set()
                raise
            finally:
                self._pass(turn)

        outcomes = self._map(range(len(jobs)), guarded, workers=2 * self.max_concurrency, stop_early=self.fail_fast)
        failures = {i: o for i, o in outcomes.items() if isinstance(o, BaseException) and not isinstance(o, NotStarted)}
        if not failures:
            return [result for i in range(len(jobs)) for result in outcomes[i]]
        if len(jobs) == 1:
            raise failures[0]
        lines = [f"prompt {i}: {type(e).__name__}: {e}" for i, e in sorted(failures.items())]
        skipped = len(jobs) - len(outcomes) + sum(isinstance(o, NotStarted) for o in outcomes.values())
        summary = f"{len(failures)} of {len(jobs)} prompts failed" + (
            f" ({skipped} not started: fail_fast)" if skipped else ""
        )
        self.log.error("%s:\n%s", summary, "\n".join(lines))
        raise several_failures(f"{summary}: " + "; ".join(lines), failures.values())

    @contextmanager
    def generation_slot(self, turn: int | None = None) -> Iterator[None]:
        """Hold one of ``max_concurrency`` API slots; raise :class:`NotStarted` once ``fail_fast`` stopped.

        :param turn: the job's position in :meth:`run`: slots are then granted in job order (a job
            that needs no slot gives up its turn when it ends).
        """
        if turn is not None:
            with self._order:
                self._order.wait_for(lambda: self._next_turn >= turn)
        with self._generation_slots:
            if turn is not None:
                self._pass(turn)
            if self._stopping.is_set():
                raise NotStarted
            try:
                yield
            except BaseException:
                if self.fail_fast:  # before the slot is released: the next prompt must not pay
                    self._stopping.set()
                raise

    def _pass(self, turn: int) -> None:
        with self._order:
            self._passed.add(turn)
            while self._next_turn in self._passed:
                self._next_turn += 1
            self._order.notify_all()

    @contextmanager
    def copy_slot(self) -> Iterator[None]:
        """Hold one of ``max_concurrency`` copy slots (one prompt's copy and commit)."""
        with self._copy_slots:
            yield

    # -- one prompt's images -----------------------------------------------------------------------

    def copy_all(
        self,
        count: int,
        copy: Callable[[int], R],
        *,
        undo: Callable[[list[R]], None],
        progress: Callable[[int, R], None] | None = None,
    ) -> list[R]:
        """``copy(i)`` for ``i`` in ``range(count)``, ``upload_concurrency`` at a time; all or nothing.

        On the first failure the copies not yet started are cancelled, ``undo`` gets the results of
        those that succeeded, and the first failure is raised.

        :param count: how many copies.
        :param copy: one copy.
        :param undo: removes what the successful copies made.
        :param progress: called with (copies done so far, result) after each success, one at a time.
        """
        done = [0]

        def counted(index: int) -> R:
            result = copy(index)
            if progress is not None:
                with self._progress:
                    done[0] += 1
                    progress(done[0], result)
            return result

        outcomes = self._map(range(count), counted, workers=self.upload_concurrency, stop_early=True)
        failed = [o for o in outcomes.values() if isinstance(o, BaseException)]
        if not failed and len(outcomes) == count:
            return [outcomes[i] for i in range(count)]
        undo([o for o in outcomes.values() if not isinstance(o, BaseException)])
        raise failed[0]

    def start_in_background(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``function(*args, **kwargs)`` in the background (at most ``max_concurrency`` at once)."""
        if self._background is None:
            raise RuntimeError("Runner used outside its `with` block")
        return self._background.submit(contextvars.copy_context().run, function, *args, **kwargs)

    # -- the one way work is spread over threads ---------------------------------------------------

    def _map(
        self, items: Sequence[J] | range, function: Callable[[J], Any], *, workers: int, stop_early: bool
    ) -> dict[int, Any]:
        """``{position: result or exception}`` of every item that ran; cancelled items are absent.

        One item runs on the calling thread: starting and joining a thread for it costs more than
        the work around it in a large batch (measured: a quarter of a batch's CPU).
        """
        if len(items) == 1:
            try:
                return {0: function(items[0])}  # type: ignore[arg-type]
            except Exception as error:
                return {0: error}
        outcomes: dict[int, Any] = {}
        with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
            # each thread logs with the caller's context (a triggerer routes each trigger's lines by it)
            futures = [pool.submit(contextvars.copy_context().run, function, item) for item in items]  # type: ignore[arg-type]
            wait(futures, return_when=FIRST_EXCEPTION if stop_early else ALL_COMPLETED)
            for future in futures:
                future.cancel()
        for position, future in enumerate(futures):
            if not future.cancelled():
                failure = future.exception()
                outcomes[position] = failure if failure is not None else future.result()
        return outcomes
