"""Fixtures of the operator tests: a fast hook and the task's log (helpers are in ``tests.support``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.support import make_context

if TYPE_CHECKING:
    pass


@pytest.fixture
def context() -> dict[str, Any]:
    """A default task context (unmapped, first try)."""
    return make_context()
