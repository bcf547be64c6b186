"""Which failures the hook retries, how many times, and how long it waits (Retry-After, backoff, budget)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import httpx
import pytest

from airflow_provider_imagegen.exceptions import (
    ImageGenAuthenticationError,
    ImageGenBadRequestError,
    ImageGenBadResponseError,
    ImageGenConnectionError,
    ImageGenContentPolicyError,
    ImageGenNoImagesError,
    ImageGenNotFoundError,
    ImageGenRateLimitError,
    ImageGenServerError,
    ImageGenTimeoutError,
)
from airflow_provider_imagegen.hooks._client import RetryPolicy
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
from airflow_provider_imagegen.models import ImageGenerationRequest
from tests.support import recorded_calls, statuses

from ._fakes import (
    CDN,
    FAST,
    FakeAPI,
    agenerate,
    make_hook,
    ok,
    status,
)

# -- retried and not retried: the scripted fake API, no sockets ------------------------------------


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


def test_a_read_timeout_is_paid_once_not_retried(conn):
    """The request went out: the API may still be generating and billing it, so no second POST."""
    api = FakeAPI(httpx.ReadTimeout("read timed out"), ok())
    with pytest.raises(ImageGenTimeoutError, match="may have been billed") as caught:
        make_hook(api).generate_images("p")
    assert len(api.posts) == 1
    assert caught.value.permanent
    assert not caught.value.retryable


# -- the budget and the waits ----------------------------------------------------------------------


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


# -- the same against the API emulator over loopback -----------------------------------------------


def test_rate_limit_retry_after_is_honoured(emulator, hook):
    emulator.configure(rate_limit_burst=1, retry_after=1)
    result = hook.generate_images("p")
    assert result.attempts == 2
    first, second = recorded_calls(emulator, 2)
    assert (first.status, second.status) == (429, 200)
    gap = second.started_at - first.finished_at
    assert gap >= 1.0, f"retried {gap:.3f} s after a 429 that asked for 1 s"
    assert gap < 5.0


def test_rate_limit_without_retry_after_uses_backoff(emulator, hook):
    emulator.configure(rate_limit_burst=2, retry_after=None)
    result = hook.generate_images("p")
    assert result.attempts == 3
    assert statuses(emulator, [429, 429, 200]) == [429, 429, 200]


def test_rate_limit_exhausting_the_budget(emulator, monkeypatch):
    conn = json.loads(emulator.connection_json())
    conn.setdefault("extra", {})["max_retries"] = 1
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))
    emulator.configure(rate_limit_burst=5, retry_after=None)
    with pytest.raises(ImageGenRateLimitError):
        ImageGenHook(retry_policy=FAST).generate_images("p")
    assert statuses(emulator, [429, 429]) == [429, 429]


def test_server_error_retried_then_success(emulator, hook):
    emulator.configure(server_errors=1)
    result = hook.generate_images("p")
    assert result.attempts == 2
    assert statuses(emulator, [500, 200]) == [500, 200]
    assert len(result.image_urls) == 1


@pytest.mark.parametrize("code", [502, 503])
def test_other_server_errors_retried(emulator, hook, code):
    emulator.configure(server_errors=2, server_error_status=code)
    assert hook.generate_images("p").attempts == 3
    assert statuses(emulator, [code, code, 200]) == [code, code, 200]


def test_server_errors_exhausting_the_budget(emulator, hook):
    emulator.configure(server_errors=100)
    with pytest.raises(ImageGenServerError) as caught:
        hook.generate_images("p")
    budget = hook.settings.max_retries
    assert len(recorded_calls(emulator, budget + 1)) == budget + 1
    assert caught.value.status_code == 500


def test_bad_request_is_not_retried(emulator, hook):
    """A request the emulator rejects (forged past the client-side validation): exactly one call."""
    request = ImageGenerationRequest.build("p")
    object.__setattr__(request, "n", 0)  # what a buggy caller could send if validation were skipped
    with pytest.raises(ImageGenBadRequestError) as caught:
        hook.send(request)
    assert not isinstance(caught.value, ImageGenContentPolicyError)
    assert caught.value.status_code == 400
    assert statuses(emulator, [400]) == [400]


def test_text_rate_limit(emulator, hook):
    emulator.configure(error_format="text", rate_limit_burst=1, retry_after=None)
    assert hook.generate_images("p").attempts == 2


def test_async_rate_limit_retry_after_is_honoured(emulator, imagegen_conn):
    emulator.configure(rate_limit_burst=1, retry_after=1)
    result = asyncio.run(ImageGenHook(imagegen_conn, retry_policy=FAST).agenerate_images("p"))
    assert result.attempts == 2
    first, second = recorded_calls(emulator, 2)
    assert second.started_at - first.finished_at >= 1.0
