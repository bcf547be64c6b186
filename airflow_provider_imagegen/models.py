"""The API contract as types: the allowed values, a validated request, and a generation result.

Validation lives here, in one place, so that the hook, the operator (on rendered template
values) and the trigger all reject bad input the same way before any network call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_provider_imagegen.exceptions import ImageGenValidationError

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
QUALITIES: tuple[str, ...] = ("low", "medium", "high")
BACKGROUNDS: tuple[str, ...] = ("opaque", "auto")
MODERATIONS: tuple[str, ...] = ("low", "auto")
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg")
MAX_IMAGES = 10
MAX_PROMPT_CHARS = 32_000

#: What the API renders for ``size="auto"`` cannot be known in advance; only explicit sizes are checked.
FILE_EXTENSIONS = {"png": "png", "jpeg": "jpg"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but `n=True` is a mistake, not a count
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ImageGenValidationError(name, value, "one of " + ", ".join(allowed))


def _check_int_range(name: str, value: Any, low: int, high: int) -> None:
    if not _is_int(value) or not low <= value <= high:
        raise ImageGenValidationError(name, value, f"an integer from {low} to {high}")


@dataclass(frozen=True)
class ImageGenerationRequest:
    """One validated call of the text-to-image endpoint (construct with :meth:`build`)."""

    prompt: str
    n: int = 1
    size: str = "1024x1024"
    quality: str = "medium"
    background: str = "auto"
    moderation: str = "auto"
    output_format: str = "png"
    output_compression: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ImageGenValidationError("prompt", self.prompt, f"a string of 0 to {MAX_PROMPT_CHARS} characters")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ImageGenValidationError(
                "prompt", self.prompt, f"at most {MAX_PROMPT_CHARS} characters, got {len(self.prompt)}"
            )
        _check_int_range("n", self.n, 1, MAX_IMAGES)
        _check_choice("size", self.size, SIZES)
        _check_choice("quality", self.quality, QUALITIES)
        _check_choice("background", self.background, BACKGROUNDS)
        _check_choice("moderation", self.moderation, MODERATIONS)
        _check_choice("output_format", self.output_format, OUTPUT_FORMATS)
        if self.output_compression is not None:
            _check_int_range("output_compression", self.output_compression, 0, 100)
            if self.output_format == "png" and self.output_compression != 100:
                raise ImageGenValidationError(
                    "output_compression",
                    self.output_compression,
                    "only with output_format='jpeg'; with png omit it or use 100",
                )

    @classmethod
    def build(cls, prompt: Any, **params: Any) -> ImageGenerationRequest:
        """Validate and build a request; unknown parameter names are rejected by name."""
        unknown = sorted(set(params) - {f for f in cls.__dataclass_fields__ if f != "prompt"})
        if unknown:
            raise ImageGenValidationError(unknown[0], params[unknown[0]], "a parameter of the API contract")
        return cls(prompt=prompt, **params)

    def to_json(self) -> dict[str, Any]:
        """The JSON body sent to the API (``output_compression`` omitted when not set)."""
        body = asdict(self)
        if body["output_compression"] is None:
            del body["output_compression"]
        return body

    @property
    def dimensions(self) -> tuple[int, int] | None:
        """(width, height) asked for, or None for ``auto``."""
        if self.size == "auto":
            return None
        width, height = self.size.split("x")
        return int(width), int(height)

    @property
    def content_type(self) -> str:
        """The MIME type the images must have."""
        return CONTENT_TYPES[self.output_format]

    @property
    def file_extension(self) -> str:
        """File extension of the stored objects (``png`` or ``jpg``)."""
        return FILE_EXTENSIONS[self.output_format]


@dataclass(frozen=True)
class ImageGenerationResult:
    """What one generation call returned.

    :param image_urls: the image URLs, short-lived: copy them soon. Never log or persist them.
    :param request: the validated request that was sent.
    :param elapsed: seconds the call took, retries included.
    :param attempts: how many HTTP attempts were made.
    """

    image_urls: list[str]
    request: ImageGenerationRequest
    elapsed: float
    attempts: int = 1
    request_id: str | None = field(default=None)

    @property
    def shortfall(self) -> int:
        """How many fewer images came back than were asked for."""
        return max(0, self.request.n - len(self.image_urls))
