"""Deferrable tasks started in the triggerer (Airflow 3.3+) and the worker fallback, in a real deployment.

One deployment for the module (``api-server``, ``scheduler``, ``dag-processor``, ``triggerer``, LocalExecutor,
SQLite, all on 127.0.0.1), the DAGs of ``start_dags/imagegen_start_dags.py``, an API emulator of the module
with a key of its own (so that finding it anywhere means a leak), the session's moto S3 server, and StatsD
aimed at a UDP listener of the test. Every guarantee is checked on both paths:

* from the triggerer: a deferrable task whose values are all in the DAG file (``literal*``); on 3.3+
  the scheduler defers it at once with ``ImageGenStartTrigger``, which generates and records the URLs,
  and one worker start copies;
* the fallback: a task whose prompt comes from an upstream task's XCom (``from_xcom*``), which defers from
  a worker with ``ImageGenTrigger`` and says why. On Airflow 3.1/3.2 every deferrable task takes it. On
  3.3 a task whose prompt uses a DAG macro (``macro``) starts in the triggerer, which cannot render it
  and hands it back to a worker, which then defers the classic way.

The tests share the deployment and run in file order:

1. the path each task takes, its images, cost line, StatsD counters and asset events; permanent errors
   (a blocked word, an invalid rendered ``n``) fail at once whatever ``retries``;
2. a cleared run pays nothing again; a try whose copy fails (downloads cut short) is retried without
   paying again;
3. the triggerer SIGKILLed once the task's ``_pending.json`` is in S3, then restarted: success, at most
   one paid call per prompt. On 3.3 the start trigger's event is held back deterministically (its
   supervisor is SIGSTOPped while the API call runs, so the event cannot reach the database before the
   kill): the restarted trigger must find the record and generate nothing.

After each test, the API key is looked for in the REST API's view of the triggers, the trigger table's
(decrypted) kwargs, every log file, the XCom values and the whole metadata database.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from airflow_provider_imagegen.testing import connection_env
from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_3_PLUS, AIRFLOW_VERSION
from tests.support import StatsdListener

from .components import AirflowDeployment, call_failed, new_bucket, task_instances, trigger_run, wait_until
from .components import api as _api
from .start_dags.imagegen_start_dags import (
    FORBIDDEN_LITERAL,
    FORBIDDEN_XCOM,
    INVALID_LITERAL,
    INVALID_XCOM,
    LITERAL_ASSET,
    LITERAL_MAX_CONCURRENCY,
    LITERAL_PROMPTS,
    MACRO_PROMPT,
    MACRO_SUBJECT,
    RESTART_LITERAL,
    RESTART_XCOM,
    RETRY_LITERAL,
    RETRY_XCOM,
    XCOM_ASSET,
    XCOM_PROMPTS,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import httpx

    from airflow_provider_imagegen.emulator import Emulator
    from airflow_provider_imagegen.testing import LocalS3

pytestmark = pytest.mark.e2e

DAGS_FOLDER = Path(__file__).resolve().parent / "start_dags"
PATHS_DAG = "imagegen_start_paths"
PERMANENT_DAG = "imagegen_start_permanent"
RETRY_DAG = "imagegen_start_retry"
RESTART_DAG = "imagegen_start_restart"
DAG_IDS = (PATHS_DAG, PERMANENT_DAG, RETRY_DAG, RESTART_DAG)
START_TRIGGER = "airflow_provider_imagegen.triggers.imagegen.ImageGenStartTrigger"
WORKER_TRIGGER = "airflow_provider_imagegen.triggers.imagegen.ImageGenTrigger"
VERSION = ".".join(str(part) for part in AIRFLOW_VERSION)
OLD_AIRFLOW_REASON = f"Airflow {VERSION} starts tasks on workers only"
MAPPED_XCOM_REASON = "the task is mapped over an upstream task's XCom"
XCOM_REASON = "`prompt` comes from an upstream task's XCom, which only a worker resolves"
HANDED_BACK = "Deferring from the worker: the triggerer could not start the task: the triggerer cannot render `prompt`"
MACRO_RENDERED = MACRO_PROMPT.replace("{{ subject }}", MACRO_SUBJECT)
STARTED = "Started in the triggerer"
STORED_LINE = "Started in the triggerer, which also stored the images: 1 image(s) for 1 prompt(s)"
"""The worker's line when the trigger also copied: the worker only finishes (XCom, assets, cost line)."""
STARTED_LINE = "Started in the triggerer; this worker copies what it generated"
"""The worker's line when the trigger left the copy to it (an earlier try's record, a failed copy, an error)."""
DEFERRED_LINE = "Pausing task as DEFERRED"
PRE_EXECUTE = "::group::Pre Execute"
API_LATENCY = 6.0
"""Seconds each successful generation call takes: a task that defers from a worker stays deferred longer
than the scheduler needs to handle the worker's exit (Airflow's defer/trigger race, apache/airflow#72716)."""
SLOW_BODY_SECONDS = 3.0
"""In the restart test, each image download takes this long: the worker's ``_pending.json`` lives that long."""
TRIGGERER_HEALTH_CHECK_THRESHOLD = 8
"""``[triggerer] triggerer_health_check_threshold``: a killed triggerer's triggers go to the next one this soon."""
READY_TIMEOUT = 180.0
RUN_TIMEOUT = 240.0
PENDING_POLL = 0.02


