"""ImageGenTrigger: serialisation, a real run against the emulator, errors, bounds, the event loop, cancellation."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import time
from typing import Any

import httpx
import pytest

from airflow_provider_imagegen.exceptions import (
    ImageGenAuthenticationError,
    ImageGenContentPolicyError,
    ImageGenError,
    ImageGenServerError,
    ImageGenValidationError,
    error_from_event,
    event_from_error,
)
from airflow_provider_imagegen.models import ImageGenerationRequest
from airflow_provider_imagegen.triggers.imagegen import ImageGenTrigger

CLASSPATH = "airflow_provider_imagegen.triggers.imagegen.ImageGenTrigger"


def _bodies(*prompts: str, **params: Any) -> dict[int, dict[str, Any]]:
    return {i: ImageGenerationRequest.build(prompt, **params).to_json() for i, prompt in enumerate(prompts)}


async def _collect(trigger: ImageGenTrigger) -> list[Any]:
    return [event async for event in trigger.run()]


def _run(trigger: ImageGenTrigger) -> dict[str, Any]:
    """Drive run() to the end; exactly one event must come out. Returns its payload."""
    events = asyncio.run(_collect(trigger))
    assert len(events) == 1
    payload = events[0].payload
    json.dumps(payload)  # the event must stay plain JSON
    return payload


def _set_conn(monkeypatch, emulator, conn_id: str = "imagegen_default", **changes: Any) -> str:
    """An ``imagegen`` connection pointing at the emulator, with some fields changed."""
    conn = json.loads(emulator.connection_json())
    extra = {**(conn.get("extra") or {}), **changes.pop("extra", {})}
    conn.update(changes, extra=extra)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    return conn_id


# -- serialisation -------------------------------------------------------------------------------


def import_string(classpath: str) -> Any:
    """What the triggerer does with a class path."""
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_serialize_round_trip_holds_only_conn_id_bodies_and_concurrency():
    trigger = ImageGenTrigger("my_conn", _bodies("a red fox", "a blue whale", n=2), max_concurrency=5)
    classpath, kwargs = trigger.serialize()

    assert classpath == CLASSPATH
    assert import_string(classpath) is ImageGenTrigger
    assert set(kwargs) == {"imagegen_conn_id", "requests", "max_concurrency"}
    assert kwargs["imagegen_conn_id"] == "my_conn"
    assert kwargs["max_concurrency"] == 5
    # JSON object keys are strings: the prompt indexes are serialised as "0", "1"
    assert kwargs["requests"] == {
        "0": ImageGenerationRequest.build("a red fox", n=2).to_json(),
        "1": ImageGenerationRequest.build("a blue whale", n=2).to_json(),
    }
    assert json.loads(json.dumps(kwargs)) == kwargs

    rebuilt = import_string(classpath)(**json.loads(json.dumps(kwargs)))
    assert rebuilt.serialize() == (classpath, kwargs)


def test_serialize_survives_airflow_trigger_serialisation():
    """What the scheduler stores in the trigger table must come back as equal kwargs."""
    from airflow.serialization.serialized_objects import BaseSerialization

    classpath, kwargs = ImageGenTrigger("imagegen_default", _bodies("x", "y"), max_concurrency=2).serialize()
    encoded = json.loads(json.dumps(BaseSerialization.serialize(kwargs)))
    assert BaseSerialization.deserialize(encoded) == kwargs
    assert ImageGenTrigger(**BaseSerialization.deserialize(encoded)).serialize() == (classpath, kwargs)


def test_serialized_kwargs_never_hold_the_api_key(emulator, imagegen_conn):
    key = json.loads(emulator.connection_json())["password"]
    trigger = ImageGenTrigger(imagegen_conn, _bodies("a lighthouse"))
    payload = _run(trigger)  # the key has been read and used by now
    assert payload["results"]["0"]["status"] == "success"
    _, kwargs = trigger.serialize()
    assert key not in json.dumps(kwargs)
    assert key not in repr(trigger)
    assert not any(key in repr(value) for value in vars(trigger).values())


# -- run() against the emulator ------------------------------------------------------------------


def test_run_yields_one_event_with_per_prompt_results_in_order(emulator, imagegen_conn):
    prompts = ["a red fox at dawn", "a blue whale", "a green tea field"]
    payload = _run(ImageGenTrigger(imagegen_conn, _bodies(*prompts, n=2), max_concurrency=2))

    assert set(payload) == {"results"}
    results = payload["results"]
    assert list(results) == ["0", "1", "2"]
    for index, prompt in enumerate(prompts):
        outcome = results[str(index)]
        assert outcome["status"] == "success"
        assert set(outcome) == {"status", "generated_at", "image_urls", "elapsed", "attempts", "request_id"}
        assert outcome["attempts"] == 1
        assert isinstance(outcome["elapsed"], float)
        assert len(outcome["image_urls"]) == 2
        for url in outcome["image_urls"]:
            stored = emulator.state.image_for_url(url)
            assert stored is not None
            assert stored.prompt == prompt  # each prompt's URLs under its own index
    bodies = sorted(call.body["prompt"] for call in emulator.state.generation_calls())
    assert bodies == sorted(prompts)


def test_connection_is_read_with_the_async_api_once(emulator, imagegen_conn, monkeypatch):
    """In a triggerer the sync lookup can raise or deadlock in the event loop: it never runs there.

    From Airflow 3.3.2 the trigger reads with ``aget_connection``; before, ``aget_connection`` masks
    synchronously, so the sync lookup runs in a worker thread instead (``version_compat``).
    """
    import threading

    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
    from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_3_2_PLUS

    loop_thread = threading.current_thread()
    sync_original = ImageGenHook.get_connection.__func__  # type: ignore[attr-defined]
    sync_lookups: list[str] = []

    def sync_lookup(cls, conn_id):
        if threading.current_thread() is loop_thread:
            raise RuntimeError("sync connection lookup inside the event loop")
        sync_lookups.append(conn_id)
        return sync_original(cls, conn_id)

    async_lookups: list[str] = []
    original = ImageGenHook.aget_connection.__func__  # type: ignore[attr-defined]

    async def counting_aget_connection(cls, conn_id):
        async_lookups.append(conn_id)
        return await original(cls, conn_id)

    monkeypatch.setattr(ImageGenHook, "get_connection", classmethod(sync_lookup))
    monkeypatch.setattr(ImageGenHook, "aget_connection", classmethod(counting_aget_connection))

    payload = _run(ImageGenTrigger(imagegen_conn, _bodies("one", "two", "three"), max_concurrency=3))

    assert [o["status"] for o in payload["results"].values()] == ["success"] * 3
    # read once per run, not once per prompt
    if AIRFLOW_V_3_3_2_PLUS:
        assert (async_lookups, sync_lookups) == ([imagegen_conn], [])
    else:
        assert (async_lookups, sync_lookups) == ([], [imagegen_conn])


# -- errors keep their class ---------------------------------------------------------------------


def test_wrong_key_is_a_permanent_authentication_error(emulator, monkeypatch):
    conn_id = _set_conn(monkeypatch, emulator, "imagegen_wrong_key", password="not-the-key-0123456789")
    payload = _run(ImageGenTrigger(conn_id, _bodies("a", "b")))

    for outcome in payload["results"].values():
        assert outcome["status"] == "error"
        assert outcome["error_class"] == "ImageGenAuthenticationError"
        assert outcome["permanent"] is True
        assert outcome["status_code"] == 401
        assert "not-the-key-0123456789" not in json.dumps(outcome)
        error = error_from_event(outcome)
        assert type(error) is ImageGenAuthenticationError
        assert error.permanent is True
        assert error.status_code == 401
        assert str(error) == outcome["message"]
    # never retried
    assert len(emulator.state.generation_calls()) == 2


def test_content_policy_rejection_fails_only_its_prompt_and_stays_permanent(emulator, imagegen_conn):
    payload = _run(ImageGenTrigger(imagegen_conn, _bodies("a calm lake", "something forbidden here")))

    ok, refused = payload["results"]["0"], payload["results"]["1"]
    assert ok["status"] == "success"
    assert refused["status"] == "error"
    assert refused["error_class"] == "ImageGenContentPolicyError"
    assert refused["permanent"] is True
    error = error_from_event(refused)
    assert isinstance(error, ImageGenContentPolicyError)
    assert error.permanent is True
    assert len([c for c in emulator.state.generation_calls() if "forbidden" in c.body["prompt"]]) == 1


def test_retryable_error_stays_retryable(emulator, monkeypatch):
    conn_id = _set_conn(monkeypatch, emulator, "imagegen_no_retries", extra={"max_retries": 0})
    emulator.configure(server_errors=1)
    payload = _run(ImageGenTrigger(conn_id, _bodies("a")))

    outcome = payload["results"]["0"]
    assert outcome["error_class"] == "ImageGenServerError"
    assert outcome["permanent"] is False
    error = error_from_event(outcome)
    assert type(error) is ImageGenServerError
    assert error.permanent is False
    assert error.retryable is True


def test_invalid_body_is_rejected_before_any_call(emulator, imagegen_conn):
    body = ImageGenerationRequest.build("ok").to_json()
    payload = _run(ImageGenTrigger(imagegen_conn, {0: body, 1: {**body, "n": 11}}))

    assert payload["results"]["0"]["status"] == "success"
    bad = payload["results"]["1"]
    assert bad["error_class"] == "ImageGenValidationError"
    assert bad["permanent"] is True
    assert isinstance(error_from_event(bad), ImageGenValidationError)
    assert len(emulator.state.generation_calls()) == 1


def test_missing_connection_fails_every_prompt_without_crashing_the_trigger(emulator):
    payload = _run(ImageGenTrigger("imagegen_does_not_exist", _bodies("a", "b")))

    for outcome in payload["results"].values():
        assert outcome["status"] == "error"
        assert outcome["error_class"] == "ImageGenError"
        assert outcome["permanent"] is False
        assert "imagegen_does_not_exist" in outcome["message"]
    assert emulator.state.generation_calls() == []


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (ImageGenAuthenticationError("refused", status_code=403, request_id="req-1"), True),
        (ImageGenContentPolicyError("refused", status_code=400, code="content_policy_violation"), True),
        (ImageGenValidationError("n", 11, "an integer from 1 to 10"), True),
        (ImageGenServerError("boom", status_code=503), False),
        (ImageGenError("plain"), False),
    ],
)
def test_event_round_trip_keeps_class_message_and_permanence(error, permanent):
    entry = json.loads(json.dumps(event_from_error(error)))
    rebuilt = error_from_event(entry)
    assert type(rebuilt) is type(error)
    assert rebuilt.permanent is permanent
    assert str(rebuilt) == str(error)
    for name in ("status_code", "request_id", "code"):
        if name in vars(error) and vars(error)[name] is not None:
            assert getattr(rebuilt, name) == vars(error)[name]


def test_unknown_error_class_falls_back_to_the_base_class():
    rebuilt = error_from_event({"status": "error", "error_class": "os.system", "message": "m", "permanent": True})
    assert type(rebuilt) is ImageGenError
    assert rebuilt.permanent is True


# -- concurrency and the event loop --------------------------------------------------------------


def test_concurrency_is_bounded(emulator, imagegen_conn):
    emulator.configure(latency=0.3)
    prompts = [f"prompt number {i}" for i in range(8)]
    payload = _run(ImageGenTrigger(imagegen_conn, _bodies(*prompts), max_concurrency=3))

    assert emulator.state.max_in_flight_generations == 3
    assert len(emulator.state.generation_calls()) == 8
    results = payload["results"]
    assert list(results) == [str(i) for i in range(8)]
    for i, prompt in enumerate(prompts):
        (url,) = results[str(i)]["image_urls"]
        assert emulator.state.image_for_url(url).prompt == prompt


def test_the_event_loop_is_never_blocked(emulator, imagegen_conn):
    """A ticker in the same loop keeps ticking while the trigger waits for a slow API."""
    emulator.configure(latency=1.0)
    trigger = ImageGenTrigger(imagegen_conn, _bodies("slow one", "slow two", "slow three"), max_concurrency=3)

    async def main() -> tuple[list[Any], list[float]]:
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        try:
            events = await _collect(trigger)
        finally:
            stop.set()
            await ticking
        ticks.append(time.monotonic())
        return events, ticks

    events, ticks = asyncio.run(main())
    assert [o["status"] for o in events[0].payload["results"].values()] == ["success"] * 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert ticks[-1] - ticks[0] >= 1.0  # the ticker really ran across the whole wait
    assert max(gaps) < 0.5, f"the event loop was blocked for {max(gaps):.2f} s"


def test_no_tls_context_is_built_per_request(emulator, imagegen_conn, monkeypatch):
    """Loading the CA bundle takes tens of ms of blocking CPU: once per process, never per request."""
    import ssl

    loads: list[object] = []
    original = ssl.SSLContext.load_verify_locations

    def counting(self, *args, **kwargs):
        loads.append(args or kwargs)
        return original(self, *args, **kwargs)

    _run(ImageGenTrigger(imagegen_conn, _bodies("warm")))  # the process-wide context exists now
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    payload = _run(ImageGenTrigger(imagegen_conn, _bodies("a", "b", "c", "d"), max_concurrency=4))

    assert [o["status"] for o in payload["results"].values()] == ["success"] * 4
    assert loads == []


class _RecordingClient(httpx.AsyncClient):
    instances: list[_RecordingClient] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _RecordingClient.instances.append(self)


def _wait_for(condition, what: str, timeout: float = 20.0) -> None:
    """Poll a condition (not a fixed sleep), failing clearly if it never holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_cancellation_mid_request_cleans_up(emulator, imagegen_conn, monkeypatch):
    _RecordingClient.instances = []
    monkeypatch.setattr(httpx, "AsyncClient", _RecordingClient)
    emulator.configure(latency=1.5)
    trigger = ImageGenTrigger(imagegen_conn, _bodies("a", "b", "c"), max_concurrency=2)

    async def main() -> tuple[list[dict[str, Any]], int]:
        loop_errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: loop_errors.append(context))
        task = asyncio.create_task(_collect(trigger))
        deadline = time.monotonic() + 20
        while emulator.state.in_flight_generations < 2:  # both slots are waiting on the API
            assert not task.done(), task
            assert time.monotonic() < deadline, "the requests never reached the emulator"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        still_waiting_server_side = emulator.state.in_flight_generations
        await asyncio.sleep(0)  # let any stray callback run and report
        return loop_errors, still_waiting_server_side

    try:
        loop_errors, still_waiting_server_side = asyncio.run(main())
    finally:
        # the emulator finishes its sleeps anyway: let them drain so no other test sees them
        _wait_for(lambda: emulator.state.in_flight_generations == 0, "the cancelled requests to drain")

    assert still_waiting_server_side == 2  # cancelled mid-request, not waited out
    assert loop_errors == []
    assert len(_RecordingClient.instances) == 1  # one pooled client per trigger run
    assert all(client.is_closed for client in _RecordingClient.instances)
    assert len(emulator.state.generation_calls()) == 2  # the third prompt was never sent


