"""The request model: every allowed value is accepted, every boundary is checked before any network call."""

from __future__ import annotations

import json

import httpx
import pytest

from airflow_provider_imagegen.exceptions import ImageGenError, ImageGenValidationError
from airflow_provider_imagegen.models import (
    BACKGROUNDS,
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MODERATIONS,
    OUTPUT_FORMATS,
    QUALITIES,
    REQUEST_PARAMETERS,
    SIZES,
    CopiedImage,
    ImageGenerationRequest,
    ImageGenerationResult,
    RequestParameters,
)

# the 'Available values' of the contract's size field, in its order
SPEC_SIZES = [
    "1024x1024",
    "1024x1536",
    "1536x1024",
    "2048x2048",
    "2048x1152",
    "3840x2160",
    "2160x3840",
    "2048x1360",
    "1360x2048",
    "1152x2048",
    "2048x1536",
    "1536x2048",
    "2048x880",
    "880x2048",
    "688x2048",
    "2048x688",
    "2048x1024",
    "1024x2048",
    "auto",
]


def test_allowed_values_match_the_api_contract():
    assert list(SIZES) == SPEC_SIZES
    assert QUALITIES == ("low", "medium", "high")
    assert BACKGROUNDS == ("opaque", "auto")
    assert MODERATIONS == ("low", "auto")
    assert OUTPUT_FORMATS == ("png", "jpeg")
    assert MAX_IMAGES == 10
    assert MAX_PROMPT_CHARS == 32_000


def test_defaults_are_the_documented_ones():
    request = ImageGenerationRequest.build("a cat")
    assert request.to_json() == {
        "prompt": "a cat",
        "n": 1,
        "size": "1024x1024",
        "quality": "medium",
        "background": "auto",
        "moderation": "auto",
        "output_format": "png",
    }


ACCEPTED: list[tuple[str, object]] = [
    *[("size", value) for value in SIZES],
    *[("quality", value) for value in QUALITIES],
    *[("background", value) for value in BACKGROUNDS],
    *[("moderation", value) for value in MODERATIONS],
    *[("output_format", value) for value in OUTPUT_FORMATS],
    ("n", 1),
    ("n", 10),
]


@pytest.mark.parametrize(("name", "value"), ACCEPTED, ids=[f"{n}={v}" for n, v in ACCEPTED])
def test_every_allowed_value_is_accepted_and_sent_as_is(name, value):
    request = ImageGenerationRequest.build("a prompt", **{name: value})
    assert request.to_json()[name] == value


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"output_format": "jpeg", "output_compression": 0}, 0),
        ({"output_format": "jpeg", "output_compression": 100}, 100),
        ({"output_format": "jpeg", "output_compression": 55}, 55),
        ({"output_format": "png", "output_compression": 100}, 100),
    ],
)
def test_compression_accepted(params, expected):
    assert ImageGenerationRequest.build("p", **params).to_json()["output_compression"] == expected


@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_compression_omitted_from_the_body_when_unset(output_format):
    assert "output_compression" not in ImageGenerationRequest.build("p", output_format=output_format).to_json()


@pytest.mark.parametrize("length", [0, 1, MAX_PROMPT_CHARS])
def test_prompt_lengths_accepted(length):
    assert len(ImageGenerationRequest.build("x" * length).prompt) == length


def test_prompt_limit_counts_characters_not_bytes():
    prompt = "猫" * MAX_PROMPT_CHARS  # 96 000 UTF-8 bytes, 32 000 characters
    assert ImageGenerationRequest.build(prompt).prompt == prompt


