"""The pure HTTP helpers of the hook: settings, response parsing, error mapping, retries."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest
import tenacity
from hypothesis import example, given, settings
from hypothesis import strategies as st

from airflow_provider_imagegen.exceptions import (
    ImageGenAPIError,
    ImageGenAuthenticationError,
    ImageGenBadRequestError,
    ImageGenBadResponseError,
    ImageGenConnectionError,
    ImageGenContentPolicyError,
    ImageGenDownloadError,
    ImageGenError,
    ImageGenNoImagesError,
    ImageGenNotFoundError,
    ImageGenRateLimitError,
    ImageGenServerError,
    ImageGenTimeoutError,
    ImageGenValidationError,
    error_from_response,
    error_from_transport,
    parse_retry_after,
)
from airflow_provider_imagegen.hooks._client import (
    DEFAULT_BASE_URL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_ENDPOINT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    USER_AGENT,
    ConnectionSettings,
    RetryPolicy,
    normalise_base_url,
    parse_image_urls,
    settings_from_connection,
)
from airflow_provider_imagegen.models import prompt_digest

KEY = "sk-client-test-9f8e7d6c5b4a"


# -- settings_from_connection -------------------------------------------------------------------


def test_settings_defaults():
    settings = settings_from_connection("c", None, KEY, {})
    assert settings == ConnectionSettings(api_key=KEY)
    assert settings.base_url == DEFAULT_BASE_URL == "https://api.highwayapi.ai"
    assert settings.endpoint == DEFAULT_ENDPOINT == "/v3/gpt-image-2-text-to-image"
    assert settings.url == "https://api.highwayapi.ai/v3/gpt-image-2-text-to-image"
    assert settings.timeout == DEFAULT_TIMEOUT == 600.0
    assert settings.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert settings.max_retries == DEFAULT_MAX_RETRIES == 3


def test_settings_blank_values_mean_defaults():
    settings = settings_from_connection("c", "  ", KEY, {"endpoint": "", "timeout": "", "max_retries": None})
    assert settings == ConnectionSettings(api_key=KEY)


@pytest.mark.parametrize(
    ("host", "base_url"),
    [
        ("api.example.com", "https://api.example.com"),
        ("api.example.com/", "https://api.example.com"),
        ("https://api.example.com", "https://api.example.com"),
        ("https://api.example.com///", "https://api.example.com"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("https://gateway.example.com/imagegen/", "https://gateway.example.com/imagegen"),
        (" https://api.example.com ", "https://api.example.com"),
    ],
)
def test_settings_host_forms(host, base_url):
    assert settings_from_connection("c", host, KEY, {}).base_url == base_url


@pytest.mark.parametrize(
    ("host", "port", "base_url"),
    [
        ("localhost", 8080, "https://localhost:8080"),
        ("http://127.0.0.1", 9000, "http://127.0.0.1:9000"),
        ("http://127.0.0.1:8000", 9000, "http://127.0.0.1:8000"),  # the host's own port wins
        ("api.example.com", None, "https://api.example.com"),
        ("api.example.com", 0, "https://api.example.com"),
    ],
)
def test_settings_port_field(host, port, base_url):
    assert settings_from_connection("c", host, KEY, {}, port).base_url == base_url


def test_normalise_base_url_empty_is_the_public_api():
    assert normalise_base_url(None) == normalise_base_url("") == DEFAULT_BASE_URL


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("v3/gpt-image-2-text-to-image", "https://h.example/v3/gpt-image-2-text-to-image"),
        ("/v9/other", "https://h.example/v9/other"),
        (" /custom ", "https://h.example/custom"),
    ],
)
def test_settings_endpoint_forms(endpoint, url):
    assert settings_from_connection("c", "h.example/", KEY, {"endpoint": endpoint}).url == url


def test_settings_string_numbers_from_uri_form_extras():
    settings = settings_from_connection(
        "c", "h.example", KEY, {"timeout": "30", "connect_timeout": "2.5", "max_retries": "5"}
    )
    assert settings.timeout == 30.0
    assert isinstance(settings.timeout, float)
    assert settings.connect_timeout == 2.5
    assert settings.max_retries == 5
    assert isinstance(settings.max_retries, int)


def test_settings_native_numbers_from_json_form_extras():
    settings = settings_from_connection("c", "h.example", KEY, {"timeout": 45, "max_retries": 0})
    assert (settings.timeout, settings.max_retries) == (45.0, 0)
    assert settings.httpx_timeout.read == 45.0
    assert settings.httpx_timeout.connect == DEFAULT_CONNECT_TIMEOUT
    assert settings_from_connection("c", "h", KEY, {"max_retries": 2.0}).max_retries == 2
    assert settings_from_connection("c", "h", KEY, {"max_retries": "20"}).max_retries == 20


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("timeout", "soon"),
        ("timeout", "0"),
        ("timeout", -1),
        ("timeout", "nan"),
        ("timeout", "inf"),
        ("timeout", True),
        ("timeout", [30]),
        ("timeout", {"read": 30}),
        ("connect_timeout", "0"),
        ("max_retries", "-1"),
        ("max_retries", "2.5"),
        ("max_retries", 2.5),
        ("max_retries", "three"),
        ("max_retries", False),
        ("max_retries", 21),
        ("max_retries", "1e9"),
    ],
)
def test_settings_bad_numbers_rejected(name, value):
    with pytest.raises(ImageGenValidationError) as caught:
        settings_from_connection("my_conn", "h.example", KEY, {name: value})
    error = caught.value
    assert isinstance(error, ValueError)
    assert name in error.field
    assert "my_conn" in error.field
    assert name in str(error)
    assert repr(value) in str(error)
    assert "from" in error.allowed


@pytest.mark.parametrize("password", ["", None])
def test_settings_missing_key_rejected(password):
    with pytest.raises(ImageGenValidationError) as caught:
        settings_from_connection("my_conn", "h.example", password, {})
    assert "API Key" in caught.value.field
    assert "my_conn" in str(caught.value)
    assert "non-empty" in str(caught.value)


def test_settings_keep_the_key_out_of_repr_and_send_it_as_bearer():
    settings = settings_from_connection("c", "h.example", KEY, {})
    assert KEY not in repr(settings)
    assert KEY not in str(settings)
    assert settings.headers()["Authorization"] == f"Bearer {KEY}"
    assert settings.headers()["Content-Type"] == "application/json"


def test_settings_through_an_airflow_uri_form_connection():
    """What Airflow really hands the hook for ``imagegen://:key@host:port?extras``."""
    from airflow.sdk import Connection

    conn = Connection.from_uri(
        "imagegen://:sk%2Fkey@gateway.example.com:8443/?endpoint=v3%2Fgen&timeout=30&max_retries=2",
        conn_id="uri_conn",
    )
    settings = settings_from_connection(conn.conn_id, conn.host, conn.password, conn.extra_dejson, conn.port)
    assert settings.api_key == "sk/key"
    assert settings.url == "https://gateway.example.com:8443/v3/gen"
    assert (settings.timeout, settings.max_retries) == (30.0, 2)


