"""Helpers of the end-to-end tests: parse a DAG of ``dags/``, read task states, XComs and S3 objects."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
LOGICAL_DATE = datetime(2026, 3, 14, tzinfo=timezone.utc)
"""The logical date (and run_after) of the test runs: run id ``manual__2026-03-14T00:00:00+00:00``."""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_dag(dag_id: str) -> Any:
    """Parse ``dags/{dag_id}.py`` afresh (so environment-dependent defaults are read now)."""
    from tests.support import dagbag_class

    DagBag = dagbag_class()

    bag = DagBag(dag_folder=DAGS_FOLDER / f"{dag_id}.py")
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def task_states(dag_run: Any) -> dict[str, str]:
    """``task_id[map_index]`` → state, for assertion messages."""
    return {
        f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state)
        for ti in dag_run.get_task_instances()
    }


def xcom_values(dag_run: Any, task_id: str) -> dict[int, Any]:
    """map_index → ``return_value`` of ``task_id`` in ``dag_run`` (-1 for an unmapped task)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    query = XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=task_id, key="return_value")
    with create_session() as session:
        return {row.map_index: XComModel.deserialize_value(row) for row in session.scalars(query)}


def read_object(s3_server: Any, bucket: str, key: str) -> bytes:
    """The bytes of one S3 object on the moto server."""
    return s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def verify_images(s3_server: Any, emulator: Any, images: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Read every image back from S3 and check it byte for byte; return the manifests by prefix.

    Each object's sha256 must equal the XCom's, its manifest's, and that of the bytes the emulator
    served for the same prompt and image index.
    """
    from tests.support import read_json

    served = {(image.prompt, image.index): image.sha256 for image in emulator.state.images}
    manifests: dict[str, dict[str, Any]] = {}
    s3 = s3_server.client()
    for image in images:
        prefix = image["key"].rsplit("/", 1)[0]
        if prefix not in manifests:
            manifests[prefix] = read_json(s3, image["bucket"], f"{prefix}/manifest.json")
        manifest = manifests[prefix]
        body = read_object(s3_server, image["bucket"], image["key"])
        digest = hashlib.sha256(body).hexdigest()
        assert image["s3_uri"] == f"s3://{image['bucket']}/{image['key']}"
        assert (digest, len(body)) == (image["sha256"], image["size_bytes"]), image["key"]
        assert served[(manifest["prompt"], image["index"])] == digest, f"{image['key']} is not what was served"
        recorded = {entry["key"]: entry for entry in manifest["images"]}[image["key"]]
        assert (recorded["sha256"], recorded["size_bytes"]) == (digest, len(body))
        assert body.startswith(PNG_MAGIC)
        assert image["content_type"] == "image/png"
    return manifests
