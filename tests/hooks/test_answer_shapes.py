"""Every answer shape the API contract allows: ``images`` items as URL strings or as objects carrying ``url``.

The contract's prose says "Array of generated image URLs", its example answer ``{"images": [{}]}``.
Both shapes are accepted, by the one parser the worker's path (``send``) and the trigger's path
(``asend``) share; any other item fails permanently (one paid call), its message naming the item's
keys and types but never a value (a value may be a signed URL).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_imagegen.exceptions import (
    ImageGenBadResponseError,
    ImageGenNoImagesError,
    error_from_event,
)
from airflow_provider_imagegen.hooks import _client
from airflow_provider_imagegen.hooks._client import parse_image_urls
from airflow_provider_imagegen.version_compat import AirflowFailException, TaskDeferred
from tests.support import PREFIX, list_keys, make_context, object_sha256, read_json, served_sha256s

if TYPE_CHECKING:
    pass

TOKEN = "sig=SECRETc2lnbmVkLXRva2Vu"  # what a signed URL carries: must never reach a message
SIGNED = f"https://cdn.example.test/img/1.png?X-Amz-Expires=3600&{TOKEN}"
SIGNED_2 = f"http://127.0.0.1:9/images/2.png?{TOKEN}"


def _response(body: Any) -> httpx.Response:
    return httpx.Response(200, json=body, request=httpx.Request("POST", "https://api.example.test/v3/x"))


def _refusal(images: list[Any]) -> ImageGenBadResponseError:
    with pytest.raises(ImageGenBadResponseError) as caught:
        parse_image_urls(_response({"images": images}))
    return caught.value


def _assert_secret_free(error: BaseException) -> None:
    for text in (str(error), repr(error), json.dumps([str(arg) for arg in error.args])):
        assert "SECRET" not in text, text
        assert "cdn.example.test" not in text, text
        assert "127.0.0.1" not in text, text


# -- unit: accepted shapes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "urls"),
    [
        pytest.param({"images": [SIGNED, SIGNED_2]}, [SIGNED, SIGNED_2], id="strings"),
        pytest.param({"images": [{"url": SIGNED}, {"url": SIGNED_2}]}, [SIGNED, SIGNED_2], id="objects"),
        pytest.param(
            {"images": [{"url": SIGNED, "revised_prompt": "a fox", "b64_json": None, "size": [1024, 1024]}]},
            [SIGNED],
            id="objects-with-extra-fields",
        ),
        pytest.param(
            {"images": [SIGNED], "created": 1767225600, "usage": {"total_tokens": 42}, "data": None},
            [SIGNED],
            id="extra-top-level-keys",
        ),
        pytest.param(
            {"images": [SIGNED, {"url": SIGNED_2, "revised_prompt": "x"}], "id": "gen_1"},
            [SIGNED, SIGNED_2],
            id="mixed",
        ),
        pytest.param({"images": [{"url": "HTTPS://cdn.example.test/a.png"}]}, ["HTTPS://cdn.example.test/a.png"]),
    ],
)
def test_accepted_shapes(body: dict[str, Any], urls: list[str]) -> None:
    assert parse_image_urls(_response(body)) == urls


# -- unit: every other item shape fails permanently, naming keys and types only --------------------

BAD_ITEMS = [
    pytest.param({}, r"images\[0\] is an object \(dict\) with keys \{\} and no 'url'", id="empty-object"),
    pytest.param(
        {"b64_json": "iVBORw0KGgo" + TOKEN, "revised_prompt": "a fox " + TOKEN},
        r"images\[0\] is an object \(dict\) with keys \{b64_json: str, revised_prompt: str\} and no 'url'",
        id="object-without-url",
    ),
    pytest.param({"URL": SIGNED}, r"keys \{URL: str\} and no 'url'", id="url-key-spelled-otherwise"),
    pytest.param({"href": SIGNED, "id": 7}, r"keys \{href: str, id: int\} and no 'url'", id="href"),
    pytest.param({"url": 42}, r"keys \{url: int\} whose 'url' is not an http\(s\) URL", id="url-int"),
    pytest.param({"url": None}, r"keys \{url: NoneType\} whose 'url'", id="url-null"),
    pytest.param({"url": [SIGNED]}, r"keys \{url: list\} whose 'url'", id="url-list"),
    pytest.param({"url": {"href": SIGNED}}, r"keys \{url: dict\} whose 'url'", id="url-object"),
    pytest.param({"url": True}, r"keys \{url: bool\} whose 'url'", id="url-bool"),
    pytest.param(
        {"url": "ftp://cdn.example.test/1.png?" + TOKEN, "revised_prompt": "p"},
        r"keys \{revised_prompt: str, url: str\} whose 'url' is not an http\(s\) URL",
        id="url-not-http",
    ),
    pytest.param({"url": "http://[cdn.example.test/" + TOKEN}, r"keys \{url: str\} whose 'url'", id="url-unparsable"),
    pytest.param({"url": ""}, r"keys \{url: str\} whose 'url'", id="url-empty"),
    pytest.param({SIGNED: "x"}, r"keys \{<a key of \d+ characters>: str\} and no 'url'", id="url-as-a-key"),
    pytest.param(42, r"images\[0\] is of type int", id="int"),
    pytest.param(1.5, r"images\[0\] is of type float", id="float"),
    pytest.param(False, r"images\[0\] is of type bool", id="bool"),
    pytest.param(None, r"images\[0\] is of type NoneType", id="null"),
    pytest.param([SIGNED], r"images\[0\] is of type list", id="list"),
    pytest.param("data:image/png;base64,iVBOR" + TOKEN, r"is a str of \d+ characters that is not an http\(s\) URL"),
    pytest.param("cdn.example.test/1.png?" + TOKEN, r"is a str of \d+ characters", id="no-scheme"),
    pytest.param("http://[cdn.example.test/" + TOKEN, r"is a str of \d+ characters", id="unparsable-url"),
]


@pytest.mark.parametrize(("item", "words"), BAD_ITEMS)
def test_bad_item_shapes_fail_permanently_naming_the_shape_not_the_value(item: Any, words: str) -> None:
    error = _refusal([item])

    assert re.search(words, str(error)), str(error)
    assert "expected an http(s) URL, or an object with one in 'url'" in str(error)
    assert not isinstance(error, ImageGenNoImagesError)
    assert error.permanent is True
    assert error.retryable is False
    _assert_secret_free(error)


def test_the_first_bad_item_is_named_by_its_position() -> None:
    error = _refusal([SIGNED, {"url": SIGNED_2}, {"b64_json": TOKEN}, 42])

    assert "images[2] is an object (dict) with keys {b64_json: str} and no 'url'" in str(error)
    _assert_secret_free(error)


def test_an_object_with_many_keys_is_described_briefly() -> None:
    error = _refusal([{f"field_{number:03d}": TOKEN for number in range(500)}])

    assert "field_000: str" in str(error)
    assert "and 492 more} and no 'url'" in str(error)
    assert len(str(error)) < 500
    _assert_secret_free(error)


# -- unit: a property over arbitrary JSON items ----------------------------------------------------

_texts = st.text(max_size=12).map(lambda text: "~" + text + TOKEN)  # "~": never a URL scheme
_urls = st.sampled_from([SIGNED, SIGNED_2, "http://[x" + TOKEN, "ftp://x/" + TOKEN])
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _texts | _urls
_keys = st.sampled_from(["url", "b64_json", "revised_prompt", "URL", SIGNED]) | st.text(max_size=6)
_json = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3), max_leaves=8
)


def _expected_url(item: Any) -> str | None:
    """The oracle: the URL an item stands for, or None."""
    candidate = item.get("url") if isinstance(item, dict) else item
    return candidate if candidate in (SIGNED, SIGNED_2) else None


@settings(max_examples=300, deadline=None)
@given(items=st.lists(_json | _urls | st.builds(lambda url: {"url": url}, _urls), min_size=1, max_size=4))
def test_any_items_give_their_urls_or_a_permanent_secret_free_refusal(items: list[Any]) -> None:
    expected = [_expected_url(item) for item in items]
    if all(expected):
        assert parse_image_urls(_response({"images": items})) == expected
        return
    error = _refusal(items)
    assert f"images[{expected.index(None)}]" in str(error)
    assert error.permanent is True
    assert TOKEN not in str(error)


# -- one parser for both paths ---------------------------------------------------------------------


def test_the_worker_and_the_trigger_parse_with_the_same_function(emulator, imagegen_conn, monkeypatch) -> None:
    from airflow_provider_imagegen.hooks import imagegen

    assert imagegen.parse_image_urls is _client.parse_image_urls
    parsed: list[str] = []

    def spy(response: httpx.Response) -> list[str]:
        parsed.append("call")
        return _client.parse_image_urls(response)

    monkeypatch.setattr(imagegen, "parse_image_urls", spy)
    emulator.configure(response_mode="objects")
    hook = imagegen.ImageGenHook(imagegen_conn)
    try:
        assert len(hook.generate_images("a fox", n=2).image_urls) == 2
        assert len(asyncio.run(hook.agenerate_images("a fox", n=2)).image_urls) == 2
    finally:
        hook.close()
    assert parsed == ["call", "call"]


# -- through the emulator over loopback: the operator, then the deferrable path --------------------


class RecordingStats:
    """Every counter a try sends to Airflow's metrics (through ``TryTally._send``, whatever the facade)."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    def send(self, tally: Any, kind: str, name: str, value: float, **tags: str) -> None:
        if kind == "incr":
            self.counters[f"imagegen.{name}"] = self.counters.get(f"imagegen.{name}", 0) + int(value)