def test_client_and_pool_are_closed_after_a_normal_run(emulator, imagegen_conn, monkeypatch):
    _RecordingClient.instances = []
    monkeypatch.setattr(httpx, "AsyncClient", _RecordingClient)
    payload = _run(ImageGenTrigger(imagegen_conn, _bodies("a", "b")))

    assert [o["status"] for o in payload["results"].values()] == ["success", "success"]
    assert _RecordingClient.instances
    assert len(_RecordingClient.instances) == 1  # one pool for every prompt of the run
    assert all(client.is_closed for client in _RecordingClient.instances)


# -- Airflow 3.3's BaseTrigger -------------------------------------------------------------------


def test_is_a_complete_base_trigger():
    from airflow.triggers.base import BaseTrigger

    trigger = ImageGenTrigger("c", _bodies("a"))
    assert isinstance(trigger, BaseTrigger)
    assert not getattr(ImageGenTrigger, "__abstractmethods__", None)
    from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_2_PLUS

    if AIRFLOW_V_3_2_PLUS:  # trigger queues came with Airflow 3.2
        assert trigger.supports_triggerer_queue is True
    assert getattr(trigger, "template_fields", ()) == ()  # nothing is rendered in the triggerer (3.3+)
    assert CLASSPATH in repr(trigger)
