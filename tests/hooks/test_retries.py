"""ImageGenHook against a scripted fake API (httpx.MockTransport / respx): exact requests, retries, errors."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import httpx
import pytest
import respx
import tenacity

from airflow_provider_imagegen import __version__
from airflow_provider_imagegen.exceptions import (
    ImageGenAuthenticationError,
    ImageGenBadRequestError,
    ImageGenBadResponseError,
    ImageGenConnectionError,
    ImageGenContentPolicyError,
    ImageGenDownloadError,
    ImageGenNoImagesError,
    ImageGenNotFoundError,
    ImageGenRateLimitError,
    ImageGenServerError,
    ImageGenTimeoutError,
    ImageGenValidationError,
)
from airflow_provider_imagegen.hooks._client import RetryPolicy
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
from airflow_provider_imagegen.models import ImageGenerationRequest

from ._fakes import BASE_URL, CDN, FAST, GENERATION_URL, KEY, PNG, FakeAPI, connection_json, image, ok, redirect, status


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


def make_hook(api: FakeAPI, **kwargs) -> ImageGenHook:
    kwargs.setdefault("retry_policy", FAST)
    return ImageGenHook(transport=api.transport, async_transport=api.transport, **kwargs)


def agenerate(hook: ImageGenHook, *args, **kwargs):
    return asyncio.run(hook.agenerate_images(*args, **kwargs))


# -- what is sent --------------------------------------------------------------------------------


def test_generation_request_headers_and_url(conn):
    api = FakeAPI(ok())
    make_hook(api).generate_images("a red fox")
    (request,) = api.requests
    assert request.method == "POST"
    assert str(request.url) == GENERATION_URL
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    user_agent = request.headers["user-agent"]
    assert user_agent.startswith(f"airflow-provider-imagegen/{__version__}")
    assert __version__ in user_agent


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"n": 10, "size": "3840x2160", "quality": "high", "background": "opaque", "moderation": "low"},
        {"output_format": "jpeg", "output_compression": 0},
        {"output_format": "png", "output_compression": 100},
        {"size": "auto", "quality": "low"},
    ],
)
def test_generation_body_is_exactly_the_request(conn, params):
    api = FakeAPI(ok())
    result = make_hook(api).generate_images('猫 and a 🦊, "quoted"', **params)
    expected = ImageGenerationRequest.build('猫 and a 🦊, "quoted"', **params).to_json()
    assert api.bodies() == [expected]
    assert result.request.to_json() == expected


def test_result_fields(conn):
    api = FakeAPI(ok(f"{CDN}/a.png", f"{CDN}/b.png", request_id="req-42"))
    result = make_hook(api).generate_images("p", n=3)
    assert result.image_urls == [f"{CDN}/a.png", f"{CDN}/b.png"]
    assert result.shortfall == 1
    assert result.attempts == 1
    assert result.request_id == "req-42"
    assert result.elapsed >= 0


def test_endpoint_and_host_from_the_connection(conn):
    conn(host="gateway.example.test/", endpoint="custom/path")
    api = FakeAPI(ok())
    make_hook(api).generate_images("p")
    assert str(api.requests[0].url) == "https://gateway.example.test/custom/path"


def test_timeouts_from_the_connection_and_overrides(conn):
    conn(timeout=42, connect_timeout=3)
    hook = make_hook(FakeAPI())
    assert hook.client.timeout.read == 42
    assert hook.client.timeout.connect == 3
    assert make_hook(FakeAPI(), timeout=7).client.timeout.read == 7


def test_client_is_pooled_and_closed(conn):
    api = FakeAPI(ok())
    hook = make_hook(api)
    client = hook.get_conn()
    hook.generate_images("one")
    hook.generate_images("two")
    assert hook.client is client
    assert len(api.posts) == 2
    hook.close()
    assert client.is_closed
    assert hook.client is not client  # a new one on demand
    hook.close()


def test_default_transport_through_respx(conn):
    """No injected transport: the hook's real httpx transport is used (and intercepted by respx)."""
    with respx.mock(assert_all_called=True) as router:
        route = router.post(GENERATION_URL).mock(return_value=httpx.Response(200, json={"images": [f"{CDN}/r.png"]}))
        result = ImageGenHook(retry_policy=FAST).generate_images("p", n=1)
    assert result.image_urls == [f"{CDN}/r.png"]
    assert route.call_count == 1
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(sent.content)["prompt"] == "p"