@dataclass
class Deployed:
    """The running deployment and what the tests need to drive and inspect it."""

    deployment: AirflowDeployment
    emulator: Emulator
    s3: LocalS3
    client: httpx.Client
    statsd: StatsdListener
    runs: dict[str, str] = field(default_factory=dict)
    """Name → run id of the runs a later test needs."""
    rest_triggers: list[dict[str, Any]] = field(default_factory=list)
    """``ti["trigger"]`` of every deferred task instance the REST API showed."""
    stored_triggers: dict[int, tuple[str, str]] = field(default_factory=dict)
    """Trigger id → (classpath, decrypted kwargs) of every row seen in the trigger table."""
    xcom_values: list[Any] = field(default_factory=list)
    first_images: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    """The XCom of each task instance of the first paths run."""

    @property
    def db_path(self) -> Path:
        return self.deployment.home / "airflow.db"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, s3_server: LocalS3) -> Iterator[Deployed]:
    """The emulator (a key of its own) and every Airflow component, ready, the DAGs unpaused; all stopped at the end."""
    from airflow_provider_imagegen.emulator import Emulator

    home = tmp_path_factory.mktemp("airflow-start-home")
    statsd = StatsdListener()
    with Emulator(api_key=f"imagegen-start-key-{secrets.token_hex(16)}") as emulator:
        env = connection_env(emulator.connection_json(), s3_server)
        env.update(
            {
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                "AIRFLOW__CORE__PARALLELISM": "6",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(TRIGGERER_HEALTH_CHECK_THRESHOLD),
                "AIRFLOW__METRICS__STATSD_ON": "True",
                "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
                "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
            }
        )
        deployment = AirflowDeployment(home, extra_env=env)
        try:
            deployment.start_all()
            with deployment.client(deployment.token()) as client:
                _wait(deployment, lambda: _healthy(client), what="scheduler, triggerer and dag-processor heartbeats")
                _wait(deployment, lambda: _dags_parsed(client), what="the dag-processor to parse the test DAGs")
                for dag_id in DAG_IDS:
                    _api(client, "PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
                yield Deployed(deployment, emulator, s3_server, client, statsd)
        finally:
            deployment.stop()
            statsd.close()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, deployed: Deployed) -> Iterator[None]:
    """Print every component's log tail when a test fails."""
    yield
    if call_failed(request):
        calls = [(c.method, c.path[:40], c.status, round(c.duration, 2)) for c in deployed.emulator.state.calls]
        print(
            f"\nAirflow home: {deployed.deployment.home}\nemulator calls: {calls}\n"
            f"processes:\n{deployed.deployment.processes_report()}\n{deployed.deployment.logs()}"
        )


# -- helpers: REST API -----------------------------------------------------------------------------


def _wait(deployment: AirflowDeployment, check: Callable[[], Any], *, what: str, timeout: float = READY_TIMEOUT) -> Any:
    return wait_until(check, timeout=timeout, what=what, interval=0.5, alive=deployment.check_alive)


def _healthy(client: httpx.Client) -> bool:
    health = client.get("/api/v2/monitor/health").json()
    return all(health[name]["status"] == "healthy" for name in ("scheduler", "triggerer", "dag_processor"))


def _dags_parsed(client: httpx.Client) -> bool:
    errors = client.get("/api/v2/importErrors").json()["import_errors"]
    ours = [error for error in errors if error["filename"].endswith("imagegen_start_dags.py")]
    assert not ours, f"the test DAGs do not import in the dag-processor:\n{ours[0]['stack_trace']}"
    return all(client.get(f"/api/v2/dags/{dag_id}").status_code == 200 for dag_id in DAG_IDS)


def _new_bucket(deployed: Deployed) -> str:
    return new_bucket(deployed.s3, "imagegen-start")


def _trigger(deployed: Deployed, dag_id: str, bucket: str) -> str:
    return trigger_run(deployed.client, dag_id, {"bucket": bucket}, run_prefix="start_test")


