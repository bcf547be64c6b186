"""What ``make demo`` shows a person: numbered steps, live task progress, Airflow's log kept in a file.

:class:`Story` redirects the process's stdout and stderr (file descriptors 1 and 2, so Airflow's
structlog output, task prints, werkzeug and uvicorn all follow) into ``demo-output/airflow.log``
and keeps a private handle on the real console for the story itself. While the DAG runs, an
Airflow listener reports each task instance as it starts and ends, and a spinner line shows what
is running (on a terminal; elsewhere a line every :data:`QUIET_PROGRESS_EVERY` seconds).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
TICK = 0.125
QUIET_PROGRESS_EVERY = 15.0
"""Seconds between progress lines when the console is not a terminal (CI logs, pipes)."""
LOG_TAIL_LINES = 60
ERROR_LINES_MAX = 150
FIRST_ERROR = re.compile(r"\[error|\[critical|^Traceback ")


def task_label(task_id: str, map_index: int) -> str:
    """``task`` or ``task[2]`` for a mapped task instance."""
    return task_id if map_index is None or map_index < 0 else f"{task_id}[{map_index}]"


def human_bytes(size: int) -> str:
    """``845 B``, ``212.4 KB``, ``3.1 MB``."""
    if size < 1000:
        return f"{size} B"
    if size < 1_000_000:
        return f"{size / 1000:.1f} KB"
    return f"{size / 1_000_000:.1f} MB"


class Story:
    """The console narrative of one demo run; a context manager that captures everything else.

    :param log_path: where the captured stdout/stderr (Airflow's full log) is written, truncated first.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._console: IO[str] | None = None
        self._saved_fds: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._tty = False
        self._status = ""
        self._running: dict[str, float] = {}
        self._finished: list[tuple[str, str, float]] = []
        self._run_started = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # capture -------------------------------------------------------------------------------

    def __enter__(self) -> Story:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved_fds = (os.dup(1), os.dup(2))
        self._console = os.fdopen(os.dup(self._saved_fds[0]), "w", buffering=1, encoding="utf-8", errors="replace")
        self._tty = self._console.isatty()
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop_progress()
        sys.stdout.flush()
        sys.stderr.flush()
        if self._saved_fds is not None:
            os.dup2(self._saved_fds[0], 1)
            os.dup2(self._saved_fds[1], 2)
            for fd in self._saved_fds:
                os.close(fd)
            self._saved_fds = None
        if self._console is not None:
            self._console.close()
            self._console = None
        if exc is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            print(f"\nThe demo stopped with an error; Airflow's full log: {self.log_path}", file=sys.stderr)

    # printing ------------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        """One line (or several) of the story, above the progress line."""
        with self._lock:
            self._write_above(text)

    def step(self, what: str, detail: str = "") -> None:
        """A finished step: ``  ✓ what   detail``."""
        self.say(f"  ✓ {what:<26} {detail}".rstrip())

    def fail(self, what: str, detail: str = "") -> None:
        """A failed step."""
        self.say(f"  ✗ {what:<26} {detail}".rstrip())

    def _write_above(self, text: str) -> None:
        console = self._console or sys.stdout
        if self._tty and self._status:
            console.write("\r\033[K")
        console.write(text + "\n")
        if self._tty and self._status:
            console.write(self._status)
        console.flush()

    # progress ------------------------------------------------------------------------------

    def start_progress(self) -> None:
        """Start the spinner (terminal) or the periodic progress line (elsewhere)."""
        self._run_started = time.monotonic()
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="demo-progress", daemon=True)
        self._ticker.start()

    def stop_progress(self) -> None:
        """Stop the progress display and clear its line."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
            self._ticker = None
        with self._lock:
            if self._tty and self._status and self._console is not None:
                self._console.write("\r\033[K")
                self._console.flush()
            self._status = ""

    def _progress_text(self, frame: str) -> str:
        now = time.monotonic()
        running = ", ".join(f"{label} {now - started:.0f} s" for label, started in self._running.items())
        done = len(self._finished)
        waiting = "scheduling the next task" if done else "starting the DAG run"
        return f"    {frame} {running or waiting} · {done} task instance(s) done · {now - self._run_started:.0f} s"

    def _tick(self) -> None:
        frame = 0
        last_quiet = time.monotonic()
        while not self._stop.wait(TICK):
            with self._lock:
                if self._console is None:
                    return
                if self._tty:
                    self._status = self._progress_text(SPINNER[frame % len(SPINNER)])
                    self._console.write("\r\033[K" + self._status)
                    self._console.flush()
                    frame += 1
                elif time.monotonic() - last_quiet >= QUIET_PROGRESS_EVERY:
                    last_quiet = time.monotonic()
                    self._console.write(self._progress_text("…") + "\n")
                    self._console.flush()

    # task events (called by the listener, from the task's thread) ----------------------------

    def task_started(self, task_id: str, map_index: int) -> None:
        """A task instance started running (again, after a deferral or a retry)."""
        with self._lock:
            self._running.setdefault(task_label(task_id, map_index), time.monotonic())

    def task_finished(self, task_id: str, map_index: int, state: str, error: object = None) -> None:
        """A task instance ended: print its line with state and duration."""
        label = task_label(task_id, map_index)
        with self._lock:
            started = self._running.pop(label, None)
            seconds = time.monotonic() - started if started is not None else 0.0
            self._finished.append((label, state, seconds))
            mark = "✓" if state == "success" else ("-" if state == "skipped" else "✗")
            line = f"      {mark} {label:<28} {state:<14} {seconds:5.1f} s"
            if error is not None and state != "success":
                line += f"\n          {type(error).__name__ if isinstance(error, BaseException) else 'error'}: {error}"
            self._write_above(line)

    @property
    def reported_tasks(self) -> list[tuple[str, str, float]]:
        """``(label, state, seconds)`` of every task instance the listener reported, in order."""
        with self._lock:
            return list(self._finished)

    # failure help --------------------------------------------------------------------------

    def task_log_tail(self, task_id: str, map_index: int, lines: int = LOG_TAIL_LINES) -> list[str]:
        """One task instance's part of the captured log: from its first error on, else its last ``lines``.

        ``dag.test()`` brackets each task instance with ``[DAG TEST] starting task_id=… map_index=…``
        and ``[DAG TEST] end task task_id=… map_index=…``; without those markers, the log's tail.
        """
        sys.stdout.flush()
        sys.stderr.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        start_marker = re.compile(rf"\[DAG TEST\] starting task_id={re.escape(task_id)} map_index={map_index}\b")
        end_marker = re.compile(rf"\[DAG TEST\] end task task_id={re.escape(task_id)} map_index={map_index}\b")
        starts = [i for i, line in enumerate(text) if start_marker.search(line)]
        if not starts:
            return text[-lines:]
        begin = starts[-1]
        end = next((i for i in range(begin, len(text)) if end_marker.search(text[i])), len(text) - 1)
        block = text[begin : end + 1]
        first_error = next((i for i, line in enumerate(block) if FIRST_ERROR.search(line)), None)
        if first_error is not None:  # from the first error on, so a traceback is shown whole
            return block[first_error:][-ERROR_LINES_MAX:]
        return block[-lines:]


class TaskListener:
    """An Airflow listener (task SDK hooks) that tells :class:`Story` when task instances start and end."""

    def __init__(self, story: Story) -> None:
        self.story = story

    @staticmethod
    def _ids(task_instance: Any) -> tuple[str, int]:
        map_index = getattr(task_instance, "map_index", -1)
        return str(task_instance.task_id), -1 if map_index is None else int(map_index)

    def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
        """Hook: a task instance is about to run."""
        self.story.task_started(*self._ids(task_instance))

    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        """Hook: it succeeded."""
        self.story.task_finished(*self._ids(task_instance), "success")

    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: object) -> None:
        """Hook: it failed (the DAG run's final table says whether a retry is pending)."""
        state = getattr(task_instance, "state", None)
        self.story.task_finished(*self._ids(task_instance), str(getattr(state, "value", state) or "failed"), error)

    def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
        """Hook: it skipped itself."""
        self.story.task_finished(*self._ids(task_instance), "skipped")


def register_listener(story: Story) -> bool:
    """Register :class:`TaskListener` with the task runner's listener manager; False if none is found."""
    try:
        from airflow.listeners import hookimpl
    except ImportError:
        return False
    listener = TaskListener(story)
    for name in (
        "on_task_instance_running",
        "on_task_instance_success",
        "on_task_instance_failed",
        "on_task_instance_skipped",
    ):
        hookimpl(getattr(type(listener), name))
    for module in ("airflow.sdk.listener", "airflow.listeners.listener"):
        try:
            manager = __import__(module, fromlist=["get_listener_manager"]).get_listener_manager()
        except (ImportError, AttributeError):
            continue
        manager.add_listener(listener)
        return True
    return False