REJECTED: list[tuple[str, dict[str, object], str, object, str]] = [
    # id, params, field, bad value, a word of "what is allowed"
    ("n=0", {"n": 0}, "n", 0, "1 to 10"),
    ("n=11", {"n": 11}, "n", 11, "1 to 10"),
    ("n=-1", {"n": -1}, "n", -1, "1 to 10"),
    ("n=True", {"n": True}, "n", True, "integer"),
    ("n=False", {"n": False}, "n", False, "integer"),
    ("n=1.5", {"n": 1.5}, "n", 1.5, "integer"),
    ("n=2.0", {"n": 2.0}, "n", 2.0, "integer"),
    ("n='3'", {"n": "3"}, "n", "3", "integer"),
    ("n=None", {"n": None}, "n", None, "integer"),
    ("size", {"size": "1024x1025"}, "size", "1024x1025", "1024x1024"),
    ("size-case", {"size": "AUTO"}, "size", "AUTO", "auto"),
    ("size-int", {"size": 1024}, "size", 1024, "1024x1024"),
    ("quality", {"quality": "ultra"}, "quality", "ultra", "low, medium, high"),
    ("quality-hd", {"quality": "hd"}, "quality", "hd", "low, medium, high"),
    ("background", {"background": "transparent"}, "background", "transparent", "opaque, auto"),
    ("moderation", {"moderation": "high"}, "moderation", "high", "low, auto"),
    ("output_format", {"output_format": "webp"}, "output_format", "webp", "png, jpeg"),
    ("output_format-jpg", {"output_format": "jpg"}, "output_format", "jpg", "png, jpeg"),
    (
        "compression=-1",
        {"output_format": "jpeg", "output_compression": -1},
        "output_compression",
        -1,
        "0 to 100",
    ),
    (
        "compression=101",
        {"output_format": "jpeg", "output_compression": 101},
        "output_compression",
        101,
        "0 to 100",
    ),
    (
        "compression=50.5",
        {"output_format": "jpeg", "output_compression": 50.5},
        "output_compression",
        50.5,
        "integer",
    ),
    (
        "compression=True",
        {"output_format": "jpeg", "output_compression": True},
        "output_compression",
        True,
        "integer",
    ),
    (
        "compression='80'",
        {"output_format": "jpeg", "output_compression": "80"},
        "output_compression",
        "80",
        "integer",
    ),
    ("png+compression=0", {"output_format": "png", "output_compression": 0}, "output_compression", 0, "jpeg"),
    ("png+compression=99", {"output_format": "png", "output_compression": 99}, "output_compression", 99, "jpeg"),
    ("png-default+compression=50", {"output_compression": 50}, "output_compression", 50, "jpeg"),
    ("png+compression=101", {"output_format": "png", "output_compression": 101}, "output_compression", 101, "100"),
    ("unknown-param", {"style": "vivid"}, "style", "vivid", "parameter"),
    ("unknown-model", {"model": "dall-e-3"}, "model", "dall-e-3", "parameter"),
]


def _assert_validation_error(error: BaseException, field: str, value: object, allowed_word: str) -> None:
    assert isinstance(error, ImageGenValidationError)
    assert isinstance(error, ValueError)
    assert isinstance(error, ImageGenError)
    assert error.permanent is True
    assert error.retryable is False
    assert error.field == field
    message = str(error)
    assert field in message
    assert repr(value)[:40] in message
    assert allowed_word in message
    assert allowed_word in error.allowed


@pytest.mark.parametrize(
    ("params", "field", "value", "allowed"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED]
)
def test_bad_values_are_rejected_naming_field_value_and_what_is_allowed(params, field, value, allowed):
    with pytest.raises(ValueError, match=f"Invalid {field}") as caught:
        ImageGenerationRequest.build("a prompt", **params)
    _assert_validation_error(caught.value, field, value, allowed)


def test_prompt_one_character_too_long():
    prompt = "y" * (MAX_PROMPT_CHARS + 1)
    with pytest.raises(ImageGenValidationError) as caught:
        ImageGenerationRequest.build(prompt)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.field == "prompt"
    message = str(error)
    assert "prompt" in message
    assert "32000" in message
    assert "32001" in message  # says how long it was
    assert len(message) < 400  # does not echo a 32 kB prompt into logs


@pytest.mark.parametrize("prompt", [None, 42, b"bytes", ["a", "list"], {"text": "x"}])
def test_non_string_prompt_rejected(prompt):
    with pytest.raises(ImageGenValidationError) as caught:
        ImageGenerationRequest.build(prompt)
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == "prompt"
    assert "string" in str(caught.value)
    assert repr(prompt) in str(caught.value)


def test_unknown_parameters_named_in_a_stable_order():
    with pytest.raises(ImageGenValidationError) as caught:
        ImageGenerationRequest.build("p", zeta=1, alpha=2)
    assert caught.value.field == "alpha"


