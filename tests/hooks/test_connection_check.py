"""``test_connection``, the UI's *Test* button: one request that can never generate, or bill, an image."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
from tests.support import recorded_calls, statuses

from ._fakes import (
    BASE_URL,
    GENERATION_URL,
    KEY,
    FakeAPI,
    make_hook,
    ok,
    status,
)

# -- the scripted fake API (httpx.MockTransport, respx), no sockets --------------------------------


@pytest.mark.parametrize(
    ("answer", "expected", "words"),
    [
        (status(400), True, ["accepted", "no image"]),
        (status(422), True, ["accepted"]),
        (status(400, "n must be between 1 and 10"), True, ["accepted"]),
        (status(401), False, ["API key"]),
        (status(403), False, ["API key"]),
        (status(404), False, ["Base URL"]),
        (status(500), False, ["failed"]),
        (status(429, retry_after="1"), False, ["Rate limited"]),
        (ok(), False, ["accepted an invalid request"]),
        (httpx.ConnectError("connection refused"), False, ["Could not talk", "connection refused"]),
        (httpx.ConnectTimeout("timed out"), False, ["Timed out"]),
    ],
)
def test_test_connection(conn, answer, expected, words):
    api = FakeAPI(answer)
    result = make_hook(api).test_connection()
    assert isinstance(result, tuple)
    assert result[0] is expected
    for word in words:
        assert word in result[1]
    assert KEY not in result[1]
    (request,) = api.requests  # one call, never retried
    body = json.loads(request.content)
    assert body["n"] == 0  # can never generate (and so never bill) an image
    assert body["prompt"] == ""
    assert request.headers["authorization"] == f"Bearer {KEY}"


def test_test_connection_with_a_bad_connection_reports_it(conn):
    conn(max_retries="lots")
    api = FakeAPI(status(400))
    ok_, message = make_hook(api).test_connection()
    assert ok_ is False
    assert "max_retries" in message
    assert api.requests == []


def test_test_connection_hook_built_the_way_airflow_builds_it(conn):
    hook = ImageGenHook(**{ImageGenHook.conn_name_attr: "imagegen_default"})
    assert hook.imagegen_conn_id == "imagegen_default"
    assert ImageGenHook.conn_type == "imagegen"
    assert ImageGenHook.default_conn_name == "imagegen_default"


@pytest.mark.filterwarnings("ignore:ProvidersManager.hooks is deprecated")
@pytest.mark.parametrize(
    ("host", "answer", "expected"),
    [
        (BASE_URL, 400, True),
        (BASE_URL + "/", 401, False),
        ("api.example.test", 404, False),
    ],
)
def test_test_connection_the_way_the_api_server_runs_it(monkeypatch, host, answer, expected):
    """The UI's "Test" button: a transient ``AIRFLOW_CONN_*`` in URI form, then ``Connection.test_connection()``."""
    from airflow.models.connection import Connection

    conn = Connection(
        conn_id="transient_abc123",
        conn_type="imagegen",
        host=host,
        password="sk-ui/test+key",
        extra=json.dumps({"endpoint": "/v3/gpt-image-2-text-to-image", "timeout": 30, "max_retries": 3}),
    )
    monkeypatch.setenv("AIRFLOW_CONN_TRANSIENT_ABC123", conn.get_uri())
    with respx.mock(assert_all_called=True) as router:
        route = router.post(GENERATION_URL).mock(return_value=httpx.Response(answer, json={"error": {"message": "x"}}))
        status_ok, message = conn.test_connection()
    assert status_ok is expected, message
    assert route.call_count == 1
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-ui/test+key"
    assert json.loads(route.calls.last.request.content)["n"] == 0


# -- the API emulator over loopback ----------------------------------------------------------------


def test_auth_is_checked_before_validation(emulator, monkeypatch):
    conn = json.loads(emulator.connection_json())
    conn["password"] = "sk-wrong-key"
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))
    ok, message = ImageGenHook().test_connection()
    assert ok is False
    assert "API key" in message
    assert statuses(emulator, [401]) == [401]


def test_a_masked_key_is_never_sent(emulator, monkeypatch):
    """Airflow 3.1's Connections list tests a saved connection with the password masked as ``***``."""
    conn = json.loads(emulator.connection_json())
    conn["password"] = "***"
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))
    ok, message = ImageGenHook().test_connection()
    assert ok is False
    assert "masked" in message
    assert emulator.state.generation_calls() == []


def test_test_connection_against_the_emulator(emulator, hook):
    images_before = len(emulator.state.images)
    ok, message = hook.test_connection()
    assert ok is True, message
    (call,) = recorded_calls(emulator, 1)
    assert call.status == 400
    assert call.body["n"] == 0
    assert len(emulator.state.images) == images_before  # nothing was generated
