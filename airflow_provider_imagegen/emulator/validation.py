"""Strict validation of generation request bodies, following the published API contract.

Implemented independently of the provider's own client-side validation on purpose: the emulator
is the oracle the client code is tested against, so it must not share the client's bugs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SIZES: tuple[str, ...] = (
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
)
AUTO_SIZE = "1024x1024"
QUALITIES: tuple[str, ...] = ("low", "medium", "high")
BACKGROUNDS: tuple[str, ...] = ("opaque", "auto")
MODERATIONS: tuple[str, ...] = ("low", "auto")
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg")
MAX_PROMPT_CHARS = 32000
MIN_N, MAX_N = 1, 10
MIN_COMPRESSION, MAX_COMPRESSION = 0, 100

KNOWN_FIELDS: frozenset[str] = frozenset(
    {"prompt", "n", "size", "quality", "background", "moderation", "output_format", "output_compression"}
)


class RequestValidationError(Exception):
    """A request body broke the contract; carries the API error ``code`` and offending ``param``."""

    def __init__(self, message: str, *, param: str | None, code: str = "invalid_parameter") -> None:
        """Build the error; ``message`` is the human sentence returned to the client."""
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class GenerationRequest:
    """A validated generation request with defaults applied and the size resolved to pixels."""

    prompt: str
    n: int
    size: str
    width: int
    height: int
    quality: str
    background: str
    moderation: str
    output_format: str
    output_compression: int | None


def parse_body(raw: bytes) -> Any:
    """Decode a request body as JSON, raising :class:`RequestValidationError` if it is not JSON."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestValidationError(
            f"request body must be valid JSON: {exc}", param=None, code="invalid_json"
        ) from exc


def validate_request(body: Any) -> GenerationRequest:
    """Check a decoded body against the contract and return it with defaults applied."""
    if not isinstance(body, dict):
        raise RequestValidationError(
            f"request body must be a JSON object, got {_json_type(body)}", param=None, code="invalid_json"
        )
    _reject_unknown_fields(body)
    prompt = _validate_prompt(body)
    n = _int_field(body, "n", MIN_N, MAX_N, default=MIN_N)
    size = _choice_field(body, "size", SIZES, default="1024x1024")
    output_format = _choice_field(body, "output_format", OUTPUT_FORMATS, default="png")
    width, height = _pixels(AUTO_SIZE if size == "auto" else size)
    return GenerationRequest(
        prompt=prompt,
        n=n,
        size=size,
        width=width,
        height=height,
        quality=_choice_field(body, "quality", QUALITIES, default="medium"),
        background=_choice_field(body, "background", BACKGROUNDS, default="auto"),
        moderation=_choice_field(body, "moderation", MODERATIONS, default="auto"),
        output_format=output_format,
        output_compression=_validate_compression(body, output_format),
    )


def _reject_unknown_fields(body: dict[str, Any]) -> None:
    """Unknown body fields are a 400, naming the first (sorted) offender."""
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise RequestValidationError(
            f"unknown parameter {unknown[0]!r}; allowed: {', '.join(sorted(KNOWN_FIELDS))}",
            param=unknown[0],
            code="unknown_parameter",
        )


def _validate_prompt(body: dict[str, Any]) -> str:
    """``prompt`` is required, a string, at most :data:`MAX_PROMPT_CHARS` characters."""
    if "prompt" not in body:
        raise RequestValidationError("prompt is required", param="prompt", code="missing_required_parameter")
    prompt = body["prompt"]
    if not isinstance(prompt, str):
        raise RequestValidationError(f"prompt must be a string, got {_json_type(prompt)}", param="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestValidationError(
            f"prompt must be at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}", param="prompt"
        )
    return prompt


def _is_int(value: object) -> bool:
    """A JSON integer: Python ``int`` but not ``bool`` (``true`` is not 1, ``1.0`` is not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(body: dict[str, Any], name: str, low: int, high: int, *, default: int) -> int:
    """An optional integer field within ``[low, high]``."""
    if name not in body:
        return default
    value = body[name]
    if not _is_int(value) or not low <= value <= high:
        raise RequestValidationError(
            f"{name} must be an integer between {low} and {high}, got {_show(value)}", param=name
        )
    return int(value)


def _choice_field(body: dict[str, Any], name: str, choices: tuple[str, ...], *, default: str) -> str:
    """An optional string field restricted to ``choices``."""
    if name not in body:
        return default
    value = body[name]
    if not isinstance(value, str) or value not in choices:
        raise RequestValidationError(f"{name} must be one of {', '.join(choices)}, got {_show(value)}", param=name)
    return value


def _validate_compression(body: dict[str, Any], output_format: str) -> int | None:
    """``output_compression``: integer 0..100; with png only omitted or exactly 100."""
    if "output_compression" not in body:
        return None
    value = _int_field(body, "output_compression", MIN_COMPRESSION, MAX_COMPRESSION, default=MAX_COMPRESSION)
    if output_format == "png" and value != MAX_COMPRESSION:
        raise RequestValidationError(
            f"output_compression is only supported for jpeg; with png it must be omitted or 100, got {value}",
            param="output_compression",
        )
    return value


def _pixels(size: str) -> tuple[int, int]:
    """``"1536x1024"`` -> ``(1536, 1024)``."""
    width, _, height = size.partition("x")
    return int(width), int(height)


def _show(value: object) -> str:
    """Render a JSON value for an error message, truncated to stay short."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: object) -> str:
    """The JSON type name of a decoded value (``bool`` before ``int``: JSON has no such overlap)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
