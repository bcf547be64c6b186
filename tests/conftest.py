"""Shared fixtures: an isolated Airflow home, the API emulator and a moto S3 server on loopback."""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Airflow reads its configuration at import time: isolate it before anything imports airflow.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="imagegen-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME}/airflow.db"
for _name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402

from airflow_provider_imagegen.emulator import Emulator  # noqa: E402
from airflow_provider_imagegen.testing import LocalS3, local_s3  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The temporary AIRFLOW_HOME of this test session."""
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def _emulator_server():
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def emulator(_emulator_server):
    """The session's emulator, with default knobs and empty records for each test."""
    from airflow_provider_imagegen.emulator import EmulatorConfig

    defaults = EmulatorConfig()
    _emulator_server.configure(**{k: getattr(defaults, k) for k in vars(defaults) if k != "api_key"})
    _emulator_server.reset()
    yield _emulator_server
    _emulator_server.reset()


@pytest.fixture
def imagegen_conn(emulator, monkeypatch) -> str:
    """``imagegen_default`` pointing at the emulator; returns the conn id."""
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", emulator.connection_json())
    return "imagegen_default"


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the whole session."""
    with local_s3() as s3:
        yield s3


@pytest.fixture
def aws_conn(s3_server: LocalS3, monkeypatch) -> str:
    """``aws_default`` pointing at the moto server; returns the conn id."""
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", s3_server.connection_json())
    for name, value in (
        ("AWS_ACCESS_KEY_ID", s3_server.access_key_id),
        ("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key),
        ("AWS_DEFAULT_REGION", s3_server.region_name),
    ):
        monkeypatch.setenv(name, value)
    return "aws_default"


@pytest.fixture
def s3_bucket(s3_server: LocalS3, aws_conn) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"imagegen-test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def s3(s3_server: LocalS3) -> Any:
    """A boto3 client of the moto server (one per session: building a client costs ~0.5 s)."""
    return s3_server.client()


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


@pytest.fixture
def fast_retries(monkeypatch) -> None:
    """Backoff of 10 ms, but a server's Retry-After is still honoured (so that its fault row proves it)."""
    from airflow_provider_imagegen.exceptions import ImageGenRateLimitError
    from airflow_provider_imagegen.hooks import _client

    def wait(self, attempt: int, error: BaseException | None) -> float:
        if isinstance(error, ImageGenRateLimitError) and error.retry_after is not None:
            return error.retry_after
        return 0.01

    monkeypatch.setattr(_client.RetryPolicy, "wait", wait)


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