def _task_instances(deployed: Deployed, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    return task_instances(deployed.client, dag_id, run_id)


def _ti_states(deployed: Deployed, dag_id: str, run_id: str) -> dict[tuple[str, int], tuple[str, int]]:
    """(task id, map index) → (state, try number)."""
    return {
        (ti["task_id"], ti["map_index"]): (ti["state"], ti["try_number"])
        for ti in _task_instances(deployed, dag_id, run_id)
    }


def _observe(deployed: Deployed, runs: list[tuple[str, str]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The runs' task instances; the triggers of the deferred ones, as the REST API and the trigger table hold them."""
    seen = {run: _task_instances(deployed, *run) for run in runs}
    deferred = [ti for tis in seen.values() for ti in tis if ti["state"] == "deferred" and ti.get("trigger")]
    deployed.rest_triggers.extend(ti["trigger"] for ti in deferred)
    if deferred:
        deployed.stored_triggers.update(_trigger_rows(deployed))
    return seen


def _wait_runs(
    deployed: Deployed,
    runs: list[tuple[str, str]],
    *,
    watch: Callable[[dict[tuple[str, str], list[dict[str, Any]]]], None] | None = None,
    interval: float = 0.5,
) -> dict[tuple[str, str], str]:
    """Wait for every run to end, observing its task instances (and calling ``watch``) at every poll; their states."""

    def finished() -> dict[tuple[str, str], str] | None:
        seen = _observe(deployed, runs)
        if watch is not None:
            watch(seen)
        states = {run: _api(deployed.client, "GET", f"/api/v2/dags/{run[0]}/dagRuns/{run[1]}")["state"] for run in runs}
        return states if all(state in ("success", "failed") for state in states.values()) else None

    return dict(
        wait_until(
            finished,
            timeout=RUN_TIMEOUT,
            what=f"the runs {runs} to end",
            interval=interval,
            alive=deployed.deployment.check_alive,
        )
    )


def _xcom(deployed: Deployed, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
    value = _api(deployed.client, "GET", url, params={"map_index": map_index})["value"]
    images = json.loads(value) if isinstance(value, str) else value
    deployed.xcom_values.append(images)
    return list(images)


# -- helpers: logs, S3, the emulator -----------------------------------------------------------------------


def _log_folder(deployed: Deployed, dag_id: str, run_id: str, task_id: str, map_index: int) -> Path:
    folder = deployed.deployment.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return folder / f"map_index={map_index}" if map_index >= 0 else folder


def _worker_log(
    deployed: Deployed, dag_id: str, run_id: str, task_id: str, map_index: int = -1, attempt: int = 1
) -> str:
    path = _log_folder(deployed, dag_id, run_id, task_id, map_index) / f"attempt={attempt}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _trigger_log(
    deployed: Deployed, dag_id: str, run_id: str, task_id: str, map_index: int = -1, attempt: int = 1
) -> str:
    folder = _log_folder(deployed, dag_id, run_id, task_id, map_index)
    return "\n".join(
        path.read_text(errors="replace") for path in sorted(folder.glob(f"attempt={attempt}.log.trigger.*.log"))
    )


def _paid(emulator: Emulator, prompt: str) -> int:
    """Generation calls the emulator answered for ``prompt`` (whatever their answer)."""
    return sum(call.body.get("prompt") == prompt for call in emulator.state.generation_calls())


def _served(emulator: Emulator) -> dict[str, str]:
    """sha256 → URL path of every image the emulator served in full (HTTP 200)."""
    paths = {call.path for call in emulator.state.download_calls() if call.status == 200}
    by_url = emulator.state.sha256_by_url()
    return {sha: urlsplit(url).path for url, sha in by_url.items() if urlsplit(url).path in paths}


def _verify_in_s3(deployed: Deployed, images: list[dict[str, Any]], bucket: str) -> None:
    """Every image's stored bytes hash to its XCom sha256, an image the emulator served, beside a manifest."""
    s3, served = deployed.s3.client(), _served(deployed.emulator)
    for image in images:
        assert image["bucket"] == bucket, image
        body = s3.get_object(Bucket=bucket, Key=image["key"])["Body"].read()
        digest = hashlib.sha256(body).hexdigest()
        assert digest == image["sha256"], f"{image['key']}: S3 holds other bytes than the XCom says"
        assert digest in served, f"{image['key']}: not an image the emulator served"
        s3.head_object(Bucket=bucket, Key=f"{image['key'].rsplit('/', 1)[0]}/manifest.json")


def _pending(deployed: Deployed, bucket: str, dag_id: str, task_id: str) -> dict[str, Any] | None:
    """The ``_pending.json`` record of the (only) run's task, or None."""
    s3 = deployed.s3.client()
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"imagegen/{dag_id}/").get("Contents", [])
    keys = [item["Key"] for item in listed if item["Key"].endswith(f"/{task_id}/_pending.json")]
    if not keys:
        return None
    with contextlib.suppress(s3.exceptions.NoSuchKey):
        return dict(json.loads(s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()))
    return None


def _max_overlap(emulator: Emulator, prompts: list[str]) -> int:
    """The most generation calls for ``prompts`` the emulator was answering at once."""
    calls = [call for call in emulator.state.generation_calls() if call.body.get("prompt") in prompts]
    return max(
        (sum(other.started_at <= call.started_at < other.finished_at for other in calls) for call in calls), default=0
    )


# -- helpers: where the API key must not be ----------------------------------------------------------------


def _trigger_rows(deployed: Deployed) -> dict[int, tuple[str, str]]:
    """The trigger table, kwargs decrypted with the deployment's Fernet key (read-only, one short read)."""
    from cryptography.fernet import Fernet

    fernet = Fernet((deployed.deployment.home / ".fernet-key").read_text().encode())
    try:
        with contextlib.closing(sqlite3.connect(f"file:{deployed.db_path}?mode=ro", uri=True, timeout=5)) as db:
            rows = db.execute("SELECT id, classpath, kwargs FROM trigger").fetchall()
    except sqlite3.OperationalError:  # locked for longer than the timeout: the next poll reads it
        return {}
    return {
        int(trigger_id): (classpath, kwargs if kwargs.startswith("{") else fernet.decrypt(kwargs.encode()).decode())
        for trigger_id, classpath, kwargs in rows
    }


def _assert_key_never_appears(deployed: Deployed) -> None:
    """The API key is nowhere Airflow keeps or shows anything: triggers, logs, XCom, the database."""
    key = deployed.emulator.api_key
    assert deployed.rest_triggers, "the REST API never showed a deferred task instance's trigger"
    assert key not in json.dumps(deployed.rest_triggers), "the REST API's view of a trigger carries the API key"
    if not AIRFLOW_V_3_3_PLUS:  # 3.3 empties the kwargs in the API; 3.1 shows them: not a vacuous check
        assert any("imagegen_conn_id" in trigger["kwargs"] for trigger in deployed.rest_triggers)
    assert deployed.stored_triggers, "never read a trigger row while a task was deferred"
    for trigger_id, (classpath, kwargs) in deployed.stored_triggers.items():
        assert "imagegen_conn_id" in kwargs, f"trigger {trigger_id} ({classpath}): kwargs not decrypted? {kwargs}"
        assert key not in kwargs, f"trigger {trigger_id} ({classpath}) stores the API key in its kwargs"
    logs = [path for path in deployed.deployment.home.rglob("*.log") if path.is_file()]
    assert any("logs" in path.parts for path in logs), "no task log to look at"
    leaked = [path for path in logs if key in path.read_text(errors="replace")]
    assert not leaked, f"the API key appears in {leaked}"
    assert deployed.xcom_values, "no XCom value to look at"
    assert key not in json.dumps(deployed.xcom_values), "an XCom value carries the API key"
    for suffix in ("", "-wal", "-journal"):
        path = Path(f"{deployed.db_path}{suffix}")
        if path.exists():
            assert key.encode() not in path.read_bytes(), f"{path.name} holds the API key"


# -- helpers: the triggerer ---------------------------------------------------------------------------------


def _triggerer(deployed: Deployed) -> Any:
    return next(c for c in deployed.deployment.components if c.name == "triggerer")


def _db_locks(pid: int, db_path: Path) -> list[str]:
    """The SQLite locks ``pid`` holds on the metadata database that make other processes wait.

    In WAL mode (Airflow's for SQLite) every open connection holds shared locks for as long as it is
    open; only a WRITE lock (the WAL writer's, a checkpoint's) blocks the others. In rollback-journal
    mode any lock does.
    """
    wal = Path(f"{db_path}-wal").exists()
    inodes = set()
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"{db_path}{suffix}").st_ino)
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    held = []
    for line in lines:
        parts = line.split()  # "3: POSIX  ADVISORY  READ 16036 fe:00:2466530 128 128"; waiters have "->"
        if len(parts) < 6 or parts[1] == "->" or parts[4] != str(pid):
            continue
        if int(parts[5].rsplit(":", 1)[-1]) in inodes and (parts[3] == "WRITE" or not wal):
            held.append(line)
    return held