def test_public_url_leaves_out_credentials_and_query():
    def _public_url(url):
        return ConnectionSettings(api_key="k", base_url=url, endpoint="").public_url

    assert _public_url("https://user:secret@api.example.com:8443/v3/x?key=1") == "https://api.example.com:8443/v3/x"


def test_user_agent_names_package_and_version():
    from airflow_provider_imagegen import __version__

    assert USER_AGENT.startswith(f"airflow-provider-imagegen/{__version__} ")


def test_prompt_digest_is_sha256_hex():
    assert prompt_digest("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert len(prompt_digest("猫")) == 64


# -- parse_image_urls ----------------------------------------------------------------------------


def _response(status: int = 200, **kwargs) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "https://api.example.test/v3/x"), **kwargs)


def test_parse_image_urls_ok():
    urls = ["https://cdn.example.test/a.png", "http://127.0.0.1:9/images/b.png"]
    assert parse_image_urls(_response(json={"images": urls, "created": 1})) == urls


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"content": b"<html>gateway</html>", "headers": {"content-type": "text/html"}}, ["not JSON", "text/html"]),
        ({"content": b'{"images": ["https://a/b.png"'}, ["not JSON"]),
        ({"content": b""}, ["not JSON"]),
        ({"content": b"\xff\xfe\x00garbage"}, ["not JSON"]),
        ({"json": {"data": [{"url": "https://a/b.png"}]}}, ["'images'", "data"]),
        ({"json": {"images": "https://a/b.png"}}, ["'images'"]),
        ({"json": {"images": {"0": "https://a/b.png"}}}, ["'images'"]),
        ({"json": {"images": None}}, ["'images'"]),
        ({"json": ["https://a/b.png"]}, ["'images'", "list"]),
        ({"json": "https://a/b.png"}, ["'images'", "str"]),
        ({"content": b"null"}, ["'images'", "NoneType"]),
    ],
)
def test_parse_image_urls_bad_shapes(kwargs, words):
    with pytest.raises(ImageGenBadResponseError) as caught:
        parse_image_urls(_response(**kwargs))
    assert not isinstance(caught.value, ImageGenNoImagesError)
    assert not caught.value.retryable
    for word in words:
        assert word in str(caught.value)


