"""Shared pieces of the benchmarks: the result record, statistics, the environment, RSS probes."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"


@dataclass
class Figure:
    """One line of the table: our measurement beside its baseline, and whether the target holds.

    ``ours`` and ``baseline`` are medians in ``unit``; ``ratio`` is ``ours / baseline`` unless the
    benchmark defines it otherwise; ``passed`` is the verdict against ``target``.
    """

    key: str
    title: str
    unit: str
    ours: float
    baseline: float
    ratio: float
    target: str
    passed: bool
    baseline_label: str = ""
    notes: list[str] = field(default_factory=list)
    samples: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def median(values: list[float]) -> float:
    """The median (of several runs: machines are noisy)."""
    return float(statistics.median(values))


def spread(values: list[float]) -> str:
    """``min..max`` of a sample, for the notes."""
    return f"{min(values):.3f}..{max(values):.3f}"


def isolate_airflow() -> Path:
    """Point Airflow at a throw-away home before anything imports it (no DB is needed)."""
    home = Path(tempfile.mkdtemp(prefix="imagegen-bench-airflow-"))
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home}/airflow.db"
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    # as in the unit tests: lets execute() be called directly, without the task runner's sentinel
    os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    # installed packages have their bytecode: without it every fresh child compiles the package from
    # source, which B6 would count as parse cost (some sandboxes set this variable)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return home


def connection_env(imagegen_json: str, s3_info: dict[str, Any] | None) -> dict[str, str]:
    """Environment variables defining ``imagegen_default`` and ``aws_default`` for a process."""
    env = {"AIRFLOW_CONN_IMAGEGEN_DEFAULT": imagegen_json}
    if s3_info is not None:
        env.update(
            {
                "AIRFLOW_CONN_AWS_DEFAULT": s3_info["connection_json"],
                "AWS_ACCESS_KEY_ID": s3_info["access_key_id"],
                "AWS_SECRET_ACCESS_KEY": s3_info["secret_access_key"],
                "AWS_DEFAULT_REGION": s3_info["region_name"],
            }
        )
    return env


def boto3_client(s3_info: dict[str, Any]) -> Any:
    """A fresh boto3 S3 client (own session) for the moto server."""
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3_info["endpoint_url"],
        region_name=s3_info["region_name"],
        aws_access_key_id=s3_info["access_key_id"],
        aws_secret_access_key=s3_info["secret_access_key"],
    )


def task_context(task_id: str, run_id: str | None = None) -> dict[str, Any]:
    """The minimal context the operator's ``execute`` reads (as a unit test builds it)."""
    return {
        "ti": SimpleNamespace(dag_id="imagegen_bench", task_id=task_id, map_index=-1, try_number=1),
        "run_id": run_id or f"bench__{uuid.uuid4().hex[:12]}",
    }


def imagegen_settings(imagegen_json: str) -> tuple[str, dict[str, str]]:
    """The generation URL and headers of the emulator's connection, for the bare baselines."""
    from airflow_provider_imagegen.hooks._client import settings_from_connection

    conn = json.loads(imagegen_json)
    settings = settings_from_connection("bench", conn.get("host"), conn.get("password"), conn.get("extra") or {})
    return settings.url, settings.headers()


# -- memory probes ---------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak RSS of this process over a block, exactly (Linux ``VmHWM`` after ``clear_refs``),
    or by sampling every millisecond where the peak cannot be reset.

    ``with PeakRSS() as peak: ...`` then ``peak.growth`` is the most the RSS rose above its
    value at the start of the block, in bytes.
    """

    def __init__(self) -> None:
        self.start = 0
        self.peak = 0
        self.method = ""
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    @property
    def growth(self) -> int:
        """Bytes the peak rose above the starting RSS."""
        return max(0, self.peak - self.start)

    def __enter__(self) -> PeakRSS:
        import gc

        gc.collect()
        self.start = rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM"
        except OSError:
            self.method = "sampled"
            self.peak = self.start
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.peak = max(self.peak, rss_bytes())
            return
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    self.peak = int(line.split()[1]) * 1024


# -- child processes -------------------------------------------------------------------------------


def run_child(module: str, args: dict[str, Any], env: dict[str, str] | None = None, timeout: float = 300) -> Any:
    """Run ``python -m <module> '<json args>'`` in a fresh process; its last stdout line is JSON."""
    completed = subprocess.run(
        [sys.executable, "-m", module, json.dumps(args)],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"child {module} failed with code {completed.returncode}:\n{completed.stderr[-4000:]}")
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def child_print(data: Any) -> None:
    """A child's answer: one JSON line, last on stdout."""
    sys.stdout.write("\n" + json.dumps(data) + "\n")
    sys.stdout.flush()


def check(condition: object, message: str) -> None:
    """A benchmark's sanity check: a wrong result makes its timing meaningless, so stop."""
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {message}")


class PoolOverflowCounter:
    """Counts urllib3's "Connection pool is full, discarding connection" warnings over a block.

    botocore's pool holds 10 connections by default; more threads than that make boto3 open and
    throw away a TCP connection per call. The count goes into the notes instead of the terminal.
    """

    def __init__(self) -> None:
        import logging

        self.count = 0
        self._logger = logging.getLogger("urllib3.connectionpool")
        self._handler = logging.Handler()
        self._handler.emit = self._emit  # type: ignore[method-assign]
        self._propagate = True

    def _emit(self, record: Any) -> None:
        if "Connection pool is full" in record.getMessage():
            self.count += 1

    def __enter__(self) -> PoolOverflowCounter:
        self._propagate = self._logger.propagate
        self._logger.addHandler(self._handler)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.propagate = self._propagate