# -- retries -------------------------------------------------------------------------------------

RETRIED = [
    pytest.param(httpx.ConnectError("connection refused"), ImageGenConnectionError, id="connect-error"),
    pytest.param(httpx.ConnectTimeout("connect timed out"), ImageGenTimeoutError, id="connect-timeout"),
    pytest.param(httpx.RemoteProtocolError("server disconnected"), ImageGenConnectionError, id="disconnected"),
    pytest.param(httpx.ReadError("connection reset"), ImageGenConnectionError, id="reset"),
    pytest.param(status(408), ImageGenServerError, id="408"),
    pytest.param(status(409), ImageGenServerError, id="409"),
    pytest.param(status(429), ImageGenRateLimitError, id="429"),
    pytest.param(status(429, retry_after="0"), ImageGenRateLimitError, id="429-retry-after-0"),
    pytest.param(status(500), ImageGenServerError, id="500"),
    pytest.param(status(502, "<html>Bad Gateway</html>"), ImageGenServerError, id="502-html"),
    pytest.param(status(503), ImageGenServerError, id="503"),
    pytest.param(status(504), ImageGenServerError, id="504"),
]


@pytest.mark.parametrize(("failure", "error_class"), RETRIED)
def test_retried_then_success(conn, failure, error_class):
    api = FakeAPI(failure, ok())
    result = make_hook(api).generate_images("p")
    assert result.image_urls == [f"{CDN}/1.png"]
    assert result.attempts == 2
    assert len(api.posts) == 2
    assert api.bodies()[0] == api.bodies()[1]  # the same request again


@pytest.mark.parametrize(("failure", "error_class"), RETRIED)
def test_retried_then_success_async(conn, failure, error_class):
    api = FakeAPI(failure, ok())
    result = agenerate(make_hook(api), "p")
    assert result.image_urls == [f"{CDN}/1.png"]
    assert result.attempts == 2
    assert len(api.posts) == 2


@pytest.mark.parametrize(("failure", "error_class"), RETRIED)
def test_retries_exhausted_raise_the_last_error(conn, failure, error_class):
    conn(max_retries=2)
    api = FakeAPI(failure)
    with pytest.raises(error_class):
        make_hook(api).generate_images("p")
    assert len(api.posts) == 3


def test_several_failures_then_success_counts_attempts(conn):
    api = FakeAPI(status(503), httpx.ConnectError("refused"), status(429), ok())
    result = make_hook(api).generate_images("p")
    assert result.attempts == 4
    assert len(api.posts) == 4


NOT_RETRIED = [
    pytest.param(status(400), ImageGenBadRequestError, id="400"),
    pytest.param(status(400, "plain text: n must be at most 10"), ImageGenBadRequestError, id="400-text"),
    pytest.param(status(401), ImageGenAuthenticationError, id="401"),
    pytest.param(status(403), ImageGenAuthenticationError, id="403"),
    pytest.param(status(404), ImageGenNotFoundError, id="404"),
    pytest.param(status(422), ImageGenBadRequestError, id="422"),
    pytest.param(
        status(400, {"error": {"message": "Rejected by safety system", "code": "content_policy_violation"}}),
        ImageGenContentPolicyError,
        id="content-policy",
    ),
    pytest.param(status(429, retry_after="121"), ImageGenRateLimitError, id="429-retry-after-above-cap"),
    pytest.param(status(429, retry_after="86400"), ImageGenRateLimitError, id="429-retry-after-a-day"),
    pytest.param(lambda r: httpx.Response(200, text="not json"), ImageGenBadResponseError, id="200-not-json"),
    pytest.param(lambda r: httpx.Response(200, json={"images": []}), ImageGenNoImagesError, id="200-no-images"),
    pytest.param(lambda r: httpx.Response(200, json={"data": []}), ImageGenBadResponseError, id="200-no-images-key"),
]


