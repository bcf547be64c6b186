"""The one place that branches on the Airflow version: each branch taken on the Airflow installed.

``make test`` runs this on the newest Airflow and ``make test-min`` on the floor (3.1.2), so each
side of every branch runs in CI. The private import behind the metrics facade fails here first.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import airflow
import pytest
from airflow.sdk import BaseHook
from packaging.version import Version

from airflow_provider_imagegen import version_compat
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

KEY = "sk-version-compat-key"
INSTALLED = Version(airflow.__version__).release[:3]


def test_flags_follow_the_installed_airflow():
    assert version_compat.AIRFLOW_V_3_2_PLUS is (INSTALLED >= (3, 2, 0))
    assert version_compat.AIRFLOW_V_3_3_PLUS is (INSTALLED >= (3, 3, 0))
    assert version_compat.AIRFLOW_V_3_3_2_PLUS is (INSTALLED >= (3, 3, 2))
    assert INSTALLED >= (3, 1, 2), "below the floor in pyproject.toml"


def test_conf_is_the_configuration_tasks_read():
    assert version_compat.conf.get("core", "dags_folder")
    if version_compat.AIRFLOW_V_3_2_PLUS:
        from airflow.sdk import conf
    else:
        from airflow.configuration import conf
    assert version_compat.conf is conf


def test_plugin_base_is_the_one_the_plugins_manager_loads():
    if version_compat.AIRFLOW_V_3_2_PLUS:
        from airflow.sdk.plugins_manager import AirflowPlugin
    else:
        from airflow.plugins_manager import AirflowPlugin
    from airflow_provider_imagegen.plugins.images import ImageGenPlugin

    assert version_compat.AirflowPlugin is AirflowPlugin
    assert issubclass(ImageGenPlugin, AirflowPlugin)


def test_stats_facade_imports_and_counts():
    """The private path behind it: this fails when a task SDK release moves it."""
    stats = version_compat.stats_facade()
    stats.incr("imagegen.version_compat_test", count=1, tags=None)
    stats.timing("imagegen.version_compat_test", 1.0, tags=None)


@pytest.fixture
def connection(monkeypatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_IMAGEGEN_DEFAULT",
        json.dumps(
            {
                "conn_type": "imagegen",
                "host": "https://api.compat.test",
                "password": KEY,
                "extra": {"timeout": 42, "api_token": "extra-secret"},
            }
        ),
    )


def test_trigger_connection_read_never_blocks_the_event_loop(connection, monkeypatch):
    """Before 3.3.2 the masking lookups are synchronous: they must run off the loop's thread."""
    calls: list[tuple[str, bool]] = []
    on_loop: list[bool] = []
    real_sync = BaseHook.get_connection.__func__  # type: ignore[attr-defined]
    real_async = BaseHook.aget_connection.__func__  # type: ignore[attr-defined]

    def sync_read(cls: Any, conn_id: str) -> Any:
        from asgiref.sync import SyncToAsync

        calls.append(("get_connection", threading.current_thread() is loop_thread))
        # the supervisor call it makes must find its way back to the loop: only asgiref's thread
        # knows the loop (from a plain thread, 3.1's triggerer reads replies out of order and dies)
        on_loop.append(getattr(SyncToAsync.threadlocal, "main_event_loop", None) is not None)
        return real_sync(cls, conn_id)

    async def async_read(cls: Any, conn_id: str) -> Any:
        calls.append(("aget_connection", threading.current_thread() is loop_thread))
        return await real_async(cls, conn_id)

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(sync_read))
    monkeypatch.setattr(BaseHook, "aget_connection", classmethod(async_read))
    loop_thread = threading.current_thread()  # asyncio.run runs the loop in this thread

    settings = asyncio.run(ImageGenHook().asettings())

    assert settings.api_key == KEY
    assert settings.timeout == 42
    if version_compat.AIRFLOW_V_3_3_2_PLUS:
        assert calls == [("aget_connection", True)]
    else:
        assert calls == [("get_connection", False)], "the sync read ran in the event loop's thread"
        assert on_loop == [True], "the sync read ran in a thread that does not know the event loop"


def test_extra_is_read_off_the_loop_before_3_3_2(connection, monkeypatch):
    """``extra_dejson`` masks synchronously before 3.3.2: it is touched in the reading thread only."""
    from airflow.models.connection import Connection as CoreConnection
    from airflow.sdk import Connection

    touched: list[bool] = []

    def spy_on(cls: type) -> None:
        real = cls.extra_dejson

        def spy(self: Any) -> Any:
            touched.append(threading.current_thread() is loop_thread)
            return real.fget(self)  # type: ignore[attr-defined]

        monkeypatch.setattr(cls, "extra_dejson", property(spy))

    # outside a task, Airflow 3.1's lookup answers with the core model; the triggerer with the SDK's
    for cls in {Connection, CoreConnection}:
        spy_on(cls)
    loop_thread = threading.current_thread()
    asyncio.run(ImageGenHook().asettings())
    if version_compat.AIRFLOW_V_3_3_2_PLUS:
        assert touched == []  # aextra_dejson instead
    else:
        assert touched, "the extra was never read"
        assert not any(touched), "the extra was read in the event loop's thread"


def test_alias_event_extra_is_storable_by_this_airflow():
    """3.1 groups alias events by ``frozenset(extra.items())``: what we send must survive that."""
    extra = {"bucket": "b", "prefix": "p", "image_count": 2, "images": [{"key": "k"}], "manifests": ["m"]}
    sent = version_compat.alias_event_extra(extra)
    if version_compat.AIRFLOW_V_3_2_PLUS:
        assert sent == extra
    else:
        frozenset(sent.items())  # raises TypeError if a value is unhashable
        assert sent == {"bucket": "b", "prefix": "p", "image_count": 2, "truncated": True}


def test_set_during_execution_is_the_task_sdks_marker():
    """The private path behind it: this fails when a task SDK release moves it."""
    from airflow.sdk.definitions._internal.types import SetDuringExecution

    marker = version_compat.set_during_execution()
    assert isinstance(marker, SetDuringExecution)
    assert marker is version_compat.set_during_execution()


def test_template_env_renders_as_a_dags_default_environment(tmp_path):
    """The start trigger's environment (3.3+ only: older versions never start tasks in the triggerer)."""
    import jinja2
    import jinja2.sandbox
    import pendulum

    from airflow_provider_imagegen.version_compat import template_env

    if not version_compat.AIRFLOW_V_3_3_PLUS:
        from airflow_provider_imagegen.triggerer_start import refusal

        assert "starts tasks on workers only" in (refusal(object()) or "")
        return
    (tmp_path / "p.j2").write_text("day {{ ds }}")
    env = template_env([str(tmp_path)])

    assert env.get_template("p.j2").render(ds="2026-12-05") == "day 2026-12-05"
    assert env.from_string("{{ d | ds }}").render(d=pendulum.datetime(2026, 12, 5)) == "2026-12-05"
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ nothing_here }}").render()
    assert isinstance(env, jinja2.sandbox.SandboxedEnvironment)