def _freeze_between_transactions(pid: int, db_path: Path) -> None:
    """SIGSTOP ``pid`` at a moment it holds no blocking database lock (else the whole deployment would wait on it)."""
    import psutil

    process = psutil.Process(pid)
    held: list[str] = []
    for _ in range(500):
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: process.status() == psutil.STATUS_STOPPED, timeout=5, what="SIGSTOP", interval=0.001)
        held = _db_locks(pid, db_path)
        if not held:
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.003)
    raise AssertionError(f"the triggerer ({pid}) always held a database lock: {held}")


def _kill_and_restart_triggerer(deployed: Deployed, why: str) -> list[int]:
    """SIGKILL the triggerer and its runner at once, then start a new one; the pids killed."""
    old = _triggerer(deployed)
    killed = old.kill_tree()
    old.wait_or_kill(time.monotonic())
    deployed.deployment.components.remove(old)
    with old.log_path.open("a") as log:
        log.write(f"\n===== the test SIGKILLed the triggerer ({why}) and starts a new one =====\n")
    deployed.deployment.start("triggerer", "--skip-serve-logs")
    return killed


# -- the tests ------------------------------------------------------------------------------------------------


def test_paths_images_cost_assets_and_permanent_errors(deployed: Deployed) -> None:
    emulator = deployed.emulator
    emulator.reset(clear_images=True)
    # rejections take time too: an instant one makes the fallback's trigger fire before Airflow has handled
    # the worker's deferral, and Airflow then fails and retries the try (apache/airflow#72716)
    emulator.configure(latency=API_LATENCY, policy_latency=API_LATENCY, truncate_bodies=False, slow_body_seconds=0.0)
    bucket = _new_bucket(deployed)
    started = time.monotonic()
    paths = (PATHS_DAG, _trigger(deployed, PATHS_DAG, bucket))
    permanent = (PERMANENT_DAG, _trigger(deployed, PERMANENT_DAG, bucket))
    deployed.runs.update({"paths": paths[1], "paths_bucket": bucket})
    states = _wait_runs(deployed, [paths, permanent])
    elapsed = time.monotonic() - started
    time.sleep(1.0)  # the last StatsD datagrams

    # -- the paths: both succeed, each the way it should -------------------------------------------------------
    ti_states = _ti_states(deployed, *paths)
    assert states[paths] == "success", ti_states
    expected = {("literal", i): ("success", 1) for i in range(len(LITERAL_PROMPTS))}
    expected |= {("from_xcom", i): ("success", 1) for i in range(len(XCOM_PROMPTS))}
    expected |= {("xcom_prompts", -1): ("success", 1), ("macro", -1): ("success", 1)}
    assert ti_states == expected

    for index, prompt in enumerate(LITERAL_PROMPTS):
        worker = _worker_log(deployed, *paths, "literal", index)
        trigger = _trigger_log(deployed, *paths, "literal", index)
        if AIRFLOW_V_3_3_PLUS:  # the scheduler deferred it at once; the trigger also copied; one worker start
            assert worker.count(PRE_EXECUTE) == 1, f"literal[{index}]: more than one worker start\n{worker[-3000:]}"
            assert DEFERRED_LINE not in worker, f"literal[{index}]: a worker deferred it"
            assert STORED_LINE in worker, worker[-3000:]
            assert "copied and verified" not in worker, "the worker copied"
            assert "Started in the triggerer: 1 prompt(s), 1 to generate, 0 left to the worker" in trigger, trigger
            assert "Prompt 0: 1 image(s)" in trigger, trigger[-3000:]
            assert "copied and verified" in trigger, trigger[-3000:]
        else:
            assert DEFERRED_LINE in worker, f"literal[{index}] never deferred from the worker"
            assert f"Deferring from the worker, not starting in the triggerer: {OLD_AIRFLOW_REASON}" in worker
            assert STARTED not in worker
        assert "Trigger fired event" in trigger, f"literal[{index}]: no trigger fired\n{trigger[-2000:]}"
        assert "Cost of this try: 1 paid generation call(s) for 1 prompt(s)" in worker, worker[-3000:]
        assert _paid(emulator, prompt) == 1, f"literal[{index}] was paid {_paid(emulator, prompt)} times"
    for index, prompt in enumerate(XCOM_PROMPTS):
        worker = _worker_log(deployed, *paths, "from_xcom", index)
        trigger = _trigger_log(deployed, *paths, "from_xcom", index)
        reason = MAPPED_XCOM_REASON if AIRFLOW_V_3_3_PLUS else OLD_AIRFLOW_REASON
        assert f"Deferring from the worker, not starting in the triggerer: {reason}" in worker, worker[-3000:]
        assert worker.count("Deferring from the worker") == 1, worker[-3000:]
        assert DEFERRED_LINE in worker, f"from_xcom[{index}] never deferred from the worker"
        assert STARTED not in worker
        assert "Started in the triggerer" not in trigger
        assert "Trigger fired event" in trigger, f"from_xcom[{index}]: no trigger fired\n{trigger[-2000:]}"
        assert "Cost of this try: 1 paid generation call(s) for 1 prompt(s)" in worker, worker[-3000:]
        assert _paid(emulator, prompt) == 1, f"from_xcom[{index}] was paid {_paid(emulator, prompt)} times"
    worker = _worker_log(deployed, *paths, "macro")
    trigger = _trigger_log(deployed, *paths, "macro")
    if AIRFLOW_V_3_3_PLUS:  # started in the triggerer, handed back at once, deferred from the worker
        # (the worker's trigger then writes the same attempt=1.log.trigger.<triggerer id>.log afresh: Airflow
        # opens it with "w", so the start trigger's own lines are gone; the worker's line carries its reason)
        assert HANDED_BACK in worker, worker[-3000:]
        assert worker.count(PRE_EXECUTE) == 2, "one worker start to defer, one to copy"
        assert "not starting in the triggerer" not in worker
    else:
        assert f"Deferring from the worker, not starting in the triggerer: {OLD_AIRFLOW_REASON}" in worker
    assert DEFERRED_LINE in worker, worker[-3000:]
    assert STARTED not in worker
    assert "Prompt 0: 1 image URL(s)" in trigger, trigger[-3000:]
    assert "Cost of this try: 1 paid generation call(s) for 1 prompt(s)" in worker, worker[-3000:]
    assert _paid(emulator, MACRO_RENDERED) == 1, "the macro was not rendered as a worker renders it, or paid twice"
    classpaths = {trigger["classpath"] for trigger in deployed.rest_triggers}
    assert classpaths == ({START_TRIGGER, WORKER_TRIGGER} if AIRFLOW_V_3_3_PLUS else {WORKER_TRIGGER}), classpaths
    overlap = _max_overlap(emulator, LITERAL_PROMPTS)
    if AIRFLOW_V_3_3_PLUS:  # the map indexes share one gate in the triggerer
        assert overlap <= LITERAL_MAX_CONCURRENCY, f"{overlap} calls of the literal task at once"

    images = {
        (task_id, index): _xcom(deployed, *paths, task_id, index)
        for task_id, prompts in (("literal", LITERAL_PROMPTS), ("from_xcom", XCOM_PROMPTS))
        for index in range(len(prompts))
    }
    macro = _xcom(deployed, *paths, "macro")
    assert all(len(stored) == 1 for stored in [*images.values(), macro]), images
    deployed.first_images.update({**images, ("macro", -1): macro})
    _verify_in_s3(deployed, [image for stored in [*images.values(), macro] for image in stored], bucket)
    assert len({image["key"] for stored in [*images.values(), macro] for image in stored}) == len(images) + 1

    # -- the asset events: one per outlet and task instance, listing what it stored -----------------------------
    events = _api(
        deployed.client,
        "GET",
        "/api/v2/assets/events",
        params={"source_dag_id": PATHS_DAG, "source_run_id": paths[1], "limit": 100},
    )["asset_events"]
    by_source = {(event["source_task_id"], event["source_map_index"]): event for event in events}
    assert len(events) == len(by_source) == len(images), events
    for (task_id, index), stored in images.items():
        event = by_source[(task_id, index)]
        assert event["uri"] == (LITERAL_ASSET if task_id == "literal" else XCOM_ASSET), event
        assert event["extra"]["image_count"] == 1, event["extra"]
        assert [image["sha256"] for image in event["extra"]["images"]] == [image["sha256"] for image in stored]

    # -- StatsD: the workers counted each paid call and stored image once ---------------------------------------
    counters = deployed.statsd.counters("airflow.imagegen.")
    paid = len(LITERAL_PROMPTS) + len(XCOM_PROMPTS) + 1
    assert counters.get("airflow.imagegen.generation_calls.success") == paid, counters
    assert counters.get("airflow.imagegen.images_stored") == paid, counters
    assert counters.get("airflow.imagegen.generation_calls.ImageGenContentPolicyError") == 2, counters

    # -- permanent errors: failed in try 1 whatever retries; a blocked word paid once, an invalid n never --------
    ti_states = _ti_states(deployed, *permanent)
    assert states[permanent] == "failed", ti_states
    assert ti_states == {
        ("forbidden_literal", -1): ("failed", 1),
        ("forbidden_xcom", -1): ("failed", 1),
        ("invalid_literal", -1): ("failed", 1),
        ("invalid_xcom", -1): ("failed", 1),
        ("forbidden_prompt", -1): ("success", 1),
        ("invalid_prompt", -1): ("success", 1),
    }
    assert (_paid(emulator, FORBIDDEN_LITERAL), _paid(emulator, FORBIDDEN_XCOM)) == (1, 1)
    assert (_paid(emulator, INVALID_LITERAL), _paid(emulator, INVALID_XCOM)) == (0, 0)
    for task_id in ("forbidden_literal", "forbidden_xcom"):
        worker = _worker_log(deployed, *permanent, task_id)
        assert "ImageGenContentPolicyError" in worker, worker[-3000:]
        assert "not retried" in worker, worker[-3000:]
        assert "Trigger fired event" in _trigger_log(deployed, *permanent, task_id)
    for task_id in ("invalid_literal", "invalid_xcom"):
        worker = _worker_log(deployed, *permanent, task_id)
        assert "ImageGenValidationError" in worker, worker[-3000:]
        assert "not retried" in worker, worker[-3000:]
        assert "Invalid n: '11'" in worker or "Invalid n: 11" in worker, worker[-3000:]
    forbidden_literal = _worker_log(deployed, *permanent, "forbidden_literal")
    invalid_literal = _worker_log(deployed, *permanent, "invalid_literal")
    if AIRFLOW_V_3_3_PLUS:
        assert STARTED_LINE in forbidden_literal, forbidden_literal[-3000:]
        assert DEFERRED_LINE not in forbidden_literal
        assert STARTED_LINE in invalid_literal, invalid_literal[-3000:]
        assert DEFERRED_LINE not in invalid_literal
        assert "the task's values are not valid, the worker fails it" in _trigger_log(
            deployed, *permanent, "invalid_literal"
        )
    else:
        assert f"not starting in the triggerer: {OLD_AIRFLOW_REASON}" in forbidden_literal
        assert f"not starting in the triggerer: {OLD_AIRFLOW_REASON}" in invalid_literal
        assert DEFERRED_LINE not in invalid_literal, "an invalid value must fail before any deferral"
    for task_id in ("forbidden_xcom", "invalid_xcom"):
        reason = XCOM_REASON if AIRFLOW_V_3_3_PLUS else OLD_AIRFLOW_REASON
        assert f"not starting in the triggerer: {reason}" in _worker_log(deployed, *permanent, task_id)
    assert DEFERRED_LINE not in _worker_log(deployed, *permanent, "invalid_xcom")

    _assert_key_never_appears(deployed)
    print(f"\nboth runs ended in {elapsed:.1f} s; literal calls at once: {overlap}; StatsD: {counters}")