@pytest.mark.parametrize(("failure", "error_class"), NOT_RETRIED)
def test_not_retried(conn, failure, error_class):
    api = FakeAPI(failure, ok())
    with pytest.raises(error_class):
        make_hook(api).generate_images("p")
    assert len(api.posts) == 1


@pytest.mark.parametrize(("failure", "error_class"), NOT_RETRIED)
def test_not_retried_async(conn, failure, error_class):
    api = FakeAPI(failure, ok())
    with pytest.raises(error_class):
        agenerate(make_hook(api), "p")
    assert len(api.posts) == 1


def test_rate_limit_error_keeps_retry_after_and_status(conn):
    api = FakeAPI(status(429, retry_after="300"))
    with pytest.raises(ImageGenRateLimitError) as caught:
        make_hook(api).generate_images("p")
    assert caught.value.retry_after == 300.0
    assert caught.value.status_code == 429


@pytest.mark.parametrize(("max_retries", "calls"), [(0, 1), (1, 2), (2, 3), ("4", 5)])
def test_retry_budget_from_the_connection(conn, max_retries, calls):
    conn(max_retries=max_retries)
    api = FakeAPI(status(500))
    with pytest.raises(ImageGenServerError):
        make_hook(api).generate_images("p")
    assert len(api.posts) == calls


def test_retry_budget_from_the_connection_async(conn):
    conn(max_retries=2)
    api = FakeAPI(status(503))
    with pytest.raises(ImageGenServerError):
        agenerate(make_hook(api), "p")
    assert len(api.posts) == 3


def test_hook_max_retries_overrides_the_connection(conn):
    conn(max_retries=5)
    api = FakeAPI(status(500))
    with pytest.raises(ImageGenServerError):
        make_hook(api, max_retries=1).generate_images("p")
    assert len(api.posts) == 2


def test_retry_policy_budget_is_replaced_by_the_connection(conn):
    conn(max_retries=1)
    api = FakeAPI(status(500))
    with pytest.raises(ImageGenServerError):
        make_hook(api, retry_policy=RetryPolicy(max_retries=9, initial=0.01, maximum=0.02)).generate_images("p")
    assert len(api.posts) == 2


def test_retry_after_seconds_is_waited_exactly(conn, sleeps):
    api = FakeAPI(status(429, retry_after="2"), status(429, retry_after="5"), ok())
    result = make_hook(api, retry_policy=RetryPolicy()).generate_images("p")
    assert result.attempts == 3
    assert sleeps == [2.0, 5.0]


def test_retry_after_http_date_is_waited(conn, sleeps):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    api = FakeAPI(status(429, retry_after=when), ok())
    make_hook(api, retry_policy=RetryPolicy()).generate_images("p")
    assert len(sleeps) == 1
    assert 27.0 <= sleeps[0] <= 31.0


def test_backoff_without_retry_after_is_exponential(conn, sleeps):
    conn(max_retries=4)
    api = FakeAPI(status(500))
    with pytest.raises(ImageGenServerError):
        make_hook(api, retry_policy=RetryPolicy(initial=0.5, maximum=1.5, jitter=0.0)).generate_images("p")
    assert sleeps == [0.5, 1.0, 1.5, 1.5]


def test_retry_after_is_honoured_async(conn, monkeypatch):
    """The async path waits what the server asked (0 here), not its backoff."""
    waits: list[float] = []
    hook = make_hook(FakeAPI(status(429, retry_after="0"), ok()), retry_policy=RetryPolicy(initial=5, maximum=5))
    original = hook._log_retry

    def record(state):
        waits.append(state.next_action.sleep)
        original(state)

    monkeypatch.setattr(hook, "_log_retry", record)
    assert agenerate(hook, "p").attempts == 2
    assert waits == [0.0]


def test_validation_happens_before_retries_and_network(conn):
    api = FakeAPI(ok())
    with pytest.raises(ImageGenValidationError):
        make_hook(api).generate_images("p", n=11)
    assert api.requests == []


# -- test_connection -----------------------------------------------------------------------------


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


# -- open_image ----------------------------------------------------------------------------------


def _download(hook: ImageGenHook, url: str, **kwargs) -> bytes:
    with hook.open_image(url) as stream:
        return b"".join(stream.iter_bytes(**kwargs))


