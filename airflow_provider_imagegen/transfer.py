"""Stream one image URL into one S3 object, verified on the way: never the whole image in memory.

The bytes flow download → :class:`VerifyingReader` (sha256, byte count, format and pixel-size
checks) → boto3's ``upload_fileobj`` (multipart above the threshold). A check that fails raises
inside ``read()``, which makes boto3 abandon the upload (and abort a multipart one), so no
partial object ever appears under the final key. After the upload, a HEAD compares S3's size
and SHA-256 checksum with what was streamed; on a mismatch the object is deleted.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.exceptions import (
    ImageGenError,
    ImageGenImageVerificationError,
    ImageGenStorageError,
)
from airflow_provider_imagegen.image_format import read_dimensions, sniff_format

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
    from airflow_provider_imagegen.models import ImageGenerationRequest

HEADER_LIMIT = 1024 * 1024  # the pixel size must be readable within the first MiB
_ACCEPTED_NON_IMAGE_TYPES = ("", "application/octet-stream", "binary/octet-stream")
_PERMANENT_S3_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidBucketName",
        "AccountProblem",
        "KMS.NotFoundException",
        "KMS.DisabledException",
    }
)


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


class VerifyingReader:
    """A non-seekable file object over image chunks that hashes, counts and checks as it is read.

    :param chunks: the image body.
    :param expected_format: ``png`` or ``jpeg``.
    :param expected_dimensions: (width, height), or None when the size was ``auto``.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        expected_format: str,
        expected_dimensions: tuple[int, int] | None,
    ) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._head = bytearray()
        self._expected_format = expected_format
        self._expected_dimensions = expected_dimensions
        self._digest = hashlib.sha256()
        self.size = 0
        self.dimensions: tuple[int, int] | None = None
        self._exhausted = False

    @property
    def sha256(self) -> str:
        """Hex digest of every byte read so far."""
        return self._digest.hexdigest()

    @property
    def finished(self) -> bool:
        """Whether the whole body was read and passed every check."""
        return self._exhausted and self.dimensions is not None

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all if negative); b"" at the end, after the final checks."""
        while not self._exhausted and (size < 0 or len(self._buffer) < size):
            chunk = next(self._chunks, None)
            if chunk is None:
                self._exhausted = True
                self._check_complete()
                break
            self._accept(chunk)
        if size < 0:
            size = len(self._buffer)
        with memoryview(self._buffer) as view:  # one copy out of the buffer, not two
            data = bytes(view[:size])
        del self._buffer[:size]
        return data

    def _accept(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self.size += len(chunk)
        self._buffer += chunk
        if self.dimensions is None:
            self._head += chunk
            self._check_head(final=False)

    def _check_head(self, *, final: bool) -> None:
        head = bytes(self._head)
        if len(head) < 8 and not final:
            return
        found = sniff_format(head)
        if found != self._expected_format:
            raise ImageGenImageVerificationError(
                f"Image bytes are {found or 'not a PNG or JPEG'}, but {self._expected_format} was asked for"
            )
        self.dimensions = read_dimensions(found, head)
        if self.dimensions is None:
            if final or len(head) > HEADER_LIMIT:
                raise ImageGenImageVerificationError("Could not read the image's pixel size from its header")
            return
        self._head.clear()
        if self._expected_dimensions and self.dimensions != self._expected_dimensions:
            got, want = self.dimensions, self._expected_dimensions
            raise ImageGenImageVerificationError(
                f"Image is {got[0]}x{got[1]} pixels, but {want[0]}x{want[1]} was asked for"
            )

    def _check_complete(self) -> None:
        if self.size == 0:
            raise ImageGenImageVerificationError("Image body is empty")
        if self.dimensions is None:
            self._check_head(final=True)


def check_content_type(declared: str, expected: str) -> None:
    """Refuse a declared Content-Type that is neither the asked image type nor a generic binary type."""
    if declared != expected and declared not in _ACCEPTED_NON_IMAGE_TYPES:
        raise ImageGenImageVerificationError(f"Image URL served Content-Type {declared!r}, expected {expected!r}")


def storage_error(error: BaseException, bucket: str, key: str, *, action: str = "upload to") -> ImageGenStorageError:
    """An S3 failure as :class:`ImageGenStorageError`, permanent when retrying cannot help.

    :param error: what boto3 raised.
    :param bucket: the bucket.
    :param key: the object key.
    :param action: what was being done, for the message (``upload to``, ``read of``...).
    """
    code = ""
    response = getattr(error, "response", None) or getattr(getattr(error, "last_exception", None), "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    permanent = code in _PERMANENT_S3_CODES or code == "403"
    hint = " (check the bucket name and the AWS connection's permissions)" if permanent else ""
    return ImageGenStorageError(
        f"S3 {action} s3://{bucket}/{key} failed: {code or type(error).__name__}: {error}{hint}",
        permanent=permanent,
    )


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


def verify_stored_object(s3_client: Any, bucket: str, key: str, size: int, sha256_hex: str) -> None:
    """HEAD the object and compare its size (and SHA-256 checksum, when S3 has a whole-object one).

    :param s3_client: a boto3 S3 client.
    :param bucket: the bucket.
    :param key: the key just written.
    :param size: the bytes streamed.
    :param sha256_hex: their sha256.
    """
    head = s3_client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    problems = []
    if head.get("ContentLength") != size:
        problems.append(f"size {head.get('ContentLength')} != {size}")
    stored = full_object_sha256(head)
    if stored is not None and stored != sha256_hex:
        problems.append("sha256 mismatch")
    if problems:
        s3_client.delete_object(Bucket=bucket, Key=key)
        raise ImageGenStorageError(f"s3://{bucket}/{key} failed verification ({', '.join(problems)}); deleted")


def copy_image_to_s3(
    hook: ImageGenHook,
    s3_client: Any,
    url: str,
    *,
    request: ImageGenerationRequest,
    bucket: str,
    key: str,
    index: int,
    prompt_index: int = 0,
    extra_args: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
    transfer_config: Any = None,
) -> CopiedImage:
    """Stream ``url`` into ``s3://bucket/key``, verified; raise (leaving no object) if anything is off.

    :param hook: the image API hook (downloads carry no API key).
    :param s3_client: a boto3 S3 client.
    :param url: the image URL the API returned.
    :param request: the request the image answers (format, pixel size, content type).
    :param bucket: destination bucket.
    :param key: destination key.
    :param index: the image's index within its prompt.
    :param prompt_index: the prompt's index (batch mode).
    :param extra_args: further ``upload_fileobj`` ExtraArgs (encryption, ACL, tags...).
    :param metadata: object metadata (ASCII values).
    :param transfer_config: a boto3 ``TransferConfig`` (multipart threshold and part size).
    """
    upload_args = {
        **(extra_args or {}),
        "ContentType": request.content_type,
        "Metadata": {**(extra_args or {}).get("Metadata", {}), **(metadata or {}), "image-index": str(index)},
        "ChecksumAlgorithm": "SHA256",
    }
    with hook.open_image(url) as image:
        check_content_type(image.content_type, request.content_type)
        reader = VerifyingReader(image.iter_bytes(), request.output_format, request.dimensions)
        try:
            s3_client.upload_fileobj(reader, bucket, key, ExtraArgs=upload_args, Config=transfer_config)
        except ImageGenError:
            raise
        except Exception as error:
            raise storage_error(error, bucket, key) from error
    try:
        if not reader.finished or reader.dimensions is None:  # boto3 stopped reading early
            s3_client.delete_object(Bucket=bucket, Key=key)
            raise ImageGenStorageError(f"s3://{bucket}/{key}: the upload ended before the image did; deleted")
        verify_stored_object(s3_client, bucket, key, reader.size, reader.sha256)
    except ImageGenError:
        raise
    except Exception as error:
        raise storage_error(error, bucket, key) from error
    width, height = reader.dimensions
    return CopiedImage(
        index=index,
        bucket=bucket,
        key=key,
        content_type=request.content_type,
        size_bytes=reader.size,
        sha256=reader.sha256,
        width=width,
        height=height,
        prompt_index=prompt_index,
    )
