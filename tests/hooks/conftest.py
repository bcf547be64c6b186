"""Fixtures of the hook tests: the connection to the fake API, recorded backoff sleeps, a hook on the emulator."""

from __future__ import annotations

import pytest
import tenacity

from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

from ._fakes import FAST, connection_json


@pytest.fixture
def conn(monkeypatch):
    """Point ``imagegen_default`` at the fake API; call it again with extras to change the connection."""

    def set_connection(**extra):
        monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", connection_json(**extra))
        return "imagegen_default"

    set_connection()
    return set_connection


@pytest.fixture
def sleeps(monkeypatch):
    """Record tenacity's (sync) sleeps instead of sleeping."""
    recorded: list[float] = []

    class _Time:
        @staticmethod
        def sleep(seconds: float) -> None:
            recorded.append(seconds)

    monkeypatch.setattr(tenacity.nap, "time", _Time)
    return recorded


@pytest.fixture
def hook(imagegen_conn) -> ImageGenHook:
    """A hook on the emulator's connection, with fast backoff (a server's Retry-After is still honoured)."""
    hook = ImageGenHook(imagegen_conn, retry_policy=FAST)
    yield hook
    hook.close()