def test_direct_construction_validates_too():
    with pytest.raises(ImageGenValidationError):
        ImageGenerationRequest(prompt="p", n=0)


def test_request_properties():
    request = ImageGenerationRequest.build("p", size="2048x1152", output_format="jpeg", output_compression=80)
    assert request.dimensions == (2048, 1152)
    assert request.content_type == "image/jpeg"
    assert request.file_extension == "jpg"
    auto = ImageGenerationRequest.build("p", size="auto")
    assert auto.dimensions is None
    assert auto.content_type == "image/png"
    assert auto.file_extension == "png"


def test_result_shortfall():
    request = ImageGenerationRequest.build("p", n=4)
    assert ImageGenerationResult(image_urls=["https://a/1"] * 2, request=request, elapsed=0.1).shortfall == 2
    assert ImageGenerationResult(image_urls=["https://a/1"] * 4, request=request, elapsed=0.1).shortfall == 0
    assert ImageGenerationResult(image_urls=["https://a/1"] * 5, request=request, elapsed=0.1).shortfall == 0


# -- bad input never reaches the network ---------------------------------------------------------

BAD_CALLS: list[tuple[str, dict[str, object], str]] = [
    ("n=0", {"prompt": "p", "n": 0}, "n"),
    ("n=11", {"prompt": "p", "n": 11}, "n"),
    ("n=True", {"prompt": "p", "n": True}, "n"),
    ("size", {"prompt": "p", "size": "999x999"}, "size"),
    ("quality", {"prompt": "p", "quality": "ultra"}, "quality"),
    ("background", {"prompt": "p", "background": "transparent"}, "background"),
    ("moderation", {"prompt": "p", "moderation": "none"}, "moderation"),
    ("format", {"prompt": "p", "output_format": "gif"}, "output_format"),
    ("png+compression", {"prompt": "p", "output_compression": 50}, "output_compression"),
    ("compression=101", {"prompt": "p", "output_format": "jpeg", "output_compression": 101}, "output_compression"),
    ("long prompt", {"prompt": "z" * (MAX_PROMPT_CHARS + 1)}, "prompt"),
    ("prompt None", {"prompt": None}, "prompt"),
]


@pytest.fixture
def recorded_requests(monkeypatch):
    """A connection to a fake API and a MockTransport that records every request it sees."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_IMAGEGEN_DEFAULT",
        json.dumps({"conn_type": "imagegen", "host": "https://api.example.test", "password": "sk-models-test"}),
    )
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"images": ["https://cdn.example.test/1.png"]})

    return requests, httpx.MockTransport(handler)


@pytest.mark.parametrize(("kwargs", "field"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_never_reaches_the_network(recorded_requests, kwargs, field):
    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

    requests, transport = recorded_requests
    hook = ImageGenHook(transport=transport, async_transport=transport)
    with pytest.raises(ImageGenValidationError) as caught:
        hook.generate_images(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field

    import asyncio

    with pytest.raises(ImageGenValidationError):
        asyncio.run(hook.agenerate_images(**kwargs))  # type: ignore[arg-type]
    assert requests == []


def test_good_input_does_reach_the_mock(recorded_requests):
    """The control for the test above: the same set-up does record a valid call."""
    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

    requests, transport = recorded_requests
    result = ImageGenHook(transport=transport).generate_images("p", n=1)
    assert result.image_urls == ["https://cdn.example.test/1.png"]
    assert len(requests) == 1


def test_the_keyword_arguments_type_names_every_request_parameter():
    assert tuple(RequestParameters.__annotations__) == REQUEST_PARAMETERS
    assert "prompt" not in REQUEST_PARAMETERS


def test_copied_image_dict_round_trip():
    image = CopiedImage(
        index=1, bucket="b", key="p/01.png", content_type="image/png", size_bytes=10, sha256="ab", width=2, height=3
    )
    data = image.to_dict()
    assert set(data) == {
        "s3_uri",
        "bucket",
        "key",
        "index",
        "prompt_index",
        "content_type",
        "size_bytes",
        "sha256",
        "width",
        "height",
    }
    assert data["s3_uri"] == "s3://b/p/01.png"
    assert CopiedImage.from_dict(data) == image
