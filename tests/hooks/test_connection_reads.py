"""Triggers that start together share one connection read; nothing is cached after it.

The read goes through ``version_compat.aread_connection``: ``aget_connection`` from Airflow 3.3.2,
the sync ``get_connection`` in a worker thread before (both are counted here).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from airflow.sdk import BaseHook

from airflow_provider_imagegen.exceptions import ImageGenValidationError
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

KEY = "sk-shared-read-test-key"


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The connection ids read through the async API; each read takes 50 ms, like a supervisor round trip."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_IMAGEGEN_DEFAULT",
        json.dumps({"conn_type": "imagegen", "host": "https://api.reads.test", "password": KEY}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_IMAGEGEN_OTHER", json.dumps({"conn_type": "imagegen", "host": "https://other.test"})
    )
    seen: list[str] = []
    real_async = BaseHook.aget_connection.__func__  # type: ignore[attr-defined]
    real_sync = BaseHook.get_connection.__func__  # type: ignore[attr-defined]

    async def counted_async(cls: Any, conn_id: str) -> Any:
        seen.append(conn_id)
        await asyncio.sleep(0.05)
        return await real_async(cls, conn_id)

    def counted_sync(cls: Any, conn_id: str) -> Any:  # Airflow < 3.3.2 reads in a thread
        seen.append(conn_id)
        time.sleep(0.05)
        return real_sync(cls, conn_id)

    monkeypatch.setattr(BaseHook, "aget_connection", classmethod(counted_async))
    monkeypatch.setattr(BaseHook, "get_connection", classmethod(counted_sync))
    return seen


def test_hooks_asking_at_once_share_one_read(reads):
    async def main() -> list[Any]:
        return await asyncio.gather(*(ImageGenHook().asettings() for _ in range(50)))

    settings = asyncio.run(main())
    assert reads == ["imagegen_default"]
    assert {s.api_key for s in settings} == {KEY}


def test_a_hook_asking_after_the_read_reads_again(reads):
    async def main() -> None:
        await ImageGenHook().asettings()
        await ImageGenHook().asettings()

    asyncio.run(main())
    assert reads == ["imagegen_default", "imagegen_default"]


def test_each_connection_id_is_read_on_its_own(reads):
    async def main() -> list[Any]:
        return await asyncio.gather(
            ImageGenHook("imagegen_default").asettings(),
            ImageGenHook("imagegen_other").asettings(),
            return_exceptions=True,
        )

    default, other = asyncio.run(main())
    assert sorted(reads) == ["imagegen_default", "imagegen_other"]
    assert default.api_key == KEY
    assert isinstance(other, ImageGenValidationError)  # no password: each hook still validates its own


def test_a_cancelled_trigger_does_not_cancel_the_shared_read(reads):
    async def main() -> Any:
        first = asyncio.ensure_future(ImageGenHook().asettings())
        second = asyncio.ensure_future(ImageGenHook().asettings())
        await asyncio.sleep(0.01)
        first.cancel()
        settings = await second
        assert first.cancelled()
        return settings

    assert asyncio.run(main()).api_key == KEY
    assert reads == ["imagegen_default"]