def test_parse_image_urls_empty_list():
    with pytest.raises(ImageGenNoImagesError) as caught:
        parse_image_urls(_response(json={"images": []}))
    assert isinstance(caught.value, ImageGenBadResponseError)
    assert "no images returned" in str(caught.value).lower()


@pytest.mark.parametrize(
    ("items", "position", "kind"),
    [
        ([{}], 0, "dict"),
        (["https://a/1.png", {"href": "https://a/2.png"}], 1, "dict"),  # an object must carry "url"
        (["https://a/1.png", None], 1, "NoneType"),
        ([42], 0, "int"),
        (["not a url"], 0, "str"),
        (["ftp://a/1.png"], 0, "str"),
        (["javascript:alert(1)"], 0, "str"),
        (["file:///etc/passwd"], 0, "str"),
    ],
)
def test_parse_image_urls_non_url_items(items, position, kind):
    with pytest.raises(ImageGenBadResponseError) as caught:
        parse_image_urls(_response(json={"images": items}))
    assert f"images[{position}]" in str(caught.value)
    assert kind in str(caught.value)


def test_parse_image_urls_never_quotes_the_url():
    """Image URLs are bearer-like secrets (short-lived, signed): errors name the position, not the value."""
    with pytest.raises(ImageGenBadResponseError) as caught:
        parse_image_urls(_response(json={"images": ["https://a/1.png?sig=SIGNED", "gopher://x?sig=SIGNED"]}))
    assert "SIGNED" not in str(caught.value)


# -- error_from_response -------------------------------------------------------------------------

STATUS_CASES: list[tuple[int, type[ImageGenAPIError], bool, bool]] = [
    # status, class, retryable, permanent
    (400, ImageGenBadRequestError, False, True),
    (401, ImageGenAuthenticationError, False, True),
    (403, ImageGenAuthenticationError, False, True),
    (404, ImageGenNotFoundError, False, True),
    (405, ImageGenBadRequestError, False, True),
    (408, ImageGenServerError, True, False),
    (409, ImageGenServerError, True, False),
    (413, ImageGenBadRequestError, False, True),
    (422, ImageGenBadRequestError, False, True),
    (429, ImageGenRateLimitError, True, False),
    (500, ImageGenServerError, True, False),
    (502, ImageGenServerError, True, False),
    (503, ImageGenServerError, True, False),
    (504, ImageGenServerError, True, False),
    (520, ImageGenServerError, True, False),
]