def test_rerun_and_retries_pay_nothing_again(deployed: Deployed) -> None:
    """A cleared run reuses every verified image; a try whose copy failed is retried by copying the recorded URLs."""
    emulator = deployed.emulator
    assert "paths" in deployed.runs, "needs the paths run of the first test"
    emulator.configure(latency=API_LATENCY, truncate_bodies=True, slow_body_seconds=0.0)
    calls_before = len(emulator.state.generation_calls())
    paths = (PATHS_DAG, deployed.runs["paths"])
    bucket = _new_bucket(deployed)
    started = time.monotonic()
    retry = (RETRY_DAG, _trigger(deployed, RETRY_DAG, bucket))
    cleared = _api(
        deployed.client,
        "POST",
        f"/api/v2/dags/{PATHS_DAG}/clearTaskInstances",
        json={"dry_run": False, "dag_run_id": paths[1], "only_failed": False, "reset_dag_runs": True},
    )
    assert len(cleared["task_instances"]) == len(LITERAL_PROMPTS) + len(XCOM_PROMPTS) + 2, cleared
    assert _api(deployed.client, "GET", f"/api/v2/dags/{PATHS_DAG}/dagRuns/{paths[1]}")["state"] != "success"

    # downloads are cut short until the literal task's try 1 has failed on them, then again until the
    # fallback's has (it starts once the literal task is done): each try 2 copies in full
    knob: list[str] = []

    def cut_short_for_each_first_try(seen: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
        literal = next(ti for ti in seen[retry] if ti["task_id"] == "literal")
        # the literal try 1's copy fails twice on 3.3: in the triggerer, then on the worker it leaves it to
        if not knob and (literal["state"] == "up_for_retry" or (literal.get("try_number") or 0) >= 2):
            emulator.configure(truncate_bodies=False)
            knob.append("literal failed")
        elif len(knob) == 1 and literal["state"] == "success":
            emulator.configure(truncate_bodies=True)
            knob.append("literal done")
        elif len(knob) == 2 and (_pending(deployed, bucket, RETRY_DAG, "from_xcom") or {}).get("download_failed"):
            emulator.configure(truncate_bodies=False)
            knob.append("from_xcom failed")

    states = _wait_runs(deployed, [paths, retry], watch=cut_short_for_each_first_try, interval=0.2)
    emulator.configure(truncate_bodies=False)
    elapsed = time.monotonic() - started

    # -- the re-run: every task instance in try 2, no new call, the same images ---------------------------------
    ti_states = _ti_states(deployed, *paths)
    assert states[paths] == "success", ti_states
    assert set(ti_states.values()) == {("success", 2)}, ti_states
    new_calls = [call.body.get("prompt") for call in emulator.state.generation_calls()[calls_before:]]
    assert not set(new_calls) & {*LITERAL_PROMPTS, *XCOM_PROMPTS, MACRO_RENDERED}, f"the re-run paid: {new_calls}"
    for task_id, indexes in (
        ("literal", range(len(LITERAL_PROMPTS))),
        ("from_xcom", range(len(XCOM_PROMPTS))),
        ("macro", [-1]),
    ):
        for index in indexes:
            worker = _worker_log(deployed, *paths, task_id, index, attempt=2)
            trigger = _trigger_log(deployed, *paths, task_id, index, attempt=2)
            assert "Cost of this try: 0 paid generation call(s) for 1 prompt(s)" in worker, worker[-3000:]
            assert "reused from an earlier try 1" in worker, worker[-3000:]
            if task_id == "literal" and AIRFLOW_V_3_3_PLUS:
                assert "Started in the triggerer: 1 prompt(s), 0 to generate, 1 left to the worker" in trigger
                assert STARTED_LINE in worker, worker[-3000:]
                assert worker.count(PRE_EXECUTE) == 1, worker[-3000:]
            elif task_id == "macro" and AIRFLOW_V_3_3_PLUS:  # handed back; the worker found the images before deferring
                assert "Handing the task back to a worker" in trigger, trigger[-3000:]
                assert HANDED_BACK in worker, worker[-3000:]
                assert DEFERRED_LINE not in worker, worker[-3000:]
            else:  # the worker found every image before deferring: no trigger at all
                reason = MAPPED_XCOM_REASON if AIRFLOW_V_3_3_PLUS else OLD_AIRFLOW_REASON
                assert f"Deferring from the worker, not starting in the triggerer: {reason}" in worker
                assert DEFERRED_LINE not in worker, worker[-3000:]
                assert not trigger, trigger
            again = _xcom(deployed, *paths, task_id, index)
            assert again == deployed.first_images[(task_id, index)], f"{task_id}[{index}]: other images than try 1's"

    # -- the retried copies: try 1 failed downloading, try 2 copied the recorded URLs; one call each ------------
    ti_states = _ti_states(deployed, *retry)
    assert knob == ["literal failed", "literal done", "from_xcom failed"], (knob, ti_states)
    assert states[retry] == "success", ti_states
    assert ti_states == {
        ("literal", -1): ("success", 2),
        ("retry_prompt", -1): ("success", 1),
        ("from_xcom", -1): ("success", 2),
    }, ti_states
    assert (_paid(emulator, RETRY_LITERAL), _paid(emulator, RETRY_XCOM)) == (1, 1), "a retry paid again"
    for task_id in ("literal", "from_xcom"):
        first, second = (_worker_log(deployed, *retry, task_id, attempt=attempt) for attempt in (1, 2))
        assert "ImageGenDownloadError" in first, first[-3000:]
        assert "Cost of this try: 1 paid generation call(s) for 1 prompt(s)" in first, first[-3000:]
        if task_id == "literal" and AIRFLOW_V_3_3_PLUS:  # the trigger's copy failed first: the worker took it over
            assert "Cannot copy the images from the triggerer" in _trigger_log(deployed, *retry, task_id), task_id
            assert STARTED_LINE in first, first[-3000:]
        assert "copying the 1 image(s) an earlier try generated (no new API call)" in second, second[-3000:]
        assert "Cost of this try: 0 paid generation call(s) for 1 prompt(s)" in second, second[-3000:]
        if task_id == "literal" and AIRFLOW_V_3_3_PLUS:  # try 2 started in the triggerer too, which left it alone
            trigger = _trigger_log(deployed, *retry, task_id, attempt=2)
            assert "Started in the triggerer: 1 prompt(s), 0 to generate, 1 left to the worker" in trigger, trigger
            assert STARTED_LINE in second, second[-3000:]
            assert DEFERRED_LINE not in second
        else:  # try 2 found the recorded URLs before deferring
            assert "Deferring from the worker, not starting in the triggerer" in second
            assert DEFERRED_LINE not in second, second[-3000:]
        images = _xcom(deployed, *retry, task_id)
        assert len(images) == 1
        _verify_in_s3(deployed, images, bucket)
        assert _pending(deployed, bucket, RETRY_DAG, task_id) is None, "the committed prompt left its record behind"

    _assert_key_never_appears(deployed)
    print(f"\nre-run and retries in {elapsed:.1f} s")


def test_triggerer_killed_once_the_urls_are_recorded(deployed: Deployed) -> None:
    """SIGKILL the triggerer as soon as the task's ``_pending.json`` is in S3, restart it: success, one call per prompt.

    On 3.3 the literal task starts in the triggerer: its supervisor is frozen (SIGSTOP, between two database
    transactions) while the API call runs, so the trigger records the URLs but its event cannot be stored
    before the kill; the restarted trigger then runs again and must find the record. The fallback's trigger
    records nothing: its ``_pending.json`` is the resumed worker's, so that kill comes after the event.
    """
    emulator = deployed.emulator
    emulator.reset(clear_images=True)
    emulator.configure(latency=API_LATENCY, truncate_bodies=False, slow_body_seconds=SLOW_BODY_SECONDS)
    bucket = _new_bucket(deployed)
    started = time.monotonic()
    run = (RESTART_DAG, _trigger(deployed, RESTART_DAG, bucket))
    killed: dict[str, float] = {}

    observed = [0.0]

    def recorded(task_id: str) -> dict[str, Any] | None:
        if time.monotonic() - observed[0] > 0.5:  # the triggers of the deferred task instances, now and then
            _observe(deployed, [run])
            observed[0] = time.monotonic()
        return _pending(deployed, bucket, RESTART_DAG, task_id)

    def wait_pending(task_id: str) -> None:
        wait_until(
            lambda: recorded(task_id),
            timeout=RUN_TIMEOUT,
            what=f"{task_id}'s _pending.json",
            interval=PENDING_POLL,
            alive=deployed.deployment.check_alive,
        )

    # -- the literal task ----------------------------------------------------------------------------------------
    if AIRFLOW_V_3_3_PLUS:
        wait_until(
            lambda: emulator.state.in_flight_generations > 0,
            timeout=RUN_TIMEOUT,
            what="the literal task's generation call",
            interval=PENDING_POLL,
            alive=deployed.deployment.check_alive,
        )
        _freeze_between_transactions(_triggerer(deployed).pid, deployed.db_path)
    try:
        wait_pending("literal")
    except BaseException:
        os.kill(_triggerer(deployed).pid, signal.SIGCONT)  # not left frozen for the other tests
        raise
    _kill_and_restart_triggerer(deployed, "the literal task's URLs are recorded")
    killed["literal"] = time.monotonic() - started

    # -- the fallback, once its worker has resumed and recorded the URLs ---------------------------------------
    wait_pending("from_xcom")
    _kill_and_restart_triggerer(deployed, "the fallback's URLs are recorded")
    killed["from_xcom"] = time.monotonic() - started

    states = _wait_runs(deployed, [run])
    elapsed = time.monotonic() - started
    ti_states = _ti_states(deployed, *run)
    assert states[run] == "success", ti_states
    assert set(ti_states.values()) == {("success", 1)}, ti_states
    assert (_paid(emulator, RESTART_LITERAL), _paid(emulator, RESTART_XCOM)) == (1, 1), "the restart paid again"

    literal_trigger = _trigger_log(deployed, *run, "literal")
    literal_worker = _worker_log(deployed, *run, "literal")
    if AIRFLOW_V_3_3_PLUS:  # the restarted start trigger found the URLs it had recorded before the kill
        assert "Started in the triggerer: 1 prompt(s), 0 to generate, 1 left to the worker" in literal_trigger, (
            literal_trigger
        )
        assert STARTED_LINE in literal_worker, literal_worker[-3000:]
        assert literal_worker.count(PRE_EXECUTE) == 1, literal_worker[-3000:]
        assert (
            "copying the 1 image(s) this try's trigger generated before the triggerer restarted (no new API call)"
            in literal_worker
        ), literal_worker[-3000:]
        assert "Cost of this try: 1 paid generation call(s) for 1 prompt(s)" in literal_worker, "the call is counted"
    else:
        assert DEFERRED_LINE in literal_worker, literal_worker[-3000:]
        assert STARTED not in literal_worker
    xcom_worker = _worker_log(deployed, *run, "from_xcom")
    assert DEFERRED_LINE in xcom_worker, xcom_worker[-3000:]
    assert STARTED not in xcom_worker
    for task_id in ("literal", "from_xcom"):
        images = _xcom(deployed, *run, task_id)
        assert len(images) == 1
        _verify_in_s3(deployed, images, bucket)

    _assert_key_never_appears(deployed)
    found = "0 to generate, 1 left to the worker" in literal_trigger
    print(
        f"\ntriggerer killed at {killed} s; run ended after {elapsed:.1f} s; "
        f"the restarted start trigger found the record: {found}"
    )
