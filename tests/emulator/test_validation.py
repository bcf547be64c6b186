"""The request contract, enforced over HTTP and as a pure function (with hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_imagegen.emulator.validation import (
    KNOWN_FIELDS,
    SIZES,
    GenerationRequest,
    RequestValidationError,
    validate_request,
)

INVALID = [
    ({}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"prompt": ["a"]}, "prompt"),
    ({"prompt": "x" * 32001}, "prompt"),
    ({"prompt": "p", "n": 0}, "n"),
    ({"prompt": "p", "n": 11}, "n"),
    ({"prompt": "p", "n": -1}, "n"),
    ({"prompt": "p", "n": True}, "n"),
    ({"prompt": "p", "n": 1.5}, "n"),
    ({"prompt": "p", "n": 2.0}, "n"),
    ({"prompt": "p", "n": "2"}, "n"),
    ({"prompt": "p", "n": None}, "n"),
    ({"prompt": "p", "size": "512x512"}, "size"),
    ({"prompt": "p", "size": "AUTO"}, "size"),
    ({"prompt": "p", "size": 1024}, "size"),
    ({"prompt": "p", "quality": "ultra"}, "quality"),
    ({"prompt": "p", "quality": "HIGH"}, "quality"),
    ({"prompt": "p", "background": "transparent"}, "background"),
    ({"prompt": "p", "moderation": "high"}, "moderation"),
    ({"prompt": "p", "output_format": "webp"}, "output_format"),
    ({"prompt": "p", "output_format": "jpg"}, "output_format"),
    ({"prompt": "p", "output_format": "jpeg", "output_compression": 101}, "output_compression"),
    ({"prompt": "p", "output_format": "jpeg", "output_compression": -1}, "output_compression"),
    ({"prompt": "p", "output_format": "jpeg", "output_compression": 50.5}, "output_compression"),
    ({"prompt": "p", "output_format": "jpeg", "output_compression": True}, "output_compression"),
    ({"prompt": "p", "output_format": "jpeg", "output_compression": "50"}, "output_compression"),
    ({"prompt": "p", "output_compression": 50}, "output_compression"),
    ({"prompt": "p", "output_format": "png", "output_compression": 0}, "output_compression"),
    ({"prompt": "p", "style": "vivid"}, "style"),
    ({"prompt": "p", "model": "gpt-image-2"}, "model"),
]

VALID = [
    {"prompt": "x" * 32000},
    {"prompt": "p", "n": 1},
    {"prompt": "p", "n": 10, "output_format": "jpeg", "size": "1024x1024"},
    {"prompt": "p", "output_format": "png", "output_compression": 100},
    {"prompt": "p", "output_format": "jpeg", "output_compression": 0},
    {"prompt": "p", "output_format": "jpeg", "output_compression": 100},
    {"prompt": "p", "quality": "high", "background": "opaque", "moderation": "low"},
    {"prompt": "猫が月を見ている", "quality": "low", "background": "auto", "moderation": "auto"},
]


@pytest.mark.parametrize(("body", "param"), INVALID, ids=[f"{p}:{str(b)[:40]}" for b, p in INVALID])
def test_invalid_bodies_are_400_naming_the_field(emu, generate, body, param):
    response = generate(body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert param in error["message"]
    assert error["code"] in {"invalid_parameter", "missing_required_parameter", "unknown_parameter"}
    assert "x-request-id" in response.headers
    assert emu.state.images == []


@pytest.mark.parametrize("body", VALID, ids=[str(b)[:40] for b in VALID])
def test_valid_bodies_are_accepted(emu, generate, body):
    emu.configure(max_images=1)  # keep rendering cheap for n=10

    response = generate(body)

    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1


@pytest.mark.parametrize(
    ("value", "shown"), [(11, "11"), (0, "0"), (True, "true"), (1.5, "1.5"), ("3", '"3"'), (None, "null")]
)
def test_n_error_message(generate, value, shown):
    response = generate({"prompt": "p", "n": value})

    assert response.json()["error"]["message"] == f"n must be an integer between 1 and 10, got {shown}"


def test_unknown_field_code(generate):
    error = generate({"prompt": "p", "style": "vivid"}).json()["error"]

    assert error["code"] == "unknown_parameter"
    assert "'style'" in error["message"]


def test_missing_prompt_code(generate):
    error = generate({"n": 1}).json()["error"]

    assert (error["code"], error["param"]) == ("missing_required_parameter", "prompt")


@pytest.mark.parametrize(
    "raw", [b'{"prompt": ', b"", b"not json", b"\xff\xfe{}", b"[1, 2]", b'"just a string"', b"null"]
)
def test_malformed_or_non_object_body_is_400(generate, raw):
    response = generate(raw=raw, headers=None)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["param"] is None


def test_validation_error_as_text(emu, generate):
    emu.configure(error_format="text")

    response = generate({"prompt": "p", "n": 11})

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "n must be an integer between 1 and 10, got 11"
    assert "x-request-id" in response.headers


# ------------------------------------------------------------------ pure-function properties
json_scalars = st.none() | st.booleans() | st.integers(-5, 120) | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=5)
field_values = {
    "prompt": st.text(max_size=40) | json_values,
    "n": st.integers(-2, 12) | json_values,
    "size": st.sampled_from(SIZES) | json_values,
    "quality": st.sampled_from(["low", "medium", "high"]) | json_values,
    "background": st.sampled_from(["opaque", "auto"]) | json_values,
    "moderation": st.sampled_from(["low", "auto"]) | json_values,
    "output_format": st.sampled_from(["png", "jpeg"]) | json_values,
    "output_compression": st.integers(-5, 105) | json_values,
    "extra": json_values,
}
bodies = st.fixed_dictionaries({}, optional=field_values)


@settings(max_examples=150, deadline=None)
@given(bodies)
def test_validator_accepts_exactly_the_contract(body):
    error: RequestValidationError | None = None
    try:
        request = validate_request(body)
    except RequestValidationError as exc:
        error = exc
    if error is not None:
        assert error.param is None or error.param in body or error.param == "prompt"
        assert error.param is None or error.param in error.message
        return
    assert isinstance(request, GenerationRequest)
    assert set(body) <= KNOWN_FIELDS
    assert isinstance(body["prompt"], str)
    assert len(body["prompt"]) <= 32000
    n = body.get("n", 1)
    assert type(n) is int
    assert 1 <= n <= 10
    assert request.n == n
    assert request.size == body.get("size", "1024x1024")
    assert f"{request.width}x{request.height}" == ("1024x1024" if request.size == "auto" else request.size)
    assert request.quality == body.get("quality", "medium")
    assert request.output_format == body.get("output_format", "png")
    compression = body.get("output_compression")
    if compression is not None:
        assert type(compression) is int
        assert 0 <= compression <= 100
        assert request.output_format == "jpeg" or compression == 100


@settings(max_examples=50, deadline=None)
@given(
    st.fixed_dictionaries(
        {"prompt": st.text(max_size=50), "output_format": st.just("jpeg")},
        optional={
            "n": st.integers(1, 10),
            "size": st.sampled_from(SIZES),
            "quality": st.sampled_from(["low", "medium", "high"]),
            "background": st.sampled_from(["opaque", "auto"]),
            "moderation": st.sampled_from(["low", "auto"]),
            "output_compression": st.integers(0, 100),
        },
    )
)
def test_validator_never_rejects_valid_bodies(body):
    assert validate_request(body).prompt == body["prompt"]
