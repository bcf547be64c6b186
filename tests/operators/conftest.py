"""Fixtures of the operator tests: a task context without a DAG run, S3 helpers, a fast hook."""

from __future__ import annotations

import hashlib
import json
import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

RUN_ID = "manual__2026-01-01T00:00:00+00:00"


class RecordingOutletEvents:
    """Stands in for ``context["outlet_events"]``: records every ``add`` per outlet."""

    def __init__(self) -> None:
        self.added: list[tuple[Any, Any, dict[str, Any] | None]] = []

    def __getitem__(self, outlet: Any) -> Any:
        events = self

        class _Accessor:
            def add(self, asset: Any, extra: dict[str, Any] | None = None) -> None:
                events.added.append((outlet, asset, extra))

        return _Accessor()


def make_context(
    *,
    dag_id: str = "imagegen_test",
    task_id: str = "generate",
    run_id: str = RUN_ID,
    map_index: int = -1,
    try_number: int = 1,
    outlet_events: Any = None,
) -> dict[str, Any]:
    """A minimal task context with the attributes of Airflow 3's RuntimeTaskInstance we use."""
    ti = SimpleNamespace(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index, try_number=try_number)
    return {
        "ti": ti,
        "task_instance": ti,
        "run_id": run_id,
        "outlet_events": outlet_events if outlet_events is not None else RecordingOutletEvents(),
    }


@pytest.fixture
def context() -> dict[str, Any]:
    """A default task context (unmapped, first try)."""
    return make_context()


@pytest.fixture(scope="session")
def s3(s3_server) -> Any:
    """A boto3 client of the moto server (one per session: building a client costs ~0.5 s)."""
    return s3_server.client()


@pytest.fixture
def fast_retries(monkeypatch) -> None:
    """Make the hook's backoff tiny so that exhausted retries take milliseconds, not seconds."""
    from airflow_provider_imagegen.hooks import _client

    monkeypatch.setattr(_client.RetryPolicy, "wait", lambda self, attempt, error: 0.01)


@pytest.fixture
def make_op(imagegen_conn, aws_conn, s3_bucket, s3) -> Callable[..., ImageGenToS3Operator]:
    """Build an operator against the emulator and the moto bucket: ``make_op(prompt=..., n=...)``.

    By default the operator's boto3 client is the session's shared one (the same moto server and
    credentials as ``aws_default``), which saves ~0.5 s per operator; ``real_s3_client=True``
    keeps the whole path through the AWS connection and the amazon provider's ``S3Hook``.
    """
    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

    def build(*, real_s3_client: bool = False, **kwargs: Any) -> ImageGenToS3Operator:
        kwargs.setdefault("task_id", "generate")
        if "prompts" not in kwargs:
            kwargs.setdefault("prompt", "a lighthouse at dawn, watercolour")
        kwargs.setdefault("s3_bucket", s3_bucket)
        kwargs.setdefault("imagegen_conn_id", imagegen_conn)
        kwargs.setdefault("aws_conn_id", aws_conn)
        op = ImageGenToS3Operator(**kwargs)
        if not real_s3_client:
            op.__dict__["s3_client"] = s3
        return op

    return build


def list_keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key in the bucket under ``prefix``, sorted."""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(keys)


def read_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """A JSON object stored in S3."""
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def object_sha256(s3: Any, bucket: str, key: str) -> str:
    """sha256 of an object's bytes as S3 returns them."""
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def multipart_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    """Multipart uploads started and neither completed nor aborted."""
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def served_sha256s(emulator: Any) -> set[str]:
    """sha256 of every image the emulator served (HTTP 200) since the test started."""
    from urllib.parse import urlsplit

    paths = {call.path for call in emulator.state.download_calls() if call.status == 200}
    return {sha for url, sha in emulator.state.sha256_by_url().items() if urlsplit(url).path in paths}


@pytest.fixture
def task_logs(caplog, capsys) -> Callable[[], str]:
    """Everything logged during the test: stdlib records and what Airflow's structlog printed."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    def text() -> str:
        captured = capsys.readouterr()
        seen.extend((captured.out, captured.err))
        return caplog.text + "".join(seen)

    return text
