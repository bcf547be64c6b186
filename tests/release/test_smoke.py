"""Smoke test of the installed package: hook, operator (through ``dag.test()``) and emulator.

It uses only the public, documented entry points (``Emulator``, ``testing.local_s3``,
``testing.connection_env``, ``ImageGenHook``, ``ImageGenToS3Operator``), so it runs unchanged
against the development install and against a throwaway venv holding the built wheel at the
lowest versions the package declares (``make test-lowest``).
"""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_imagegen.emulator import Emulator
from airflow_provider_imagegen.testing import connection_env, local_s3

BUCKET = "smoke-bucket"
DAG_ID = "imagegen_smoke"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SMOKE_DAG = f"""
from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

with DAG(dag_id="{DAG_ID}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):
    ImageGenToS3Operator(
        task_id="generate",
        prompt="a lighthouse at dawn for {{{{ dag.dag_id }}}}",
        s3_bucket="{BUCKET}",
        n=2,
        quality="low",
    )
"""


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The emulator and a moto S3 server on loopback, both connections set as env vars."""
    with Emulator() as api, local_s3() as s3:
        s3.client().create_bucket(Bucket=BUCKET)
        for name, value in connection_env(api.connection_json(), s3).items():
            monkeypatch.setenv(name, value)
        yield api, s3


@pytest.fixture
def dags_folder(tmp_path: Path) -> Any:
    """A DAGs folder holding only the smoke DAG, set on the live configuration and restored after."""
    from airflow import settings
    from airflow.configuration import conf

    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / f"{DAG_ID}.py").write_text(textwrap.dedent(SMOKE_DAG))
    previous = conf.get("core", "dags_folder"), settings.DAGS_FOLDER
    conf.set("core", "dags_folder", str(folder))
    settings.DAGS_FOLDER = str(folder)
    try:
        yield folder
    finally:
        conf.set("core", "dags_folder", previous[0])
        settings.DAGS_FOLDER = previous[1]


def test_hook_generates_and_downloads(offline: Any) -> None:
    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

    api, _ = offline
    result = ImageGenHook(imagegen_conn_id="imagegen_default").generate_images(
        "a red bicycle, pencil sketch", n=2, quality="low"
    )
    assert len(result.image_urls) == 2
    assert result.shortfall == 0
    served = {image.index: image.sha256 for image in api.state.images}
    with ImageGenHook(imagegen_conn_id="imagegen_default").open_image(result.image_urls[1]) as image:
        body = b"".join(image.iter_bytes())
    assert body.startswith(PNG_MAGIC)
    assert hashlib.sha256(body).hexdigest() == served[1]


def test_operator_stores_verified_images(offline: Any, dags_folder: Path) -> None:
    from airflow.utils.db import upgradedb

    try:  # the checkout's tests/ is not importable here (the wheel is tested): no tests.support
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3.2+
    except ImportError:
        from airflow.models.dagbag import DagBag  # Airflow 3.1

    api, s3 = offline
    upgradedb()
    bag = DagBag(dag_folder=dags_folder / f"{DAG_ID}.py")
    assert not bag.import_errors, bag.import_errors
    dag_run = bag.dags[DAG_ID].test()
    assert dag_run.state == "success", {ti.task_id: ti.state for ti in dag_run.get_task_instances()}

    client = s3.client()
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"imagegen/{DAG_ID}/")
    keys = sorted(item["Key"] for item in listing.get("Contents", []))
    assert [key.rsplit("/", 1)[1] for key in keys] == ["00.png", "01.png", "manifest.json"], keys
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=keys[2])["Body"].read())
    assert manifest["status"] == "complete"
    assert manifest["prompt"] == f"a lighthouse at dawn for {DAG_ID}"
    served = {image.index: image.sha256 for image in api.state.images}
    for entry in manifest["images"]:
        body = client.get_object(Bucket=BUCKET, Key=entry["key"])["Body"].read()
        assert body.startswith(PNG_MAGIC)
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] == served[entry["index"]]
    assert len(api.state.generation_calls()) == 1


def test_airflow_lists_the_provider_and_its_connection_form() -> None:
    """On this Airflow, with only the wheel: ``airflow providers list``, and the form the UI builds."""
    import subprocess
    import sys

    listed = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    start = re.search(r"^\[\s*\{", listed.stdout, re.MULTILINE)  # after any log lines
    assert start, listed.stdout[-3000:]
    names = [provider["package_name"] for provider in json.loads(listed.stdout[start.start() :])]
    assert "airflow-provider-imagegen" in names

    # what GET /ui/connections/hook_meta answers (the Connections form), without a browser; in a
    # process of its own: the service re-initialises the providers manager with mocked form fields
    code = (
        "import json; from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService;"
        "(m,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == 'imagegen'];"
        "print('FORM ' + json.dumps({'extra': sorted(m.extra_fields or {}),"
        " 'password': m.standard_fields.password.title if m.standard_fields and m.standard_fields.password else None}))"
    )
    meta = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert meta.returncode == 0, meta.stderr[-3000:]
    (line,) = [line for line in meta.stdout.splitlines() if line.startswith("FORM ")]
    form = json.loads(line[5:])
    assert set(form["extra"]) >= {"endpoint", "timeout", "max_retries"}, form
    assert form["password"] == "API Key", form
