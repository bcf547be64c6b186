"""Fixtures of the operator tests: a fast hook and the task's log (helpers are in ``tests.support``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytest

from tests.support import make_context

if TYPE_CHECKING:
    from collections.abc import Callable


@pytest.fixture
def context() -> dict[str, Any]:
    """A default task context (unmapped, first try)."""
    return make_context()


@pytest.fixture
def fast_retries(monkeypatch) -> None:
    """Make the hook's backoff tiny so that exhausted retries take milliseconds, not seconds."""
    from airflow_provider_imagegen.hooks import _client

    monkeypatch.setattr(_client.RetryPolicy, "wait", lambda self, attempt, error: 0.01)


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
