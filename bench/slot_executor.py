"""A LocalExecutor that logs how long its worker slots hold each workload (bench B7).

Configure it with ``AIRFLOW__CORE__EXECUTOR=bench.slot_executor.SlotTimingLocalExecutor`` and name a
file in ``IMAGEGEN_BENCH_SLOT_LOG`` (without it, it is the plain LocalExecutor). The scheduler must
be able to import ``bench`` (B7 puts the repository root on ``PYTHONPATH``).

The LocalExecutor runs ``parallelism`` worker processes (its slots); each loops in
``airflow.executors.local_executor._run_worker``: take a workload off the input queue, run it
(``BaseExecutor.run_workload``: for a task, the supervisor and the task process, until the task
process exits: finished, deferred, failed), put the result on the output queue, come back to the
queue for the next one. This executor starts the same loop, but hands it the input queue behind a
proxy that notes the time when ``get()`` returns a workload (the slot takes it) and when the loop
calls ``get()`` again (the slot is done with it and free). So the interval is the slot's own,
measured inside the worker process, the same way for every kind of task: it counts neither the
scheduler's queueing before nor the wait in the triggerer while a task is deferred.

Two JSON lines per workload go to the file (opened in append mode, one ``write`` per line, so the
worker processes do not interleave): ``{"phase": "taken", ...}`` when the slot takes it, and
``{"phase": "done", "kind", "dag_id", "run_id", "task_id", "map_index", "try_number", "start",
"end", "pid", "cpu"}`` when it is done (``start``/``end``: ``time.time()``; ``cpu``: the CPU seconds
the worker process and the children it reaped, the task process among them, used meanwhile: with
more slots than cores, a slot's wall time is stretched by the others' CPU work). ``kind`` is the workload's type
(``ExecuteTask``, ``ExecuteCallback``, ...); only tasks have the task instance's fields. A deferred
task that resumes is a second ``ExecuteTask`` with the same try number. Works with the ``fork`` and
the ``spawn`` start method: the proxy is built in the worker process, around the queue it was given.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from typing import Any

from airflow.executors import local_executor
from airflow.executors.local_executor import LocalExecutor

SLOT_LOG_ENV = "IMAGEGEN_BENCH_SLOT_LOG"


def _identity(workload: Any) -> dict[str, Any]:
    ti = getattr(workload, "ti", None)
    record: dict[str, Any] = {"kind": getattr(workload, "type", None) or type(workload).__name__}
    for name in ("dag_id", "run_id", "task_id", "map_index", "try_number"):
        record[name] = getattr(ti, name, None)
    return record


def _cpu_seconds() -> float:
    """CPU time of this worker process and of its children it has reaped (the supervisor reaps the task)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class _TimedQueue:
    """The worker's input queue; logs when each workload is taken and when the worker comes back."""

    def __init__(self, queue: Any, path: str) -> None:
        self._queue = queue
        self._path = path
        self._current: dict[str, Any] | None = None

    def _write(self, record: dict[str, Any]) -> None:
        with open(self._path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")

    def get(self) -> Any:
        if self._current is not None:
            end, cpu = time.time(), _cpu_seconds()
            record, self._current = self._current, None
            record["cpu"] = cpu - record.pop("cpu_start")
            self._write({"phase": "done", **record, "end": end})
        workload = self._queue.get()
        if workload is not None:
            start, cpu = time.time(), _cpu_seconds()
            self._current = {**_identity(workload), "start": start, "pid": os.getpid()}
            self._write({"phase": "taken", **self._current})
            self._current["cpu_start"] = cpu
        return workload

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def _run_timed_worker(*, slot_log: str, input: Any, **kwargs: Any) -> None:
    """The worker process: Airflow's own loop, reading its workloads through :class:`_TimedQueue`."""
    timed: Any = _TimedQueue(input, slot_log)  # it only calls get()
    local_executor._run_worker(input=timed, **kwargs)


class SlotTimingLocalExecutor(LocalExecutor):
    """The LocalExecutor, its worker processes logging each workload's slot time to ``IMAGEGEN_BENCH_SLOT_LOG``."""

    def _spawn_worker(self) -> None:
        slot_log = os.environ.get(SLOT_LOG_ENV)
        if not slot_log:
            super()._spawn_worker()
            return
        # LocalExecutor._spawn_worker (Airflow 3.3), with the timed loop as the target
        process = multiprocessing.Process(
            target=_run_timed_worker,
            kwargs={
                "slot_log": slot_log,
                "logger_name": self.log.name,
                "input": self.activity_queue,
                "output": self.result_queue,
                "unread_messages": self._unread_messages,
                "team_conf": self.conf,
            },
        )
        process.start()
        assert process.pid is not None
        self.workers[process.pid] = process
