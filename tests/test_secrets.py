"""The API key never shows up in logs, exception texts, reprs or args, and is registered with the masker."""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from unittest import mock

import httpx
import pytest

from airflow_provider_imagegen.exceptions import (
    ImageGenAuthenticationError,
    ImageGenBadRequestError,
    ImageGenConnectionError,
    ImageGenError,
    ImageGenRateLimitError,
    ImageGenServerError,
)
from airflow_provider_imagegen.hooks._client import RetryPolicy
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

KEY = "sk-secret-test-Zq8Xw3Vt6Ys1Ur4T"
BASE_URL = "https://api.secrets.test"
FAST = RetryPolicy(initial=0.01, maximum=0.02)


@pytest.fixture(autouse=True)
def _connection(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_IMAGEGEN_DEFAULT",
        json.dumps({"conn_type": "imagegen", "host": BASE_URL, "password": KEY, "extra": {"max_retries": 2}}),
    )


@pytest.fixture
def captured(caplog, capfd):
    """Everything the code under test logged or printed, as one string (read it at the end)."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "airflow", "airflow_provider_imagegen"):
        caplog.set_level(logging.DEBUG, logger=name)

    def read() -> str:
        out, err = capfd.readouterr()
        records = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''} {r.__dict__!r}" for r in caplog.records)
        return "\n".join([caplog.text, records, out, err])

    return read


def echoing(status: int, *, as_text: bool = False, **headers: str):
    """A server that echoes the Authorization header back in its error body, in every field."""

    headers = {name.replace("_", "-"): value for name, value in headers.items()}

    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        if as_text:
            return httpx.Response(status, text=f"rejected credentials {auth} ({auth.split()[-1]})", headers=headers)
        body = {"error": {"message": f"Invalid key {auth}", "code": auth, "param": auth.split()[-1], "type": auth}}
        return httpx.Response(status, json=body, headers={"x-request-id": "req-1", **headers})

    return handler


def _texts_of(error: BaseException) -> list[str]:
    texts = [str(error), repr(error), repr(error.args), "".join(traceback.format_exception(error))]
    texts += [repr(value) for value in vars(error).values()]
    if error.__cause__ is not None:
        texts += _texts_of(error.__cause__)
    if error.__context__ is not None and not error.__suppress_context__:
        texts += _texts_of(error.__context__)
    return texts


CASES = [
    pytest.param(echoing(401), ImageGenAuthenticationError, 1, id="401-json-echo"),
    pytest.param(echoing(401, as_text=True), ImageGenAuthenticationError, 1, id="401-text-echo"),
    pytest.param(echoing(403), ImageGenAuthenticationError, 1, id="403-json-echo"),
    pytest.param(echoing(400), ImageGenBadRequestError, 1, id="400-json-echo"),
    pytest.param(echoing(500), ImageGenServerError, 3, id="500-exhausting-retries"),
    pytest.param(echoing(503, as_text=True), ImageGenServerError, 3, id="503-text-exhausting-retries"),
    pytest.param(echoing(429, retry_after="0"), ImageGenRateLimitError, 3, id="429-retried"),
    pytest.param(echoing(429, retry_after="999"), ImageGenRateLimitError, 1, id="429-above-cap"),
]


@pytest.mark.parametrize(("handler", "error_class", "calls"), CASES)
def test_key_absent_from_logs_and_errors(captured, handler, error_class, calls):
    requests: list[httpx.Request] = []

    def recording(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return handler(request)

    hook = ImageGenHook(transport=httpx.MockTransport(recording), retry_policy=FAST)
    with pytest.raises(error_class) as caught:
        hook.generate_images("a prompt")
    assert len(requests) == calls
    assert requests[0].headers["authorization"] == f"Bearer {KEY}"  # the key was really sent (and echoed)
    for text in _texts_of(caught.value):
        assert KEY not in text
    assert "***" in str(caught.value)  # the echo was scrubbed, not just missing
    logs = captured()
    if calls > 1:
        assert "retrying" in logs  # the retry warnings were captured, so their absence of the key means something
    assert KEY not in logs


@pytest.mark.parametrize(("handler", "error_class", "calls"), CASES[:2] + CASES[4:5])
def test_key_absent_from_async_errors(captured, handler, error_class, calls):
    hook = ImageGenHook(async_transport=httpx.MockTransport(handler), retry_policy=FAST)
    with pytest.raises(error_class) as caught:
        asyncio.run(hook.agenerate_images("a prompt"))
    for text in _texts_of(caught.value):
        assert KEY not in text
    assert KEY not in captured()


def test_key_absent_when_the_network_fails(captured):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused (headers were {dict(request.headers)})")

    hook = ImageGenHook(transport=httpx.MockTransport(refuse), retry_policy=FAST)
    with pytest.raises(ImageGenConnectionError) as caught:
        hook.generate_images("p")
    for text in _texts_of(caught.value):
        assert KEY not in text
    assert KEY not in captured()


def test_key_absent_from_test_connection_messages(captured):
    for handler in (echoing(401), echoing(404), echoing(500, as_text=True), echoing(400)):
        _, message = ImageGenHook(transport=httpx.MockTransport(handler)).test_connection()
        assert KEY not in message
    assert KEY not in captured()


def test_key_absent_from_a_successful_call_at_debug(captured):
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"images": ["https://cdn.secrets.test/1.png"]})

    hook = ImageGenHook(transport=httpx.MockTransport(answer), retry_policy=FAST)
    result = hook.generate_images("p")
    assert KEY not in repr(result)
    assert KEY not in repr(hook)
    assert KEY not in repr(hook.settings)
    assert KEY not in captured()


def test_mask_secret_is_called_with_the_key():
    with mock.patch("airflow.sdk.log.mask_secret") as mask:
        hook = ImageGenHook()
        assert hook.settings.api_key == KEY
    assert mock.call(KEY) in mask.call_args_list


def test_mask_secret_is_called_on_the_async_path_too():
    """From an event loop the hook uses the async masker (the sync one can deadlock there)."""
    import airflow.sdk.log

    if not hasattr(airflow.sdk.log, "amask_secret"):  # Airflow < 3.3: the sync masker is the only one
        with mock.patch("airflow.sdk.log.mask_secret") as mask:
            assert asyncio.run(ImageGenHook().asettings()).api_key == KEY
        assert mock.call(KEY) in mask.call_args_list
        return
    with mock.patch("airflow.sdk.log.amask_secret", new_callable=mock.AsyncMock) as amask:
        settings = asyncio.run(ImageGenHook().asettings())
    assert settings.api_key == KEY
    assert mock.call(KEY) in amask.await_args_list


def test_the_masker_really_redacts_the_key_after_the_hook_read_it():
    """End to end with Airflow's own masker: once the hook has read the connection, logs redact the key."""
    # no skip if this import breaks: a moved masker is exactly what this test must report
    from airflow.sdk._shared.secrets_masker import redact
    from airflow.sdk.log import mask_secret  # noqa: F401 - the public entry point the hook uses

    ImageGenHook().settings  # noqa: B018 - reading the settings registers the key
    assert KEY not in str(redact(f"Authorization: Bearer {KEY}"))


def test_errors_are_imagegen_errors_with_no_key_in_any_attribute():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": KEY, "code": KEY, "param": KEY}})

    with pytest.raises(ImageGenError) as caught:
        ImageGenHook(transport=httpx.MockTransport(handler)).generate_images("p")
    for name, value in vars(caught.value).items():
        assert KEY not in repr(value), name
