"""The API contract as types: the allowed values, a validated request, a generation result, and
the verified image it becomes in S3, with the one comparison of a stored object against it.

Validation lives here, in one place, so that the hook, the operator (on rendered template
values) and the trigger all reject bad input the same way before any network call. Stdlib only:
modules that need a request or a sha256 do not pay for httpx.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from airflow_provider_imagegen.exceptions import ImageGenValidationError

if TYPE_CHECKING:
    from collections.abc import Mapping

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
    """One validated call of the text-to-image endpoint (construct with :meth:`build`).

    Its field defaults are the request's defaults everywhere: the operator, the hook's methods and
    ``@task.imagegen`` read them from here (``ImageGenerationRequest.size``...).
    """

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
        unknown = sorted(set(params) - set(REQUEST_PARAMETERS))
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
        """(width, height) asked for, which the images must have; None for ``auto``: what the API
        renders then cannot be known in advance, so only explicit sizes are checked."""
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


REQUEST_PARAMETERS: tuple[str, ...] = tuple(
    name for name in ImageGenerationRequest.__dataclass_fields__ if name != "prompt"
)
"""The request's parameters besides the prompt: ``n``, ``size``, ``quality``..."""


class RequestParameters(TypedDict, total=False):
    """:data:`REQUEST_PARAMETERS` as keyword arguments; one left out takes :class:`ImageGenerationRequest`'s default."""

    n: int
    size: str
    quality: str
    background: str
    moderation: str
    output_format: str
    output_compression: int | None