@pytest.mark.parametrize(("status", "cls", "retryable", "permanent"), STATUS_CASES)
@pytest.mark.parametrize("body_kind", ["json", "text", "empty"])
def test_error_from_response_every_status(status, cls, retryable, permanent, body_kind):
    body = {
        "json": {"json": {"error": {"message": "something specific went wrong", "code": "some_code"}}},
        "text": {"text": "something specific went wrong"},
        "empty": {"content": b""},
    }[body_kind]
    error = error_from_response(_response(status, **body))
    assert type(error) is cls
    assert isinstance(error, ImageGenAPIError)
    assert isinstance(error, ImageGenError)
    assert error.status_code == status
    assert error.retryable is retryable
    assert error.permanent is permanent
    assert f"HTTP {status}" in str(error)
    if body_kind == "empty":
        assert httpx.codes.get_reason_phrase(status) in str(error)
    else:
        assert "something specific went wrong" in str(error)
    if body_kind == "json":
        assert error.code == "some_code"


@pytest.mark.parametrize(
    ("body", "message", "code", "param"),
    [
        (
            {"error": {"message": "Invalid size", "code": "invalid_value", "param": "size"}},
            "Invalid size",
            "invalid_value",
            "size",
        ),
        ({"error": {"message": "Bad n", "type": "invalid_request_error"}}, "Bad n", "invalid_request_error", None),
        ({"error": "n must be between 1 and 10"}, "n must be between 1 and 10", None, None),
        ({"message": "Top-level message", "code": 1001}, "Top-level message", "1001", None),
        ({"detail": "FastAPI style detail"}, "FastAPI style detail", None, None),
        ({"msg": "gateway msg"}, "gateway msg", None, None),
        ({"error": {"weird": "shape"}}, '"weird": "shape"', None, None),
        ({"error": {"message": ""}, "other": 1}, '"message": ""', None, None),
    ],
)
def test_error_from_response_json_shapes(body, message, code, param):
    error = error_from_response(_response(400, json=body))
    assert message in str(error)
    assert error.code == code
    assert error.param == param


def test_error_from_response_json_list_body_kept_as_text():
    error = error_from_response(_response(500, json=["boom", "again"]))
    assert isinstance(error, ImageGenServerError)
    assert "boom" in str(error)


def test_error_from_response_plain_text_and_html():
    error = error_from_response(_response(502, text="<html>\n  <body>Bad   gateway</body>\n</html>"))
    assert isinstance(error, ImageGenServerError)
    assert "<html> <body>Bad gateway</body> </html>" in str(error)  # whitespace collapsed to one line


def test_error_from_response_long_bodies_are_cut():
    error = error_from_response(_response(500, text="x" * 100_000))
    assert len(str(error)) < 700


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            {"error": {"message": "Your request was rejected", "code": "content_policy_violation"}},
            "content_policy_violation",
        ),
        (
            {"error": {"message": "Rejected by the safety system", "type": "invalid_request_error"}},
            "invalid_request_error",
        ),
        ({"error": {"message": "Blocked by moderation"}}, None),
    ],
)
@pytest.mark.parametrize("status", [400, 422])
def test_error_from_response_content_policy(body, code, status):
    error = error_from_response(_response(status, json=body))
    assert type(error) is ImageGenContentPolicyError
    assert isinstance(error, ImageGenBadRequestError)
    assert error.permanent
    assert not error.retryable
    assert error.code == code
    assert "content moderation" in str(error)


def test_error_from_response_content_policy_in_plain_text():
    error = error_from_response(_response(400, text="content policy violation: prompt refused"))
    assert type(error) is ImageGenContentPolicyError


def test_error_from_response_retry_after_seconds():
    error = error_from_response(_response(429, json={"error": {"message": "slow down"}}, headers={"Retry-After": "7"}))
    assert isinstance(error, ImageGenRateLimitError)
    assert error.retry_after == 7.0
    assert "Rate limited" in str(error)


