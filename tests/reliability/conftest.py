"""Fixtures of the reliability tests: fast retries that honour Retry-After, a connection rewriter."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable


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
