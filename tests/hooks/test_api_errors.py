"""ImageGenHook against the real API emulator over loopback: one test per behaviour the API can show."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import pytest

from airflow_provider_imagegen.exceptions import (
    ImageGenAuthenticationError,
    ImageGenBadRequestError,
    ImageGenBadResponseError,
    ImageGenContentPolicyError,
    ImageGenDownloadError,
    ImageGenNoImagesError,
    ImageGenRateLimitError,
    ImageGenServerError,
)
from airflow_provider_imagegen.hooks._client import RetryPolicy
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
from airflow_provider_imagegen.models import ImageGenerationRequest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
#: fast backoff so retry tests take milliseconds (Retry-After is still honoured exactly)
FAST = RetryPolicy(initial=0.01, maximum=0.02)


@pytest.fixture
def hook(imagegen_conn) -> ImageGenHook:
    hook = ImageGenHook(imagegen_conn, retry_policy=FAST)
    yield hook
    hook.close()


def _download(hook: ImageGenHook, url: str) -> bytes:
    with hook.open_image(url) as stream:
        return b"".join(stream.iter_bytes())


def _recorded(emulator, count: int, kind: str = "generation", timeout: float = 10.0) -> list:
    """The emulator's records, once ``count`` are there (bounded wait, not a sleep for a server).

    The emulator records a call just after handing its last byte to the server, so the client
    can see the whole answer a moment before the record exists.
    """
    state = emulator.state
    read = state.generation_calls if kind == "generation" else state.download_calls
    deadline = time.monotonic() + timeout
    calls = read()
    while len(calls) < count and time.monotonic() < deadline:
        time.sleep(0.005)
        calls = read()
    return calls


def _statuses(emulator, expected: list[int]) -> list[int]:
    return [call.status for call in _recorded(emulator, len(expected))]


def test_round_trip_three_images(emulator, hook):
    result = hook.generate_images("a lighthouse at dusk", n=3, size="1024x1024", quality="low")
    assert len(result.image_urls) == 3
    assert len(set(result.image_urls)) == 3
    assert result.attempts == 1
    assert result.shortfall == 0

    (call,) = _recorded(emulator, 1)
    assert call.status == 200
    assert call.body == result.request.to_json()
    assert call.has_authorization
    assert "authorization" not in call.headers
    assert call.headers["user-agent"].startswith("airflow-provider-imagegen/")

    expected = emulator.state.sha256_by_url()
    for url in result.image_urls:
        data = _download(hook, url)
        assert data.startswith(PNG_SIGNATURE)
        assert hashlib.sha256(data).hexdigest() == expected[url]

    downloads = _recorded(emulator, 3, kind="download")
    assert len(downloads) == 3
    assert all(not call.has_authorization for call in downloads)
    assert all(call.status == 200 for call in downloads)


def test_round_trip_jpeg(emulator, hook):
    result = hook.generate_images("a jpeg", output_format="jpeg", output_compression=60)
    (url,) = result.image_urls
    with hook.open_image(url) as stream:
        assert stream.content_type == "image/jpeg"
        assert b"".join(stream.iter_bytes()).startswith(JPEG_SIGNATURE)


def test_rate_limit_retry_after_is_honoured(emulator, hook):
    emulator.configure(rate_limit_burst=1, retry_after=1)
    result = hook.generate_images("p")
    assert result.attempts == 2
    first, second = _recorded(emulator, 2)
    assert (first.status, second.status) == (429, 200)
    gap = second.started_at - first.finished_at
    assert gap >= 1.0, f"retried {gap:.3f} s after a 429 that asked for 1 s"
    assert gap < 5.0


def test_rate_limit_without_retry_after_uses_backoff(emulator, hook):
    emulator.configure(rate_limit_burst=2, retry_after=None)
    result = hook.generate_images("p")
    assert result.attempts == 3
    assert _statuses(emulator, [429, 429, 200]) == [429, 429, 200]


def test_rate_limit_exhausting_the_budget(emulator, monkeypatch):
    conn = json.loads(emulator.connection_json())
    conn.setdefault("extra", {})["max_retries"] = 1
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))
    emulator.configure(rate_limit_burst=5, retry_after=None)
    with pytest.raises(ImageGenRateLimitError):
        ImageGenHook(retry_policy=FAST).generate_images("p")
    assert _statuses(emulator, [429, 429]) == [429, 429]


def test_server_error_retried_then_success(emulator, hook):
    emulator.configure(server_errors=1)
    result = hook.generate_images("p")
    assert result.attempts == 2
    assert _statuses(emulator, [500, 200]) == [500, 200]
    assert len(result.image_urls) == 1


@pytest.mark.parametrize("code", [502, 503])
def test_other_server_errors_retried(emulator, hook, code):
    emulator.configure(server_errors=2, server_error_status=code)
    assert hook.generate_images("p").attempts == 3
    assert _statuses(emulator, [code, code, 200]) == [code, code, 200]


def test_server_errors_exhausting_the_budget(emulator, hook):
    emulator.configure(server_errors=100)
    with pytest.raises(ImageGenServerError) as caught:
        hook.generate_images("p")
    budget = hook.settings.max_retries
    assert len(_recorded(emulator, budget + 1)) == budget + 1
    assert caught.value.status_code == 500


def test_bad_request_is_not_retried(emulator, hook):
    """A request the emulator rejects (forged past the client-side validation): exactly one call."""
    request = ImageGenerationRequest.build("p")
    object.__setattr__(request, "n", 0)  # what a buggy caller could send if validation were skipped
    with pytest.raises(ImageGenBadRequestError) as caught:
        hook.send(request)
    assert not isinstance(caught.value, ImageGenContentPolicyError)
    assert caught.value.status_code == 400
    assert _statuses(emulator, [400]) == [400]


def test_wrong_key_is_an_authentication_error(emulator, monkeypatch):
    conn = json.loads(emulator.connection_json())
    conn["password"] = "sk-wrong-key"
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))
    with pytest.raises(ImageGenAuthenticationError) as caught:
        ImageGenHook(retry_policy=FAST).generate_images("p")
    assert caught.value.status_code == 401
    assert "sk-wrong-key" not in str(caught.value)
    assert _statuses(emulator, [401]) == [401]


def test_auth_is_checked_before_validation(emulator, monkeypatch):
    conn = json.loads(emulator.connection_json())
    conn["password"] = "sk-wrong-key"
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))
    ok, message = ImageGenHook().test_connection()
    assert ok is False
    assert "API key" in message
    assert _statuses(emulator, [401]) == [401]


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
    (call,) = _recorded(emulator, 1)
    assert call.status == 400
    assert call.body["n"] == 0
    assert len(emulator.state.images) == images_before  # nothing was generated


def test_fewer_images_than_asked(emulator, hook):
    emulator.configure(max_images=2)
    result = hook.generate_images("p", n=4)
    assert len(result.image_urls) == 2
    assert result.shortfall == 2
    assert result.attempts == 1


def test_content_policy_rejection(emulator, hook):
    with pytest.raises(ImageGenContentPolicyError) as caught:
        hook.generate_images("something forbidden here")
    assert isinstance(caught.value, ImageGenBadRequestError)
    assert caught.value.permanent
    assert _statuses(emulator, [400]) == [400]


def test_empty_images(emulator, hook):
    emulator.configure(response_mode="empty_images")
    with pytest.raises(ImageGenNoImagesError, match=r"(?i)no images returned"):
        hook.generate_images("p")
    assert len(_recorded(emulator, 1)) == 1


def test_malformed_json(emulator, hook):
    emulator.configure(response_mode="malformed_json")
    with pytest.raises(ImageGenBadResponseError, match="not JSON") as caught:
        hook.generate_images("p")
    assert not isinstance(caught.value, ImageGenNoImagesError)
    assert len(_recorded(emulator, 1)) == 1


def test_no_images_key(emulator, hook):
    emulator.configure(response_mode="no_images_key")
    with pytest.raises(ImageGenBadResponseError, match="'images'") as caught:
        hook.generate_images("p")
    assert not isinstance(caught.value, ImageGenNoImagesError)


def test_text_error_bodies(emulator, hook, monkeypatch):
    emulator.configure(error_format="text", server_errors=1)
    assert hook.generate_images("p").attempts == 2
    assert _statuses(emulator, [500, 200]) == [500, 200]

    with pytest.raises(ImageGenContentPolicyError):
        hook.generate_images("forbidden words")

    conn = json.loads(emulator.connection_json())
    conn["password"] = "sk-wrong-key"
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))
    with pytest.raises(ImageGenAuthenticationError):
        ImageGenHook(retry_policy=FAST).generate_images("p")


def test_text_rate_limit(emulator, hook):
    emulator.configure(error_format="text", rate_limit_burst=1, retry_after=None)
    assert hook.generate_images("p").attempts == 2


def test_expired_url_is_a_download_error(emulator, hook):
    emulator.configure(url_ttl=0)
    (url,) = hook.generate_images("p").image_urls
    with pytest.raises(ImageGenDownloadError, match="HTTP 404"):
        _download(hook, url)


def test_truncated_body_is_a_download_error(emulator, hook):
    emulator.configure(truncate_bodies=True)
    (url,) = hook.generate_images("p").image_urls
    with pytest.raises(ImageGenDownloadError):
        _download(hook, url)


def test_byte_cap_against_the_emulator(emulator, imagegen_conn):
    hook = ImageGenHook(imagegen_conn, retry_policy=FAST, max_image_bytes=1024)
    emulator.configure(noise=True)
    (url,) = hook.generate_images("p").image_urls
    with pytest.raises(ImageGenDownloadError, match="cap"):
        _download(hook, url)
    hook.close()


def test_async_round_trip(emulator, imagegen_conn):
    hook = ImageGenHook(imagegen_conn, retry_policy=FAST)
    emulator.configure(server_errors=1)
    result = asyncio.run(hook.agenerate_images("async fox", n=2, quality="low"))
    assert len(result.image_urls) == 2
    assert result.attempts == 2
    assert _statuses(emulator, [500, 200]) == [500, 200]
    assert _recorded(emulator, 2)[-1].body == result.request.to_json()
    assert all(_download(hook, url).startswith(PNG_SIGNATURE) for url in result.image_urls)
    hook.close()


def test_async_rate_limit_retry_after_is_honoured(emulator, imagegen_conn):
    emulator.configure(rate_limit_burst=1, retry_after=1)
    result = asyncio.run(ImageGenHook(imagegen_conn, retry_policy=FAST).agenerate_images("p"))
    assert result.attempts == 2
    first, second = _recorded(emulator, 2)
    assert second.started_at - first.finished_at >= 1.0


def test_async_permanent_errors(emulator, imagegen_conn):
    with pytest.raises(ImageGenContentPolicyError):
        asyncio.run(ImageGenHook(imagegen_conn, retry_policy=FAST).agenerate_images("forbidden"))
    assert _statuses(emulator, [400]) == [400]


def test_hook_settings_from_the_emulator_connection(emulator, hook):
    assert json.loads(emulator.connection_json())["conn_type"] == "imagegen"
    assert hook.settings.base_url == emulator.base_url.rstrip("/")
    assert hook.settings.api_key == emulator.api_key
    assert hook.settings.url.startswith(emulator.base_url.rstrip("/"))