def test_error_from_response_retry_after_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    error = error_from_response(_response(429, text="slow down", headers={"Retry-After": when}))
    assert isinstance(error, ImageGenRateLimitError)
    assert error.retry_after is not None
    assert 27.0 <= error.retry_after <= 31.0


@pytest.mark.parametrize("header", [None, "", "soon", "Wed, 99 Foo 2024"])
def test_error_from_response_retry_after_absent_or_bad(header):
    headers = {"Retry-After": header} if header is not None else {}
    error = error_from_response(_response(429, text="slow down", headers=headers))
    assert isinstance(error, ImageGenRateLimitError)
    assert error.retry_after is None


@pytest.mark.parametrize("header", ["x-request-id", "request-id", "X-Amzn-RequestId"])
def test_error_from_response_keeps_the_request_id(header):
    error = error_from_response(_response(500, text="boom", headers={header: "req-abc-123"}))
    assert error.request_id == "req-abc-123"
    assert "request id req-abc-123" in str(error)


def test_error_from_response_scrubs_an_echoed_secret():
    body = {
        "error": {
            "message": f"Invalid API key provided: {KEY}. Header was 'Bearer {KEY}'.",
            "code": f"bad_key_{KEY}",
            "param": KEY,
        }
    }
    for status in (400, 401, 429, 500):
        error = error_from_response(_response(status, json=body), secret=KEY)
        for text in (str(error), repr(error), repr(error.args), str(error.code), str(error.param), error.message):
            assert KEY not in text
        assert "***" in str(error)
    text_error = error_from_response(_response(401, text=f"unknown key {KEY}"), secret=KEY)
    assert KEY not in str(text_error)


@settings(max_examples=200, deadline=None)
@given(
    status=st.sampled_from([400, 401, 403, 404, 409, 422, 429, 500, 503]),
    prefix=st.text(max_size=200),
    suffix=st.text(max_size=200),
    secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=8, max_size=64),
    as_json=st.booleans(),
)
def test_error_from_response_never_contains_the_secret(status, prefix, suffix, secret, as_json):
    message = prefix + secret + suffix
    kwargs = {"json": {"error": {"message": message}}} if as_json else {"text": message}
    error = error_from_response(_response(status, **kwargs), secret=secret)
    assert secret not in str(error)
    assert secret not in repr(error)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100))
def test_parse_retry_after_never_raises_on_any_text(value):
    result = parse_retry_after(value)
    assert result is None or result >= 0.0


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["Mon", "Tue", "Fri"]),
    st.integers(-(10**6), 10**6),
    st.text(alphabet="0123456789:+- GMTZ", max_size=30),
)
@example("Mon", 0, "0:3000000000")  # found by CI: an overflowing time field (OverflowError in the stdlib)
def test_parse_retry_after_never_raises_on_date_like_text(day, number, tail):
    result = parse_retry_after(f"{day}, {number} Jan {number} {tail}")
    assert result is None or result >= 0.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("1", 1.0), (" 2.5 ", 2.5), ("-4", 0.0), (None, None), ("", None), ("later", None)],
)
def test_parse_retry_after_values(value, expected):
    assert parse_retry_after(value) == expected


def test_parse_retry_after_past_date_is_zero():
    assert parse_retry_after("Mon, 01 Jan 2001 00:00:00 GMT") == 0.0


# -- transport errors ----------------------------------------------------------------------------


def test_error_from_transport():
    request = httpx.Request("POST", "https://api.example.test")
    timeout = error_from_transport(httpx.ConnectTimeout("connect timed out", request=request))
    assert type(timeout) is ImageGenTimeoutError
    assert isinstance(timeout, ImageGenConnectionError)
    assert timeout.retryable
    assert "ConnectTimeout" in str(timeout)
    late = error_from_transport(httpx.ReadTimeout("read timed out", request=request))
    assert type(late) is ImageGenTimeoutError
    assert (late.retryable, late.permanent) == (False, True)  # sent, maybe billed: never paid twice
    assert "ReadTimeout" in str(late)
    refused = error_from_transport(httpx.ConnectError("refused", request=request))
    assert type(refused) is ImageGenConnectionError
    assert refused.retryable
    assert "ConnectError" in str(refused)


