"""Stream one image URL into one S3 object, verified on the way: never the whole image in memory.

The bytes flow download → :class:`VerifyingReader` (sha256, byte count, format and pixel-size
checks) → S3. A check that fails raises inside ``read()``, so nothing is stored (boto3 aborts a
multipart upload), and no partial object ever appears under the final key.

* An image that ends within one part (the multipart threshold, 5 MiB by default: every
  1024-pixel image) goes up in one ``PutObject`` carrying the SHA-256 computed while reading:
  S3 checks the body against it and refuses a mismatch (``BadDigest``), so the stored object is
  verified as it is written, with no request after it.
* A bigger image streams through boto3's ``upload_fileobj`` as a multipart upload, whose
  checksum is a checksum of the parts; a ``HeadObject`` afterwards compares the stored size (and
  a whole-object SHA-256, when S3 keeps one) and deletes the object on a mismatch.
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
SINGLE_PUT_LIMIT = 8 * 1024 * 1024  # boto3's default multipart threshold, when no TransferConfig is given
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
        self._fill(size)
        if size < 0:
            size = len(self._buffer)
        with memoryview(self._buffer) as view:  # one copy out of the buffer, not two
            data = bytes(view[:size])
        del self._buffer[:size]
        return data

    def read_whole(self, limit: int) -> bytes | None:
        """The whole body, checked, if it is at most ``limit`` bytes; else None, with nothing consumed.

        Reads ahead at most ``limit`` bytes plus one chunk, which ``read()`` then returns first.

        :param limit: the most bytes to hold in memory.
        """
        self._fill(limit + 1)
        if not self._exhausted or len(self._buffer) > limit:
            return None
        return self.read()

    def _fill(self, size: int) -> None:
        """Pull chunks until ``size`` bytes are buffered (all of them if negative) or the body ends."""
        while not self._exhausted and (size < 0 or len(self._buffer) < size):
            chunk = next(self._chunks, None)
            if chunk is None:
                self._exhausted = True
                self._check_complete()
                return
            self._accept(chunk)

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
    }
    single_put_limit = getattr(transfer_config, "multipart_threshold", None) or SINGLE_PUT_LIMIT
    with hook.open_image(url) as image:
        check_content_type(image.content_type, request.content_type)
        reader = VerifyingReader(image.iter_bytes(), request.output_format, request.dimensions)
        try:
            body = reader.read_whole(single_put_limit)
            if body is not None:
                put_verified(s3_client, bucket, key, body, reader.sha256, upload_args)
            else:
                upload_args["ChecksumAlgorithm"] = "SHA256"
                s3_client.upload_fileobj(reader, bucket, key, ExtraArgs=upload_args, Config=transfer_config)
        except ImageGenError:
            raise
        except Exception as error:
            raise storage_error(error, bucket, key) from error
    if body is None:
        _verify_multipart(s3_client, reader, bucket, key)
    if reader.dimensions is None:  # not reached: the reader's final checks raise first
        raise ImageGenImageVerificationError("Could not read the image's pixel size")
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


def put_verified(s3_client: Any, bucket: str, key: str, body: bytes, sha256_hex: str, args: dict[str, Any]) -> None:
    """One ``PutObject`` that S3 stores only if the body matches ``sha256_hex`` (else ``BadDigest``).

    :param s3_client: a boto3 S3 client.
    :param bucket: the bucket.
    :param key: the key.
    :param body: the whole object.
    :param sha256_hex: the body's sha256, computed while it was read.
    :param args: further ``PutObject`` arguments (content type, metadata, encryption...).
    """
    checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    response = s3_client.put_object(
        Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum, **args
    )
    stored = response.get("ChecksumSHA256")
    if stored is not None and stored != checksum:  # a store that ignored the checksum it was sent
        s3_client.delete_object(Bucket=bucket, Key=key)
        raise ImageGenStorageError(f"s3://{bucket}/{key} stored SHA-256 {stored}, not the one sent; deleted")


def _verify_multipart(s3_client: Any, reader: VerifyingReader, bucket: str, key: str) -> None:
    try:
        if not reader.finished:  # boto3 stopped reading early
            s3_client.delete_object(Bucket=bucket, Key=key)
            raise ImageGenStorageError(f"s3://{bucket}/{key}: the upload ended before the image did; deleted")
        verify_stored_object(s3_client, bucket, key, reader.size, reader.sha256)
    except ImageGenError:
        raise
    except Exception as error:
        raise storage_error(error, bucket, key) from error
