"""Run ``imagegen_daily_content`` once with ``dag.test()`` and copy its outputs to ``demo-output/``.

Local mode (the default): the GPT Image 2 API emulator and a moto S3 server, both on 127.0.0.1;
nothing leaves this machine.

Real mode, when ``IMAGEGEN_API_KEY`` is set: the real API (``IMAGEGEN_BASE_URL``, default
https://api.highwayapi.ai) and real S3. It needs ``IMAGEGEN_S3_BUCKET`` (an existing bucket) and AWS
credentials that boto3 finds in its usual places (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, an instance role...); ``AWS_DEFAULT_REGION`` sets the region. Real mode makes paid
API calls: ``IMAGEGEN_DEMO_N`` (default 3) sets how many images.

Either way Airflow runs from a SQLite home in ``.airflow-demo/`` with ``dags/`` as DAGs folder.
The console tells the story (see :mod:`demo.story`); Airflow's full log goes to
``demo-output/airflow.log``. On a failure the failing task's log tail is printed too.
Exit status: 0 when the run succeeded, 1 when it failed, 2 on a configuration error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from demo.story import Story, human_bytes, register_listener, task_label

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_HOME = REPO / ".airflow-demo"
DAGS_FOLDER = REPO / "dags"
OUTPUT_DIR = REPO / "demo-output"
LOG_PATH = OUTPUT_DIR / "airflow.log"
DAG_ID = "imagegen_daily_content"
GENERATE_TASK_ID = "generate_images"
LOCAL_BUCKET = "imagegen-demo"
DEFAULT_BASE_URL = "https://api.highwayapi.ai"


class DemoConfigError(Exception):
    """The environment asks for real mode but lacks something it needs."""


@dataclass(frozen=True)
class Target:
    """Where the demo sends its requests and stores its images."""

    real: bool
    bucket: str
    n: int


def configure_airflow_home() -> None:
    """Point Airflow at ``.airflow-demo/`` and ``dags/``; must run before anything imports Airflow."""
    if "airflow" in sys.modules:
        raise RuntimeError("Airflow was imported before the demo could set AIRFLOW_HOME")
    AIRFLOW_HOME.mkdir(exist_ok=True)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        }
    )


def choose_target(env: dict[str, str]) -> Target:
    """Real mode when ``IMAGEGEN_API_KEY`` is set (then ``IMAGEGEN_S3_BUCKET`` is required), else local."""
    n = int(env.get("IMAGEGEN_DEMO_N") or 3)
    if not env.get("IMAGEGEN_API_KEY"):
        return Target(real=False, bucket=LOCAL_BUCKET, n=n)
    bucket = env.get("IMAGEGEN_S3_BUCKET", "").strip()
    if not bucket:
        raise DemoConfigError("IMAGEGEN_API_KEY is set (real mode): set IMAGEGEN_S3_BUCKET to an existing bucket too")
    return Target(real=True, bucket=bucket, n=n)


def real_connections(env: dict[str, str]) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` values for the real API and real S3 (credentials from boto3's usual chain)."""
    imagegen = {
        "conn_type": "imagegen",
        "host": env.get("IMAGEGEN_BASE_URL") or DEFAULT_BASE_URL,
        "password": env["IMAGEGEN_API_KEY"],
    }
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
    aws: dict[str, Any] = {"conn_type": "aws", "extra": {"region_name": region} if region else {}}
    connections = {"AIRFLOW_CONN_IMAGEGEN_DEFAULT": json.dumps(imagegen)}
    if "AIRFLOW_CONN_AWS_DEFAULT" not in env:  # keep a connection the user defined
        connections["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(aws)
    return connections


def start_local_services(stack: ExitStack, story: Story) -> dict[str, str]:
    """Start the emulator and a moto S3 server on loopback, create the bucket; return the connections."""
    from airflow_provider_imagegen.emulator import Emulator
    from airflow_provider_imagegen.testing import connection_env, local_s3

    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log
    emulator = stack.enter_context(Emulator())
    story.step("API emulator up", f"{emulator.base_url} (plays GPT Image 2 on this machine)")
    s3 = stack.enter_context(local_s3())
    s3.client().create_bucket(Bucket=LOCAL_BUCKET)
    story.step("local S3 up", f"{s3.endpoint_url} (moto), bucket {LOCAL_BUCKET}")
    return connection_env(emulator.connection_json(), s3)


def migrate_db(story: Story) -> None:
    """``airflow db migrate`` on the demo's SQLite database (quick when already up to date)."""
    from airflow.utils.db import upgradedb

    started = time.monotonic()
    upgradedb()
    where = (AIRFLOW_HOME / "airflow.db").relative_to(REPO)
    story.step("Airflow database ready", f"{where} ({time.monotonic() - started:.1f} s)")


def run_daily_dag(target: Target, story: Story) -> Any:
    """Parse the DAG file and run it once with ``dag.test()``, telling each task as it ends; return the DagRun."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=DAGS_FOLDER / f"{DAG_ID}.py")
    if bag.import_errors:
        raise DemoConfigError(f"{DAG_ID} does not parse: {bag.import_errors}")
    dag = bag.dags[DAG_ID]
    story.step("DAG parsed", f"{DAG_ID}: {', '.join(dag.task_ids)}")
    listening = register_listener(story)
    now = datetime.now(timezone.utc).replace(microsecond=0)  # run id manual__2026-01-02T03:04:05+00:00
    story.say(f"  ▶ DAG run started            n={target.n} image(s) into s3://{target.bucket}; tasks as they end:")
    started = time.monotonic()
    story.start_progress()
    try:
        dag_run = dag.test(logical_date=now, run_after=now, run_conf={"bucket": target.bucket, "n": target.n})
    finally:
        story.stop_progress()
    elapsed = time.monotonic() - started
    if not listening or not story.reported_tasks:  # no listener hooks on this Airflow: the final states
        for ti in sorted(dag_run.get_task_instances(), key=lambda ti: (ti.start_date is None, ti.start_date)):
            story.say(f"      {task_label(ti.task_id, ti.map_index):<30} {ti.state!s:<14} {ti.duration or 0:5.1f} s")
    outcome = story.step if dag_run.state == "success" else story.fail
    outcome(f"DAG run {dag_run.state}", f"run {dag_run.run_id} in {elapsed:.1f} s")
    return dag_run


def download_outputs(run_id: str, bucket: str) -> list[tuple[str, Path]]:
    """Copy every object under the run's prefix (images, thumbnails, manifest, gallery) locally."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from airflow_provider_imagegen.plan import default_prefix, safe_segment

    prefix = default_prefix(DAG_ID, run_id, GENERATE_TASK_ID, -1)
    client: Any = S3Hook(aws_conn_id="aws_default").get_conn()
    destination = OUTPUT_DIR / safe_segment(run_id)
    copied = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            local = destination / item["Key"][len(prefix) + 1 :]
            local.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, item["Key"], str(local))
            copied.append((f"s3://{bucket}/{item['Key']}", local))
    return copied