def test_open_image_sends_no_authorization(conn):
    url = f"{CDN}/img/1.png?sig=abc"
    api = FakeAPI(ok(url), images={url: image(PNG, content_length=str(len(PNG)))})
    hook = make_hook(api)
    result = hook.generate_images("p")
    assert _download(hook, result.image_urls[0]) == PNG
    post, get = api.requests
    assert "authorization" in post.headers
    assert "authorization" not in get.headers
    assert get.headers["user-agent"].startswith("airflow-provider-imagegen/")
    assert str(get.url) == url


def test_open_image_stream_properties(conn):
    url = f"{CDN}/1.png"
    api = FakeAPI(images={url: image(PNG, content_type="image/png; charset=binary")})
    with make_hook(api).open_image(url) as stream:
        assert stream.content_type == "image/png"
        assert stream.content_length == len(PNG)
        assert b"".join(stream.iter_bytes()) == PNG
        assert stream.bytes_read == len(PNG)


def test_open_image_byte_cap(conn):
    url = f"{CDN}/big.png"
    api = FakeAPI(images={url: image(b"x" * 5000)})
    with pytest.raises(ImageGenDownloadError, match="cap"):
        _download(make_hook(api, max_image_bytes=4096), url)


def test_open_image_byte_cap_without_content_length(conn):
    url = f"{CDN}/big.png"

    def chunked(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([b"x" * 3000, b"x" * 3000, b"x" * 3000]))

    api = FakeAPI(images={url: chunked})
    with pytest.raises(ImageGenDownloadError, match="exceeds the cap"):
        _download(make_hook(api, max_image_bytes=4096), url, chunk_size=3000)


@pytest.mark.parametrize("code", [403, 404, 410, 500])
def test_open_image_error_status(conn, code):
    url = f"{CDN}/expired.png"
    api = FakeAPI(images={url: image(b"expired", code=code)})
    with pytest.raises(ImageGenDownloadError, match=f"HTTP {code}") as caught:
        _download(make_hook(api), url)
    assert not caught.value.retryable
    assert len(api.gets) == 1


def test_open_image_transport_error(conn):
    url = f"{CDN}/1.png"
    api = FakeAPI(images={url: httpx.ConnectError("refused")})
    with pytest.raises(ImageGenDownloadError, match="ConnectError"):
        _download(make_hook(api), url)


@pytest.mark.parametrize(
    "url",
    [
        "http://cdn.example.test/1.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/1.png",
        "https://10.1.2.3/1.png",
        "file:///etc/passwd",
    ],
)
def test_open_image_refuses_bad_urls_before_any_request(conn, url):
    api = FakeAPI()
    with pytest.raises(ImageGenDownloadError, match="Refusing"):
        _download(make_hook(api), url)
    assert api.requests == []


def test_open_image_same_origin_http_allowed_for_a_local_api(conn):
    conn(host="http://127.0.0.1:8765")
    url = "http://127.0.0.1:8765/images/abc.png"
    api = FakeAPI(images={url: image()})
    assert _download(make_hook(api), url) == PNG


def test_open_image_follows_https_redirects_without_the_key(conn):
    first, second, final = f"{CDN}/1.png", "https://cdn2.example.test/x.png", "https://cdn3.example.test/y.png"
    api = FakeAPI(images={first: redirect(second, 301), second: redirect(final, 307), final: image()})
    assert _download(make_hook(api), first) == PNG
    assert [str(r.url) for r in api.gets] == [first, second, final]
    assert all("authorization" not in r.headers for r in api.gets)


@pytest.mark.parametrize(
    "target",
    [
        "http://cdn2.example.test/x.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/x.png",
        "https://192.168.0.10/x.png",
    ],
)
def test_open_image_refuses_redirects_to_http_or_internal_hosts(conn, target):
    first = f"{CDN}/1.png"
    api = FakeAPI(images={first: redirect(target), target: image()})
    with pytest.raises(ImageGenDownloadError, match="Refusing"):
        _download(make_hook(api), first)
    assert [str(r.url) for r in api.gets] == [first]


