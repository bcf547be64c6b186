"""Fixtures of the reliability tests: a connection rewriter (``fast_retries`` is in tests/conftest.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable


@pytest.fixture
def set_imagegen_conn(emulator, imagegen_conn, monkeypatch) -> Callable[..., None]:
    """Rewrite ``imagegen_default``: ``set_imagegen_conn(password=..., host=..., extra={...})``."""

    def apply(*, extra: dict[str, Any] | None = None, **fields: Any) -> None:
        conn = json.loads(emulator.connection_json())
        conn.update(fields)
        conn["extra"] = {**conn["extra"], **(extra or {})}
        monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))

    return apply
