"""A producer run day after day: Airflow's StatsD metrics carry the right counts, and asset rows do not grow.

``imagegen_daily_content`` runs four times through ``dag.test()`` in a subprocess (so that Airflow
reads ``[metrics]`` afresh): three logical dates, then the first date again (a re-run that reuses
the stored images). StatsD is on, aimed at a UDP listener on 127.0.0.1. Then:

* the ``airflow.imagegen.*`` counters add up to what the emulator and S3 saw;
* Airflow's DB holds ONE new asset for the producer task, whatever the number of runs and images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_2_PLUS
from tests.support import StatsdListener, read_json

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("imagegen_conn", "aws_conn")]

ROOT = Path(__file__).resolve().parents[2]
DAILY = "imagegen_daily_content"
DAYS = (1, 2, 3, 1)  # the last one re-runs the first run: every image reused, no API call

SCRIPT = """
import json, sys
from datetime import timedelta
from tests.e2e.support import LOGICAL_DATE, load_dag
bucket, days = sys.argv[1], json.loads(sys.argv[2])
dag = load_dag("imagegen_daily_content")
for day in days:
    when = LOGICAL_DATE + timedelta(days=day)
    run = dag.test(logical_date=when, run_after=when, run_conf={"bucket": bucket, "n": 2})
    print("RUN", json.dumps({"run_id": run.run_id, "state": str(run.state)}), flush=True)
"""


def _counters(lines: list[str]) -> tuple[dict[str, int], dict[str, list[float]]]:
    counters: dict[str, int] = defaultdict(int)
    timers: dict[str, list[float]] = defaultdict(list)
    for line in lines:
        name, _, rest = line.partition(":")
        value, _, kind = rest.partition("|")
        if kind == "c":
            counters[name] += int(value)
        elif kind == "ms":
            timers[name].append(float(value))
    return counters, timers


def test_statsd_counters_and_constant_asset_rows_over_many_runs(airflow_db, emulator, s3_server, s3_bucket):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        assets_before = session.scalar(select(func.count()).select_from(AssetModel))
    listener = StatsdListener()
    env = {
        **os.environ,
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(listener.port),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, s3_bucket, json.dumps(DAYS)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        listener.close()
    output = done.stdout + done.stderr
    runs = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("RUN ")]
    assert done.returncode == 0, output[-4000:]
    assert [run["state"] for run in runs] == ["success"] * len(DAYS), output[-4000:]

    # -- the counters match what the emulator and S3 saw ----------------------------------------------
    counters, timers = _counters(listener.lines)
    ours = {name: value for name, value in counters.items() if name.startswith("airflow.imagegen.")}
    calls = emulator.state.generation_calls()
    assert len(calls) == 3, "one paid call per new run; the re-run reuses"
    manifests = [
        read_json(s3_server.client(), s3_bucket, key)
        for key in sorted(
            item["Key"]
            for item in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
            if item["Key"].endswith("/manifest.json")
        )
    ]
    assert len(manifests) == 3
    stored_bytes = sum(image["size_bytes"] for manifest in manifests for image in manifest["images"])
    assert ours == {
        "airflow.imagegen.generation_calls.success": 3,
        "airflow.imagegen.images_stored": 6,
        "airflow.imagegen.bytes_stored": stored_bytes,
        "airflow.imagegen.images_reused": 2,
    }, ours
    assert len(timers["airflow.imagegen.generation"]) == 3
    assert len(timers["airflow.imagegen.copy_to_s3"]) == 3
    assert all(value >= 0 for value in timers["airflow.imagegen.generation"] + timers["airflow.imagegen.copy_to_s3"])
    # the summary line of each try says the same
    assert output.count("Cost of this try: 1 paid generation call(s) for 1 prompt(s)") == 3, output[-4000:]
    assert "Cost of this try: 0 paid generation call(s) for 1 prompt(s); images requested 0" in output
    assert emulator.api_key not in "\n".join(listener.lines)

    # -- four runs, one new asset ----------------------------------------------------------------------
    run_ids = {run["run_id"] for run in runs}
    with create_session() as session:
        assets_after = session.scalar(select(func.count()).select_from(AssetModel))
        events = session.scalars(select(AssetEvent).where(AssetEvent.source_run_id.in_(run_ids))).all()
        # the session's Airflow DB is shared: other tests' runs may have the same run ids, not this bucket
        events = [event for event in events if event.uri.startswith(f"s3://{s3_bucket}/")]
        uris = {event.uri for event in events}
        extras: list[dict[str, Any]] = [dict(event.extra) for event in events]
    assert uris == {f"s3://{s3_bucket}/imagegen/{DAILY}/generate_images"}
    assert len(events) == len(DAYS), "one event per task instance run"
    assert assets_after - assets_before == 1, f"{assets_after - assets_before} new asset rows for {len(DAYS)} runs"
    assert all(extra["image_count"] == 2 for extra in extras)
    if AIRFLOW_V_3_2_PLUS:
        assert all(len(extra["images"]) == 2 for extra in extras)
    else:  # 3.1 drops alias events whose extra holds lists: the list stays in the manifests
        assert all("images" not in extra and extra["truncated"] is True for extra in extras)