@pytest.fixture
def stats(monkeypatch) -> RecordingStats:
    from airflow_provider_imagegen.metrics import TryTally

    recorder = RecordingStats()
    monkeypatch.setattr(TryTally, "_send", lambda tally, *args, **tags: recorder.send(tally, *args, **tags))
    return recorder


def _assert_stored(xcom: list[dict[str, Any]], emulator: Any, s3: Any, bucket: str) -> None:
    assert len(xcom) == 2
    served = served_sha256s(emulator)
    assert len(served) == 2
    assert {object_sha256(s3, bucket, item["key"]) for item in xcom} == served
    assert read_json(s3, bucket, f"{PREFIX}/manifest.json")["images"] == xcom
    assert list_keys(s3, bucket) == [f"{PREFIX}/00.png", f"{PREFIX}/01.png", f"{PREFIX}/manifest.json"]


def _run_trigger(trigger: Any) -> dict[str, Any]:
    async def collect() -> list[Any]:
        return [event async for event in trigger.run()]

    [event] = asyncio.run(collect())
    return event.payload


def test_object_answers_are_stored_by_the_operator(make_op, emulator, s3, s3_bucket, stats, task_logs) -> None:
    emulator.configure(response_mode="objects")

    xcom = make_op(n=2).execute(make_context())

    _assert_stored(xcom, emulator, s3, s3_bucket)
    assert len(emulator.state.generation_calls()) == 1
    assert "Cost of this try: 1 paid generation call(s) for 1 prompt(s); images requested 2, received 2" in task_logs()
    assert stats.counters["imagegen.generation_calls.success"] == 1


