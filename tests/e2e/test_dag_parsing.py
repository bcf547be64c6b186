"""The example DAGs parse offline: no connections, no network, no heavy imports at parse time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .support import DAGS_FOLDER

pytestmark = pytest.mark.e2e

EXPECTED_DAGS = {"imagegen_daily_content", "imagegen_mapped_prompts", "imagegen_asset_consumer"}
HEAVY_MODULES = ("boto3", "botocore", "PIL", "httpx")

# Runs in a fresh interpreter so that sys.modules shows what parsing the DAGs really imports.
PARSE_SCRIPT = """
import json, socket, sys, time

def no_network(*args, **kwargs):
    raise OSError("network access while parsing DAGs")

socket.socket.connect = no_network
socket.socket.connect_ex = no_network
socket.create_connection = no_network
socket.getaddrinfo = no_network

import airflow.sdk  # what every DAG file pays anyway
before = set(sys.modules)
started = time.monotonic()
try:
    from airflow.dag_processing.dagbag import DagBag  # Airflow 3.2+
except ImportError:
    from airflow.models.dagbag import DagBag  # Airflow 3.1

bag = DagBag(dag_folder=sys.argv[1])
print("RESULT " + json.dumps({
    "dag_ids": sorted(bag.dag_ids),
    "import_errors": {str(k): v for k, v in bag.import_errors.items()},
    "new_modules": sorted(set(sys.modules) - before),
    "seconds": time.monotonic() - started,
}))
"""


def offline_env() -> dict[str, str]:
    """This environment without any connection, AWS credential or proxy."""
    dropped = ("AIRFLOW_CONN_", "AWS_", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_FOLDER)
    return env


def test_dagbag_imports_without_errors_connections_or_network():
    completed = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(DAGS_FOLDER)],
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))

    assert result["import_errors"] == {}
    assert set(result["dag_ids"]) >= EXPECTED_DAGS
    heavy = [name for name in result["new_modules"] if name.split(".")[0] in HEAVY_MODULES]
    assert heavy == [], f"parsing the DAGs imported {heavy[:10]}"
