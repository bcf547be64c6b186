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
def task_logs(caplog, capsys) -> Callable[[], str]:
    """Everything logged during the test: stdlib records and what Airflow's structlog printed."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    def text() -> str:
        captured = capsys.readouterr()
        seen.extend((captured.out, captured.err))
        return caplog.text + "".join(seen)

    return text
