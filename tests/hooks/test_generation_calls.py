"""The generation call: what is sent, what comes back, the pooled clients and the async twin."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest
import respx

from airflow_provider_imagegen import __version__
from airflow_provider_imagegen.exceptions import (
    ImageGenValidationError,
)
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
from airflow_provider_imagegen.image_format import JPEG_SIGNATURE, PNG_SIGNATURE
from airflow_provider_imagegen.models import ImageGenerationRequest
from tests.support import recorded_calls, statuses

from ._fakes import (
    BASE_URL,
    CDN,
    FAST,
    GENERATION_URL,
    KEY,
    FakeAPI,
    agenerate,
    make_hook,
    ok,
    read_image,
)

# -- what is sent: the scripted fake API (httpx.MockTransport, respx), no sockets ------------------


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


def test_validation_happens_before_retries_and_network(conn):
    api = FakeAPI(ok())
    with pytest.raises(ImageGenValidationError):
        make_hook(api).generate_images("p", n=11)
    assert api.requests == []


# -- the key stays out of reprs --------------------------------------------------------------------


def test_repr_never_contains_the_key(conn):
    api = FakeAPI(ok())
    hook = make_hook(api)
    hook.generate_images("p")
    assert hook.settings.api_key == KEY  # loaded
    for text in (repr(hook), str(hook), repr(hook.settings), str(hook.settings), repr(hook.policy)):
        assert KEY not in text
    assert "imagegen_default" in repr(hook)


# -- the async twin --------------------------------------------------------------------------------


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


# -- round trips: the API emulator over loopback ---------------------------------------------------


def test_round_trip_three_images(emulator, hook):
    result = hook.generate_images("a lighthouse at dusk", n=3, size="1024x1024", quality="low")
    assert len(result.image_urls) == 3
    assert len(set(result.image_urls)) == 3
    assert result.attempts == 1
    assert result.shortfall == 0

    (call,) = recorded_calls(emulator, 1)
    assert call.status == 200
    assert call.body == result.request.to_json()
    assert call.has_authorization
    assert "authorization" not in call.headers
    assert call.headers["user-agent"].startswith("airflow-provider-imagegen/")

    expected = emulator.state.sha256_by_url()
    for url in result.image_urls:
        data = read_image(hook, url)
        assert data.startswith(PNG_SIGNATURE)
        assert hashlib.sha256(data).hexdigest() == expected[url]

    downloads = recorded_calls(emulator, 3, kind="download")
    assert len(downloads) == 3
    assert all(not call.has_authorization for call in downloads)
    assert all(call.status == 200 for call in downloads)


def test_round_trip_jpeg(emulator, hook):
    result = hook.generate_images("a jpeg", output_format="jpeg", output_compression=60)
    (url,) = result.image_urls
    with hook.open_image(url) as stream:
        assert stream.content_type == "image/jpeg"
        assert b"".join(stream.iter_bytes()).startswith(JPEG_SIGNATURE)


def test_fewer_images_than_asked(emulator, hook):
    emulator.configure(max_images=2)
    result = hook.generate_images("p", n=4)
    assert len(result.image_urls) == 2
    assert result.shortfall == 2
    assert result.attempts == 1


def test_async_round_trip(emulator, imagegen_conn):
    hook = ImageGenHook(imagegen_conn, retry_policy=FAST)
    emulator.configure(server_errors=1)
    result = asyncio.run(hook.agenerate_images("async fox", n=2, quality="low"))
    assert len(result.image_urls) == 2
    assert result.attempts == 2
    assert statuses(emulator, [500, 200]) == [500, 200]
    assert recorded_calls(emulator, 2)[-1].body == result.request.to_json()
    assert all(read_image(hook, url).startswith(PNG_SIGNATURE) for url in result.image_urls)
    hook.close()


def test_hook_settings_from_the_emulator_connection(emulator, hook):
    assert json.loads(emulator.connection_json())["conn_type"] == "imagegen"
    assert hook.settings.base_url == emulator.base_url.rstrip("/")
    assert hook.settings.api_key == emulator.api_key
    assert hook.settings.url.startswith(emulator.base_url.rstrip("/"))
