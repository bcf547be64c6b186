"""The API contract as types: the allowed values, a validated request, a generation result, and
the verified image it becomes in S3.

Validation lives here, in one place, so that the hook, the operator (on rendered template
values) and the trigger all reject bad input the same way before any network call. Stdlib only:
modules that need a request or a sha256 do not pay for httpx.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

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

    :param image_urls: the image URLs, short-lived: copy them soon. Never logged; persisted only in
        the retry record ``_pending.json`` (deleted when the try commits) and the trigger's event.
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


@dataclass(frozen=True)
class CopiedImage:
    """One image stored in S3 and verified; what XCom and the manifest record of it."""

    index: int
    bucket: str
    key: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int
    height: int
    prompt_index: int = 0

    @property
    def s3_uri(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"

    def to_dict(self) -> dict[str, Any]:
        """The small JSON-safe dict pushed to XCom (one per image)."""
        return {"s3_uri": self.s3_uri, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CopiedImage:
        """Rebuild from :meth:`to_dict` output (extra keys ignored)."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def prompt_digest(prompt: str) -> str:
    """sha256 of a prompt: how logs, metadata and manifests refer to it without repeating it."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def full_object_sha256(head: dict[str, Any]) -> str | None:
    """The object's SHA-256 (hex) from a ``HeadObject`` answer, when S3 kept one of the whole object.

    A multipart upload's checksum is usually a checksum of the parts' checksums (``COMPOSITE``;
    real S3 adds ``-<parts>``, moto does not), which says nothing comparable: None then.

    :param head: the ``head_object(..., ChecksumMode="ENABLED")`` response.
    """
    stored = head.get("ChecksumSHA256")
    if not stored or "-" in stored:
        return None
    checksum_type = head.get("ChecksumType")
    multipart = "-" in str(head.get("ETag", ""))
    if checksum_type == "COMPOSITE" or (checksum_type is None and multipart):
        return None
    return base64.b64decode(stored).hex()


class TaskLog(Protocol):
    """What the engine needs of a logger: the task's own (``self.log``) or any ``logging.Logger``."""

    def info(self, message: Any, /, *args: Any) -> Any: ...

    def warning(self, message: Any, /, *args: Any) -> Any: ...

    def error(self, message: Any, /, *args: Any) -> Any: ...