@dataclass(frozen=True)
class ImageGenerationResult:
    """What one generation call returned.

    :param image_urls: the image URLs, short-lived: copy them soon. Never logged; persisted only in
        the retry record ``_pending.json`` (deleted when the try commits) and the trigger's event.
    :param request: the validated request that was sent.
    :param elapsed: seconds the call took, retries included.
    :param attempts: how many HTTP attempts were made.
    :param request_id: the API's request id, if it sent one (scrubbed: printable ASCII, at most 128 characters).
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
    """One image stored in S3 and verified; what XCom and the manifest record of it.

    ``etag`` is the ETag S3 gave the object when it was verified ("" if none): the manifest records
    it (``stored_etags``) so that a later try can tell an overwritten object; XCom does not carry it.
    """

    index: int
    bucket: str
    key: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int
    height: int
    prompt_index: int = 0
    etag: str = ""

    @property
    def s3_uri(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"

    def to_dict(self) -> dict[str, Any]:
        """The small JSON-safe dict pushed to XCom (one per image), and listed in the manifest."""
        values = asdict(self)
        del values["etag"]
        return {"s3_uri": self.s3_uri, **values}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CopiedImage:
        """Rebuild from :meth:`to_dict` output (extra keys ignored)."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def prompt_digest(prompt: str) -> str:
    """sha256 of a prompt: how logs, metadata and manifests refer to it without repeating it."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


# server-side encryption whose ETag is not the MD5 of the body
_ETAG_NOT_MD5 = ("aws:kms", "aws:kms:dsse")
_MD5_ETAG = re.compile(r"[0-9a-f]{32}(-[0-9]+)?")  # a body's MD5, or a multipart upload's MD5 of MD5s and parts


def etag_of(answer: Mapping[str, Any]) -> str:
    """The ETag of an S3 answer (``PutObject``, ``HeadObject``) as it is compared and recorded:
    without its quotes, lower case; "" when there is none."""
    return str(answer.get("ETag") or "").strip('"').lower()


def etag_is_md5(upload_args: Mapping[str, Any], answer: Mapping[str, Any] | None = None) -> bool:
    """Whether a stored object's ETag is the MD5 of its bytes: not under SSE-KMS or SSE-C.

    Both what was asked (``upload_args``) and what the store says it did (``answer``: a bucket
    whose default encryption is SSE-KMS encrypts objects uploaded without asking) are looked at.

    :param upload_args: the upload's ExtraArgs.
    :param answer: the ``PutObject`` or ``HeadObject`` answer.
    """
    for source in (upload_args, answer or {}):
        if source.get("ServerSideEncryption") in _ETAG_NOT_MD5 or source.get("SSECustomerAlgorithm"):
            return False
    return True


def full_object_sha256(answer: Mapping[str, Any]) -> str | None:
    """The object's SHA-256 (hex) from an S3 answer, when S3 kept one of the whole object.

    A multipart upload's checksum is usually a checksum of the parts' checksums (``COMPOSITE``;
    real S3 adds ``-<parts>``, moto does not), which says nothing comparable: None then.

    :param answer: a ``PutObject`` answer, or a ``head_object(..., ChecksumMode="ENABLED")`` one.
    """
    stored = answer.get("ChecksumSHA256")
    if not stored or "-" in stored:
        return None
    checksum_type = answer.get("ChecksumType")
    multipart = "-" in str(answer.get("ETag", ""))
    if checksum_type == "COMPOSITE" or (checksum_type is None and multipart):
        return None
    return base64.b64decode(stored).hex()


def stored_object_differences(
    answer: Mapping[str, Any],
    *,
    size: int,
    sha256: str,
    etag: str = "",
    md5_etag: str | None = None,
    composite_sha256: str | None = None,
    upload_args: Mapping[str, Any] | None = None,
) -> tuple[list[str], bool]:
    """How a stored object, as S3 describes it, differs from the image that was verified.

    The one answer to "is this object the one we verified?": right after an upload (the
    ``PutObject`` answer, or a ``HeadObject`` after a multipart upload) and before a later try
    reuses the object (a ``HeadObject``). Compared, wherever both sides have it:

    * the size (a ``HeadObject``'s ``ContentLength``);
    * the whole-object SHA-256 S3 kept, or else a multipart upload's composite one
      (``composite_sha256``: base64 SHA-256 of the parts' SHA-256s);
    * the ETag S3 gave the object when it was verified (``etag``): an overwritten object has a new one;
    * the ETag computed while streaming (``md5_etag``: the body's MD5, or a multipart upload's MD5
      of the parts' MD5s with ``-N``), when S3's ETag has that form and is an MD5 at all (not under
      SSE-KMS or SSE-C, whether asked in ``upload_args`` or applied by the bucket).

    :param answer: what S3 said of the object.
    :param size: the verified image's bytes.
    :param sha256: their SHA-256 (hex).
    :param etag: the ETag recorded when the object was verified ("" if none).
    :param md5_etag: the ETag computed from the bytes sent.
    :param composite_sha256: the composite checksum computed from the parts sent.
    :param upload_args: the upload's ExtraArgs (encryption decides what the ETag is).
    :return: the differences (none: it is the same object), and whether the bytes themselves were
        compared (a checksum or an ETag); when not, only reading the object back can tell.
    """
    problems: list[str] = []
    stored_size = answer.get("ContentLength", size)
    if stored_size != size:
        problems.append(f"size {stored_size} != {size}")
    compared = False
    stored_sha256 = full_object_sha256(answer)
    if stored_sha256 is not None:
        compared = True
        if stored_sha256 != sha256:
            problems.append(f"stored SHA-256 {answer['ChecksumSHA256']}, not the one sent")
    elif composite_sha256 and answer.get("ChecksumSHA256"):
        compared = True
        if str(answer["ChecksumSHA256"]).split("-")[0] != composite_sha256:
            problems.append(f"stored composite SHA-256 {answer['ChecksumSHA256']}, not the one sent")
    stored_etag = etag_of(answer)
    if etag and stored_etag:
        compared = True
        if stored_etag != etag:
            problems.append(f"ETag {stored_etag} is not the {etag} recorded")
    elif md5_etag and _same_md5_form(stored_etag, md5_etag) and etag_is_md5(upload_args or {}, answer):
        compared = True
        if stored_etag != md5_etag:
            problems.append(f"ETag {stored_etag} is not the MD5 {md5_etag} of the bytes sent")
    return problems, compared


def _same_md5_form(stored_etag: str, md5_etag: str) -> bool:
    """Both a plain MD5, or both a multipart upload's ``MD5-N``."""
    return bool(_MD5_ETAG.fullmatch(stored_etag)) and ("-" in stored_etag) == ("-" in md5_etag)