def report(copied: list[tuple[str, Path]], story: Story) -> None:
    """Tell what landed in S3 (each image with its pixel and byte size) and where the local copies are."""
    by_name = {local.relative_to(OUTPUT_DIR).as_posix(): (uri, local) for uri, local in copied}
    manifest_path = next((local for _, local in copied if local.name == "manifest.json"), None)
    manifest = json.loads(manifest_path.read_text()) if manifest_path else {"images": []}
    folder = manifest_path.parent if manifest_path else OUTPUT_DIR
    story.say(f"\n  Images generated, verified (SHA-256) and stored in S3, copied to {folder.relative_to(REPO)}/:")
    for image in manifest["images"]:
        pixels = f"{image.get('width')}x{image.get('height')}"
        size = human_bytes(image["size_bytes"])
        story.say(f"      {Path(image['key']).name:<8} {pixels:>10}  {size:>9}  {image['s3_uri']}")
    thumbnails = sorted(name for name in by_name if "/thumbnails/" in name)
    if thumbnails:
        story.say(f"  Thumbnails: {len(thumbnails)} in {folder.relative_to(REPO)}/thumbnails/")
    if manifest_path:
        story.say(f"  Manifest:   {manifest_path.relative_to(REPO)} (the proof that every image is complete)")
    gallery = next((local for _, local in copied if local.name == "gallery.html"), None)
    if gallery:
        story.say(f"  Gallery:    open file://{gallery}")
    story.say(f"  Airflow's full log: {LOG_PATH.relative_to(REPO)}")


def explain_failure(dag_run: Any, story: Story) -> None:
    """Name the failed task instances and print each one's log tail, then the full log's path."""
    failed = [ti for ti in dag_run.get_task_instances() if str(ti.state) in {"failed", "up_for_retry"}]
    for ti in failed:
        label = task_label(ti.task_id, ti.map_index)
        story.say(f"\n  ── {label} ({ti.state}): its log, from the first error ──")
        story.say("\n".join(story.task_log_tail(ti.task_id, ti.map_index)))
    states = ", ".join(f"{task_label(ti.task_id, ti.map_index)}={ti.state}" for ti in dag_run.get_task_instances())
    story.say(f"\n  Task states: {states}")
    story.say(f"  Airflow's full log: {LOG_PATH}")


def run(target: Target, story: Story) -> int:
    """Migrate, run the DAG, copy its outputs; 0 on success."""
    migrate_db(story)
    dag_run = run_daily_dag(target, story)
    if dag_run.state != "success":
        explain_failure(dag_run, story)
        return 1
    copied = download_outputs(dag_run.run_id, target.bucket)
    report(copied, story)
    return 0


def main() -> int:
    """Set up Airflow's environment, the connections (emulator + moto, or real), and run."""
    configure_airflow_home()
    try:
        target = choose_target(dict(os.environ))
    except DemoConfigError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 2
    print(f"imagegen demo: the {DAG_ID} DAG turns a templated prompt into {target.n} banner image(s),")
    print("stores them verified in S3, makes thumbnails and an HTML gallery, and copies it all to demo-output/.")
    print(f"Airflow's own log goes to {LOG_PATH.relative_to(REPO)}.\n")
    with Story(LOG_PATH) as story, ExitStack() as stack:
        if target.real:
            base_url = os.environ.get("IMAGEGEN_BASE_URL") or DEFAULT_BASE_URL
            story.step("real mode (paid calls)", f"{base_url}, s3://{target.bucket}")
            os.environ.update(real_connections(dict(os.environ)))
        else:
            os.environ.update(start_local_services(stack, story))
        return run(target, story)


if __name__ == "__main__":
    sys.exit(main())