def test_open_image_refuses_an_http_redirect_even_to_the_api_origin(conn):
    conn(host="http://127.0.0.1:8765")
    first, target = "http://127.0.0.1:8765/images/a.png", "http://127.0.0.1:8765/images/b.png"
    api = FakeAPI(images={first: redirect(target), target: image()})
    with pytest.raises(ImageGenDownloadError, match="non-https"):
        _download(make_hook(api), first)


def test_open_image_too_many_redirects(conn):
    hops = [f"{CDN}/hop{i}.png" for i in range(8)]
    api = FakeAPI(images={hop: redirect(hops[i + 1]) for i, hop in enumerate(hops[:-1])})
    with pytest.raises(ImageGenDownloadError, match="Too many redirects"):
        _download(make_hook(api), hops[0])
    assert len(api.gets) == 6  # the first request and five redirects


class _TrackedStream(httpx.SyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data, self.closed = data, False

    def __iter__(self):
        yield self.data

    def close(self) -> None:
        self.closed = True


def test_open_image_closes_every_response_after_redirects(conn):
    first, final = f"{CDN}/1.png", "https://cdn2.example.test/final.png"
    streams: list[_TrackedStream] = []

    def tracked(data: bytes, **kwargs):
        def answer(request: httpx.Request) -> httpx.Response:
            stream = _TrackedStream(data)
            streams.append(stream)
            return httpx.Response(200 if not kwargs else 302, headers=kwargs, stream=stream)

        return answer

    api = FakeAPI(images={first: tracked(b"", location=final), final: tracked(PNG)})
    with make_hook(api).open_image(first) as stream:
        assert stream.content_length is None  # opened, not read: reading to the end would close it anyway
    assert len(streams) == 2
    assert all(stream.closed for stream in streams)


def test_open_image_closes_the_response_on_an_error_inside_the_block(conn):
    url = f"{CDN}/1.png"
    streams: list[_TrackedStream] = []

    def tracked(request: httpx.Request) -> httpx.Response:
        streams.append(_TrackedStream(PNG))
        return httpx.Response(200, stream=streams[-1])

    api = FakeAPI(images={url: tracked})
    with pytest.raises(RuntimeError, match="consumer failed"), make_hook(api).open_image(url):
        raise RuntimeError("consumer failed")
    assert streams[0].closed


# -- the key stays out of reprs ------------------------------------------------------------------


def test_repr_never_contains_the_key(conn):
    api = FakeAPI(ok())
    hook = make_hook(api)
    hook.generate_images("p")
    assert hook.settings.api_key == KEY  # loaded
    for text in (repr(hook), str(hook), repr(hook.settings), str(hook.settings), repr(hook.policy)):
        assert KEY not in text
    assert "imagegen_default" in repr(hook)


# -- the async twin ------------------------------------------------------------------------------


def test_async_round_trip_same_request_as_sync(conn):
    sync_api, async_api = FakeAPI(ok()), FakeAPI(ok())
    params = {"n": 2, "size": "1536x1024", "output_format": "jpeg", "output_compression": 70}
    sync_result = make_hook(sync_api).generate_images("same", **params)
    async_result = agenerate(make_hook(async_api), "same", **params)
    assert async_result.image_urls == sync_result.image_urls
    assert async_result.request == sync_result.request
    assert async_api.bodies() == sync_api.bodies()
    (request,) = async_api.requests
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["user-agent"].startswith(f"airflow-provider-imagegen/{__version__}")
    assert str(request.url) == GENERATION_URL


def test_async_settings_from_the_connection(conn):
    conn(max_retries=0, timeout="12")
    hook = ImageGenHook()
    settings = asyncio.run(hook.asettings())
    assert (settings.max_retries, settings.timeout, settings.base_url) == (0, 12.0, BASE_URL)
    assert hook.settings is settings  # read once


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


def test_a_read_timeout_is_paid_once_not_retried(conn):
    """The request went out: the API may still be generating and billing it, so no second POST."""
    api = FakeAPI(httpx.ReadTimeout("read timed out"), ok())
    with pytest.raises(ImageGenTimeoutError, match="may have been billed") as caught:
        make_hook(api).generate_images("p")
    assert len(api.posts) == 1
    assert caught.value.permanent
    assert not caught.value.retryable
