"""The provider on Airflow's Celery executor: two workers, one of them lost mid-copy, and deferral.

One deployment for the module, every part a separate process on 127.0.0.1: Debian's ``redis-server``
(broker and result backend), ``airflow api-server``, ``scheduler``, ``dag-processor``, ``triggerer``
and two ``airflow celery worker`` processes with different hostnames (``worker-a``, ``worker-b``;
concurrency 2 each). The API emulator and a moto S3 server run in this test process; the
connections reach every process as ``AIRFLOW_CONN_*`` variables, as a user would configure them on
every worker. The DAGs are in ``celery_dags/imagegen_celery_test.py``.

* twelve mapped prompts spread over both workers, every image verified in S3, one paid call each;
* six deferrable mapped prompts: while the API works, all six wait in the triggerer and no task
  instance holds a worker slot; then all land;
* a worker SIGKILLed (with its task) while it streams a slow 4K image into a multipart upload: the
  scheduler notices the missing heartbeats (timeout lowered to 20 s here), the retry runs on the other
  worker, copies the URL recorded in ``_pending.json``, pays for no second image and leaves no
  multipart upload open (the retry aborts the killed try's).

The tests share the deployment and run in file order; the worker is killed last.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from airflow_provider_imagegen.testing import connection_env
from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_3_PLUS

from .celery_cluster import RedisServer, celery_env, check_celery_provider, start_celery_worker, wait_worker_ready
from .components import AirflowDeployment, call_failed, new_bucket, task_instances, trigger_run, wait_until
from .components import api as _api

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import httpx

    from airflow_provider_imagegen.emulator import Emulator
    from airflow_provider_imagegen.testing import LocalS3

    from .components import Component

pytestmark = pytest.mark.e2e

DAGS_FOLDER = Path(__file__).resolve().parent / "celery_dags"
MAPPED_DAG = "imagegen_celery_mapped"
DEFERRABLE_DAG = "imagegen_celery_deferrable"
LOST_DAG = "imagegen_celery_worker_lost"
TASK_ID = "generate"
# the prompts of celery_dags/imagegen_celery_test.py
MAPPED_PROMPTS = [f"a paper boat on a pond, variant {index}" for index in range(12)]
DEFERRABLE_PROMPTS = [f"a lantern in the fog, variant {index}" for index in range(6)]
WORKERS = ("worker-a", "worker-b")
WORKER_CONCURRENCY = 2
HEARTBEAT_TIMEOUT = 20
"""``[scheduler] task_instance_heartbeat_timeout`` for the test (default 300 s)."""
DEFERRED_LATENCY = 12.0
"""Seconds the emulator takes per generation call in the deferrable test: all six must be deferred
before the first fires (and Airflow's defer/trigger race, apache/airflow#72716, needs a few seconds)."""
SLOW_BODY_SECONDS = 30.0
"""The 4K image's download is spread over this long, so the worker dies mid-copy."""
READY_TIMEOUT = 180.0
RUN_TIMEOUT = 240.0


@dataclass
class Cluster:
    """The running deployment and what the tests need to drive and inspect it."""

    deployment: AirflowDeployment
    emulator: Emulator
    s3: LocalS3
    client: httpx.Client
    workers: dict[str, Component]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_server: LocalS3) -> Iterator[Cluster]:
    """Redis, the emulator and every Airflow component, ready; all stopped at the end."""
    from airflow_provider_imagegen.emulator import Emulator

    check_celery_provider()
    home = tmp_path_factory.mktemp("airflow-celery-home")
    with RedisServer(home / "redis") as redis, Emulator() as emulator:
        env = connection_env(emulator.connection_json(), s3_server)
        env.update(celery_env(redis, concurrency=WORKER_CONCURRENCY))
        env.update(
            {
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
            }
        )
        deployment = AirflowDeployment(home, extra_env=env)
        try:
            deployment.migrate()
            deployment.start_api_server()
            deployment.start("scheduler", "--skip-serve-logs")
            deployment.start("triggerer", "--skip-serve-logs")
            deployment.start("dag-processor")
            workers = {name: start_celery_worker(deployment, name, concurrency=WORKER_CONCURRENCY) for name in WORKERS}
            deployment.wait_api_ready()
            with deployment.client(deployment.token()) as client:
                _wait(deployment, lambda: _healthy(client), timeout=READY_TIMEOUT, what="component heartbeats")
                _wait(
                    deployment,
                    lambda: all(client.get(f"/api/v2/dags/{d}").status_code == 200 for d in _dags()),
                    timeout=READY_TIMEOUT,
                    what="the dag-processor to parse the test DAGs",
                )
                for worker in workers.values():
                    wait_worker_ready(deployment, worker)
                for dag_id in _dags():
                    _api(client, "PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
                yield Cluster(deployment, emulator, s3_server, client, workers)
        finally:
            deployment.stop()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[None]:
    """Print every component's log tail when a test fails."""
    yield
    if call_failed(request):
        calls = [(c.method, c.path[:40], c.status, round(c.duration, 2)) for c in cluster.emulator.state.calls]
        print(
            f"\nAirflow home: {cluster.deployment.home}\nemulator calls: {calls}\n"
            f"processes:\n{cluster.deployment.processes_report()}\n{cluster.deployment.logs()}"
        )


# -- helpers --------------------------------------------------------------------------------------------


def _dags() -> tuple[str, ...]:
    return (MAPPED_DAG, DEFERRABLE_DAG, LOST_DAG)


def _healthy(client: httpx.Client) -> bool:
    health = client.get("/api/v2/monitor/health").json()
    return all(health[name]["status"] == "healthy" for name in ("scheduler", "triggerer", "dag_processor"))


def _wait(deployment: AirflowDeployment, check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    return wait_until(check, timeout=timeout, what=what, interval=0.5, alive=deployment.check_alive)


def _new_bucket(cluster: Cluster) -> str:
    return new_bucket(cluster.s3, "imagegen-celery")


def _trigger(cluster: Cluster, dag_id: str, bucket: str) -> str:
    return trigger_run(cluster.client, dag_id, {"bucket": bucket}, run_prefix="celery_test")


def _task_instances(cluster: Cluster, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    return task_instances(cluster.client, dag_id, run_id)


def _wait_run(
    cluster: Cluster, dag_id: str, run_id: str, *, watch: Callable[[list[dict[str, Any]]], None] | None = None
) -> str:
    """Wait for the run to end (calling ``watch`` with its task instances at every poll); its state."""
    run_url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"

    def finished() -> str | None:
        if watch is not None:
            watch(_task_instances(cluster, dag_id, run_id))
        state = cluster.client.get(run_url).json()["state"]
        return state if state in ("success", "failed") else None

    return str(_wait(cluster.deployment, finished, timeout=RUN_TIMEOUT, what=f"{dag_id} run {run_id} to end"))


def _xcom(cluster: Cluster, dag_id: str, run_id: str, map_index: int = -1) -> list[dict[str, Any]]:
    url = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{TASK_ID}/xcomEntries/return_value"
    value = _api(cluster.client, "GET", url, params={"map_index": map_index})["value"]
    return list(json.loads(value) if isinstance(value, str) else value)


def _verify_in_s3(cluster: Cluster, images: list[dict[str, Any]]) -> set[str]:
    """Every image's stored bytes hash to the XCom's sha256, beside a manifest; the set of digests."""
    s3 = cluster.s3.client()
    digests = set()
    for image in images:
        body = s3.get_object(Bucket=image["bucket"], Key=image["key"])["Body"].read()
        digest = hashlib.sha256(body).hexdigest()
        assert digest == image["sha256"], f"{image['key']}: S3 holds other bytes than the XCom says"
        prefix = image["key"].rsplit("/", 1)[0]
        s3.head_object(Bucket=image["bucket"], Key=f"{prefix}/manifest.json")
        digests.add(digest)
    return digests


def _served(emulator: Emulator) -> set[str]:
    """sha256 of every image the emulator served in full (HTTP 200) since its last reset."""
    paths = {call.path for call in emulator.state.download_calls() if call.status == 200}
    return {sha for url, sha in emulator.state.sha256_by_url().items() if urlsplit(url).path in paths}


def _paid_prompts(emulator: Emulator) -> list[str]:
    return sorted(call.body["prompt"] for call in emulator.state.generation_calls())


def _no_key_in_logs(cluster: Cluster) -> None:
    logs = cluster.deployment.home / "logs"
    leaked = [path for path in logs.rglob("*.log") if cluster.emulator.api_key in path.read_text(errors="replace")]
    assert not leaked, f"the API key appears in {leaked}"


# -- the tests ------------------------------------------------------------------------------------------


def test_mapped_prompts_spread_over_both_workers(cluster: Cluster) -> None:
    emulator = cluster.emulator
    emulator.reset(clear_images=True)
    emulator.configure(latency=1.0, noise=False, slow_body_seconds=0.0)
    bucket = _new_bucket(cluster)
    started = time.monotonic()
    run_id = _trigger(cluster, MAPPED_DAG, bucket)

    state = _wait_run(cluster, MAPPED_DAG, run_id)
    tis = _task_instances(cluster, MAPPED_DAG, run_id)
    summary = {ti["map_index"]: (ti["state"], ti["hostname"], ti["try_number"]) for ti in tis}
    assert state == "success", summary
    assert sorted(summary) == list(range(len(MAPPED_PROMPTS)))
    assert {ti["state"] for ti in tis} == {"success"}, summary
    assert {ti["try_number"] for ti in tis} == {1}, summary
    per_worker = {name: sum(ti["hostname"] == name for ti in tis) for name in WORKERS}
    assert all(per_worker.values()), f"the mapped tasks did not spread over both workers: {per_worker}"
    assert sum(per_worker.values()) == len(MAPPED_PROMPTS), summary

    images = [image for index in range(len(MAPPED_PROMPTS)) for image in _xcom(cluster, MAPPED_DAG, run_id, index)]
    assert len(images) == len(MAPPED_PROMPTS)
    assert len({image["key"] for image in images}) == len(MAPPED_PROMPTS), "two mapped tasks share a key"
    assert _verify_in_s3(cluster, images) == _served(emulator), "S3 holds other images than the emulator served"
    assert _paid_prompts(emulator) == sorted(MAPPED_PROMPTS), "not exactly one paid call per prompt"
    _no_key_in_logs(cluster)
    print(f"\n12 mapped prompts in {time.monotonic() - started:.1f} s; per worker: {per_worker}")


def test_deferrable_mapped_prompts_wait_in_the_triggerer(cluster: Cluster) -> None:
    emulator = cluster.emulator
    emulator.reset(clear_images=True)
    emulator.configure(latency=DEFERRED_LATENCY, noise=False, slow_body_seconds=0.0)
    bucket = _new_bucket(cluster)
    run_id = _trigger(cluster, DEFERRABLE_DAG, bucket)
    polls: list[dict[str, int]] = []
    classpaths: set[str] = set()

    def watch(tis: list[dict[str, Any]]) -> None:
        counts: dict[str, int] = {}
        for ti in tis:
            counts[ti["state"]] = counts.get(ti["state"], 0) + 1
            if ti["state"] == "deferred" and ti.get("trigger"):
                classpaths.add(ti["trigger"]["classpath"])
        polls.append(counts)

    state = _wait_run(cluster, DEFERRABLE_DAG, run_id, watch=watch)
    tis = _task_instances(cluster, DEFERRABLE_DAG, run_id)
    assert state == "success", [(ti["map_index"], ti["state"]) for ti in tis]
    n = len(DEFERRABLE_PROMPTS)
    all_waiting = [counts for counts in polls if counts.get("deferred") == n]
    assert all_waiting, f"never saw all {n} task instances deferred at once: {polls}"
    assert all(counts.get("running", 0) == 0 for counts in all_waiting), all_waiting
    started_there = "ImageGenStartTrigger" if AIRFLOW_V_3_3_PLUS else "ImageGenTrigger"  # 3.3: no worker start first
    assert classpaths == {f"airflow_provider_imagegen.triggers.imagegen.{started_there}"}, classpaths
    assert emulator.stats()["max_in_flight_generations"] == n, "the triggerer did not hold every wait at once"
    assert {ti["try_number"] for ti in tis} == {1}, "a deferral must resume the same try"
    images = [image for index in range(n) for image in _xcom(cluster, DEFERRABLE_DAG, run_id, index)]
    assert len(images) == n
    assert _verify_in_s3(cluster, images) == _served(emulator)
    assert _paid_prompts(emulator) == sorted(DEFERRABLE_PROMPTS)
    _no_key_in_logs(cluster)
    print(f"\npolls with all {n} deferred and none running: {len(all_waiting)} of {len(polls)}")


def test_worker_lost_mid_copy_retries_on_the_other_worker_without_paying_again(cluster: Cluster) -> None:
    emulator, deployment = cluster.emulator, cluster.deployment
    emulator.reset(clear_images=True)
    emulator.configure(latency=0.5, noise=True, slow_body_seconds=SLOW_BODY_SECONDS)
    bucket = _new_bucket(cluster)
    s3 = cluster.s3.client()
    run_id = _trigger(cluster, LOST_DAG, bucket)
    ti_url = f"/api/v2/dags/{LOST_DAG}/dagRuns/{run_id}/taskInstances/{TASK_ID}"

    def copying() -> str | None:
        ti = cluster.client.get(ti_url).json()
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return ti["hostname"] if ti["state"] == "running" and ti["hostname"] in WORKERS and uploads else None

    victim = _wait(deployment, copying, timeout=READY_TIMEOUT, what="the 4K image's multipart upload to start")
    survivor = next(name for name in WORKERS if name != victim)
    killed = cluster.workers[victim].kill_tree()
    killed_at = time.monotonic()
    deployment.components.remove(cluster.workers[victim])
    emulator.configure(slow_body_seconds=0.0)  # the retry's copy need not be slow

    state = _wait_run(cluster, LOST_DAG, run_id)
    finished_at = time.monotonic()
    ti = _api(cluster.client, "GET", ti_url)
    tries = _api(cluster.client, "GET", f"{ti_url}/tries")["task_instances"]
    by_try = {t["try_number"]: (t["state"], t["hostname"]) for t in tries}
    assert state == "success", by_try
    assert ti["try_number"] == 2, by_try
    assert ti["hostname"] == survivor, f"the retry ran on {ti['hostname']}, not on the surviving {survivor}"
    assert by_try.get(1, (None, None))[1] == victim, by_try
    scheduler_log = next(c for c in deployment.components if c.name == "scheduler").log_text()
    assert "Detected a task instance without a heartbeat" in scheduler_log, "the scheduler never noticed the loss"

    generations = emulator.state.generation_calls()
    assert len(generations) == 1, f"the prompt was paid {len(generations)} times"
    downloads = emulator.state.download_calls()
    # the killed try's download (cut off mid-body, recorded when the socket closed) and the retry's
    assert len(downloads) == 2, [(call.path, call.status, round(call.duration, 1)) for call in downloads]
    assert {call.path for call in downloads} == {urlsplit(emulator.state.images[0].url).path}, (
        "the retry copied another URL than the one recorded by the killed try"
    )
    images = _xcom(cluster, LOST_DAG, run_id)
    assert len(images) == 1
    assert images[0]["size_bytes"] > 8 * 1024 * 1024, "the image must be big enough for a multipart upload"
    assert _verify_in_s3(cluster, images) == _served(emulator)
    prefix = images[0]["key"].rsplit("/", 1)[0]
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}
    assert f"{prefix}/_pending.json" not in keys, keys
    _no_key_in_logs(cluster)
    open_uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert not open_uploads, f"multipart uploads left open: {[(u['Key'], u['UploadId']) for u in open_uploads]}"
    print(
        f"\nkilled {victim} ({len(killed)} processes) mid-copy; try 2 succeeded on {survivor} "
        f"{finished_at - killed_at:.1f} s later; one generation call, {len(downloads)} download(s)"
    )
