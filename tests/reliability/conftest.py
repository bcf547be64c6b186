"""Fixtures of the reliability tests: a task context, an operator factory, S3 helpers, fast retries."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

RUN_ID = "manual__2026-01-01T00:00:00+00:00"
PREFIX = "imagegen/imagegen_test/manual__2026-01-01T00-00-00-00-00/generate"


def make_context(
    *, run_id: str = RUN_ID, map_index: int = -1, try_number: int = 1, task_id: str = "generate"
) -> dict[str, Any]:
    """A minimal task context with the attributes of Airflow 3's RuntimeTaskInstance the operator uses."""
    ti = SimpleNamespace(
        dag_id="imagegen_test", task_id=task_id, run_id=run_id, map_index=map_index, try_number=try_number
    )
    return {"ti": ti, "task_instance": ti, "run_id": run_id, "outlet_events": {}}


@pytest.fixture(scope="session")
def s3(s3_server) -> Any:
    """One boto3 client of the moto server for the session."""
    return s3_server.client()


@pytest.fixture
def fast_retries(monkeypatch) -> None:
    """Backoff of 10 ms, but a server's Retry-After is still honoured (so that its row proves it)."""
    from airflow_provider_imagegen.exceptions import ImageGenRateLimitError
    from airflow_provider_imagegen.hooks import _client

    def wait(self, attempt: int, error: BaseException | None) -> float:
        if isinstance(error, ImageGenRateLimitError) and error.retry_after is not None:
            return error.retry_after
        return 0.01

    monkeypatch.setattr(_client.RetryPolicy, "wait", wait)


@pytest.fixture
def set_imagegen_conn(emulator, imagegen_conn, monkeypatch) -> Callable[..., None]:
    """Rewrite ``imagegen_default``: ``set_imagegen_conn(password=..., host=..., extra={...})``."""

    def apply(*, extra: dict[str, Any] | None = None, **fields: Any) -> None:
        conn = json.loads(emulator.connection_json())
        conn.update(fields)
        conn["extra"] = {**conn["extra"], **(extra or {})}
        monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))

    return apply


@pytest.fixture
def make_op(imagegen_conn, aws_conn, s3_bucket, s3) -> Callable[..., ImageGenToS3Operator]:
    """Build an operator against the emulator and the moto bucket (shared boto3 client by default)."""
    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

    def build(*, real_s3_client: bool = False, **kwargs: Any) -> ImageGenToS3Operator:
        kwargs.setdefault("task_id", "generate")
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


def read_json(s3: Any, bucket: str, key: str) -> Any:
    """A JSON document stored in S3."""
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def object_sha256(s3: Any, bucket: str, key: str) -> str:
    """sha256 of an object's bytes as S3 returns them."""
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def multipart_uploads(s3: Any, bucket: str) -> list[dict[str, Any]]:
    """Multipart uploads neither completed nor aborted."""
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def served_sha256s(emulator: Any) -> set[str]:
    """sha256 of every image the emulator served with HTTP 200 since the test started."""
    paths = {call.path for call in emulator.state.download_calls() if call.status == 200}
    return {sha for url, sha in emulator.state.sha256_by_url().items() if urlsplit(url).path in paths}


def generations(emulator: Any) -> int:
    """Generation calls (POSTs, whatever they were answered) since the test started."""
    return len(emulator.state.generation_calls())