# -- RetryPolicy ---------------------------------------------------------------------------------


def test_retry_policy_backoff_is_exponential_with_bounded_jitter():
    policy = RetryPolicy(initial=0.5, maximum=8.0, jitter=0.25)
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (30, 8.0)]:
        waits = [policy.wait(attempt, None) for _ in range(50)]
        assert all(base <= w <= base * 1.25 for w in waits), (attempt, waits)


def test_retry_policy_without_jitter_is_exact():
    policy = RetryPolicy(initial=1.0, maximum=3.0, jitter=0.0)
    assert [policy.wait(a, None) for a in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]


def _rate_limited(retry_after: float | None) -> ImageGenRateLimitError:
    return ImageGenRateLimitError("slow down", retry_after=retry_after, status_code=429)


def test_retry_policy_honours_retry_after():
    policy = RetryPolicy(initial=0.01, maximum=0.02)
    assert policy.wait(1, _rate_limited(3.0)) == 3.0
    assert policy.wait(1, _rate_limited(0.0)) == 0.0
    assert policy.wait(1, _rate_limited(None)) <= 0.02 * 1.25


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ImageGenServerError("x", status_code=500), True),
        (ImageGenServerError("x", status_code=408), True),
        (_rate_limited(None), True),
        (_rate_limited(120.0), True),
        (_rate_limited(120.5), False),
        (_rate_limited(3600.0), False),
        (ImageGenConnectionError("x"), True),
        (ImageGenTimeoutError("x"), True),
        (ImageGenBadRequestError("x", status_code=400), False),
        (ImageGenContentPolicyError("x", status_code=400), False),
        (ImageGenAuthenticationError("x", status_code=401), False),
        (ImageGenNotFoundError("x", status_code=404), False),
        (ImageGenBadResponseError("x"), False),
        (ImageGenNoImagesError("x"), False),
        (ImageGenValidationError("n", 0, "1 to 10"), False),
        (ImageGenDownloadError("x"), False),
        (ValueError("x"), False),
        (httpx.ConnectError("x"), False),  # the hook translates these first
    ],
)
def test_retry_policy_should_retry(error, retried):
    assert RetryPolicy().should_retry(error) is retried


def test_retry_policy_cap_is_configurable():
    assert RetryPolicy(max_retry_after=5).should_retry(_rate_limited(5.0))
    assert not RetryPolicy(max_retry_after=5).should_retry(_rate_limited(6.0))


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_retry_policy_tenacity_budget(max_retries):
    calls: list[int] = []
    slept: list[float] = []
    retrying = tenacity.Retrying(
        **RetryPolicy(max_retries=max_retries, initial=1.0, maximum=1.0, jitter=0.0).tenacity_kwargs(lambda s: None),
        sleep=slept.append,
    )

    def always_500() -> None:
        calls.append(1)
        raise ImageGenServerError("boom", status_code=500)

    with pytest.raises(ImageGenServerError):
        retrying(always_500)
    assert len(calls) == max_retries + 1
    assert slept == [1.0] * max_retries


def test_retry_policy_tenacity_reraises_permanent_errors_at_once():
    calls: list[int] = []
    retrying = tenacity.Retrying(**RetryPolicy().tenacity_kwargs(lambda s: None), sleep=lambda s: None)

    def bad_request() -> None:
        calls.append(1)
        raise ImageGenBadRequestError("no", status_code=400)

    with pytest.raises(ImageGenBadRequestError):
        retrying(bad_request)
    assert calls == [1]


def test_connection_settings_is_frozen():
    settings = ConnectionSettings(api_key=KEY)
    with pytest.raises(AttributeError):
        settings.api_key = "other"  # type: ignore[misc]