def test_object_answers_are_stored_by_the_deferrable_path(make_op, emulator, s3, s3_bucket) -> None:
    emulator.configure(response_mode="objects")
    context = make_context()

    with pytest.raises(TaskDeferred) as deferred:
        make_op(n=2, deferrable=True).execute(context)
    event = _run_trigger(deferred.value.trigger)

    outcome = event["results"]["0"]
    assert outcome["status"] == "success", outcome
    assert all(emulator.state.image_for_url(url) is not None for url in outcome["image_urls"])
    xcom = make_op(n=2, deferrable=True).execute_complete(context, event)
    _assert_stored(xcom, emulator, s3, s3_bucket)
    assert len(emulator.state.generation_calls()) == 1


def test_an_object_without_url_fails_the_task_once_paid_and_counted(
    make_op, emulator, s3, s3_bucket, stats, task_logs, monkeypatch
) -> None:
    conn = json.loads(emulator.connection_json())
    conn["extra"] = {**conn["extra"], "max_retries": 3}
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))
    emulator.configure(response_mode="objects_without_url")

    with pytest.raises(AirflowFailException) as failed:
        make_op(n=2, retries=3).execute(make_context())

    assert isinstance(failed.value.__cause__, ImageGenBadResponseError)
    assert "images[0] is an object (dict) with keys {b64_json: str, revised_prompt: str} and no 'url'" in str(
        failed.value
    )
    assert "iVBOR" not in str(failed.value)  # not a byte of the base64 image either
    assert [call.status for call in emulator.state.generation_calls()] == [200]  # answered: paid, never retried
    # the call is in the try's cost line and in the metrics, as every failed generation call is
    assert re.search(r"Cost of this try: 1 paid generation call\(s\) for 1 prompt\(s\)", task_logs())
    assert stats.counters == {"imagegen.generation_calls.ImageGenBadResponseError": 1}
    assert list_keys(s3, s3_bucket) == []


def test_an_object_without_url_fails_the_deferrable_path_permanently(make_op, emulator, s3, s3_bucket) -> None:
    emulator.configure(response_mode="objects_without_url")
    context = make_context()

    with pytest.raises(TaskDeferred) as deferred:
        make_op(n=2, deferrable=True).execute(context)
    event = _run_trigger(deferred.value.trigger)

    outcome = event["results"]["0"]
    assert (outcome["status"], outcome["error_class"], outcome["permanent"]) == (
        "error",
        "ImageGenBadResponseError",
        True,
    )
    assert "keys {b64_json: str, revised_prompt: str} and no 'url'" in outcome["message"]
    assert "iVBOR" not in json.dumps(event)
    assert type(error_from_event(outcome)) is ImageGenBadResponseError
    with pytest.raises(AirflowFailException, match=r"no 'url'"):
        make_op(n=2, deferrable=True).execute_complete(context, event)
    assert [call.status for call in emulator.state.generation_calls()] == [200]
    assert list_keys(s3, s3_bucket) == []
