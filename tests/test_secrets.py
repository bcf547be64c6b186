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


# -- the key's shape, the server's echoes and the Base URL (issue 11, item 5) ---------------------

from airflow_provider_imagegen.exceptions import ImageGenValidationError  # noqa: E402
from airflow_provider_imagegen.triggers.imagegen import ImageGenTrigger  # noqa: E402

SHAPES = ["\n", "\r", "\r\n", " \t", "\n\n"]


def _set_key(monkeypatch, password: str, host: str = BASE_URL) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_IMAGEGEN_DEFAULT",
        json.dumps({"conn_type": "imagegen", "host": host, "password": password, "extra": {"max_retries": 1}}),
    )


def _assert_absent(text: str, *secrets: str) -> None:
    for secret in secrets:
        for form in {secret, secret.strip(), repr(secret)[1:-1]}:
            assert form not in text, f"{form!r} leaked"


@pytest.mark.parametrize("suffix", SHAPES, ids=repr)
def test_surrounding_whitespace_is_stripped_and_never_leaks(monkeypatch, captured, suffix):
    raw = KEY + suffix
    _set_key(monkeypatch, raw)
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["authorization"])
        return echoing(500)(request)

    hook = ImageGenHook(transport=httpx.MockTransport(handler), retry_policy=FAST)
    with pytest.raises(ImageGenServerError) as caught:
        hook.generate_images("p")
    assert sent == [f"Bearer {KEY}"] * 2  # the stripped key, retried once
    ok_, message = ImageGenHook(transport=httpx.MockTransport(echoing(401))).test_connection()
    assert not ok_
    texts = [*_texts_of(caught.value), message, repr(hook), repr(hook.settings), captured()]
    from airflow.sdk._shared.secrets_masker import redact

    texts.append(str(redact(f"Authorization: Bearer {raw} and {KEY}")))
    for text in texts:
        _assert_absent(text, raw)


@pytest.mark.parametrize(
    ("password", "word"),
    [
        ("sk-abc\ndef-0123456789", "control"),
        ("sk-abc\x00def-0123456789", "control"),
        ("sk-abc\x1bdef-0123456789", "control"),
        ("sk-abc\u200bdef-0123456789", "control"),  # zero-width space (format character)
        ("sk-ключ-0123456789", "non-ASCII"),
        ("sk-clé-0123456789", "non-ASCII"),
    ],
)
def test_unusable_key_refused_clearly_without_printing_it(monkeypatch, captured, password, word):
    _set_key(monkeypatch, password)
    calls: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: calls.append(request) or httpx.Response(400))
    with pytest.raises(ImageGenValidationError) as caught:
        ImageGenHook(transport=transport).generate_images("p")
    assert word in str(caught.value)
    assert "API Key" in str(caught.value)
    ok_, message = ImageGenHook(transport=transport).test_connection()  # a clear failure, no exception
    assert not ok_
    assert word in message
    assert calls == []  # refused before any network call
    pieces = [piece for piece in password.replace("\x00", "\n").replace("\x1b", "\n").split("\n") if len(piece) > 5]
    for text in [*_texts_of(caught.value), message, captured()]:
        _assert_absent(text, password, *pieces)
        assert "0123456789" not in text


def test_echoed_request_id_is_scrubbed_everywhere(monkeypatch, captured):
    hostile = f"req-1 {KEY}\r\n\x1b[31m" + "A" * 10_000

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("x-fail"):
            return httpx.Response(429, json={"error": {"message": "slow"}}, headers={"x-request-id": hostile})
        return httpx.Response(
            200, json={"images": ["https://cdn.secrets.test/1.png"]}, headers={"x-request-id": hostile}
        )

    result = ImageGenHook(transport=httpx.MockTransport(handler), retry_policy=FAST).generate_images("p")
    assert result.request_id is not None
    assert result.request_id.startswith("req-1 ***")
    assert len(result.request_id) <= 128
    assert result.request_id.isprintable()
    assert "\x1b" not in result.request_id
    _assert_absent(repr(result), KEY)

    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="down", headers={"x-request-id": hostile})

    with pytest.raises(ImageGenServerError) as caught:
        ImageGenHook(transport=httpx.MockTransport(failing), retry_policy=FAST).generate_images("p")
    assert caught.value.request_id is not None
    assert len(caught.value.request_id) <= 128
    for text in [*_texts_of(caught.value), captured()]:
        _assert_absent(text, KEY)
        assert "\x1b" not in text


@pytest.mark.parametrize(
    ("host", "hidden"),
    [
        ("https://user:hunter2-pass@api.secrets.test", "hunter2-pass"),
        ("https://only-a-token-xyz@api.secrets.test", "only-a-token-xyz"),
        ("https://api.secrets.test/?token=qs-secret-77", "qs-secret-77"),
        ("https://api.secrets.test/#frag-secret-77", "frag-secret-77"),
        ("api.secrets.test?key=qs-secret-88", "qs-secret-88"),
    ],
)
def test_base_url_with_credentials_or_query_is_refused_and_never_printed(monkeypatch, captured, host, hidden):
    _set_key(monkeypatch, KEY, host=host)
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(400))
    with pytest.raises(ImageGenValidationError) as caught:
        ImageGenHook(transport=transport).generate_images("p")
    ok_, message = ImageGenHook(transport=transport).test_connection()
    assert not ok_
    assert "api.secrets.test" in message  # says which URL, without what it must not show
    assert sent == []  # never sent as Basic auth in place of the Bearer key, nor at all
    for text in [*_texts_of(caught.value), message, captured()]:
        assert hidden not in text
        _assert_absent(text, KEY)


def test_test_connection_shows_the_public_url(monkeypatch):
    ok_, message = ImageGenHook(transport=httpx.MockTransport(echoing(400))).test_connection()
    assert ok_
    assert f"{BASE_URL}/v3/gpt-image-2-text-to-image" in message


@pytest.mark.parametrize(
    ("host", "warns"),
    [
        ("http://api.secrets.test", True),
        ("http://10.0.0.7:8080", True),
        ("http://127.0.0.1:8765", False),
        ("http://localhost:8765", False),
        ("http://[::1]:8765", False),
        ("https://api.secrets.test", False),
    ],
)
def test_warns_when_the_key_would_travel_over_plain_http(monkeypatch, captured, host, warns):
    _set_key(monkeypatch, KEY, host=host)
    ImageGenHook().settings  # noqa: B018 - reading the settings is what warns
    logs = captured()
    assert ("plain http" in logs) is warns
    assert KEY not in logs


class _EchoTrigger(ImageGenTrigger):
    def _hook(self) -> ImageGenHook:
        return ImageGenHook(self.imagegen_conn_id, async_transport=httpx.MockTransport(echoing(401)))


@pytest.mark.parametrize("password", [KEY + "\n", KEY + "\r", "sk-ab\x07cd-0123456789"], ids=repr)
def test_trigger_event_never_holds_the_key(monkeypatch, captured, password):
    _set_key(monkeypatch, password)
    trigger = _EchoTrigger("imagegen_default", {0: {"prompt": "p", "n": 1}})

    async def first_event() -> dict:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("no event")

    payload = asyncio.run(first_event())
    outcome = payload["results"]["0"]
    assert outcome["status"] == "error"
    assert outcome["permanent"] is True
    for text in [json.dumps(payload), repr(trigger.serialize()), captured()]:
        _assert_absent(text, password, KEY)
        assert "0123456789" not in text
