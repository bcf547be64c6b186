"""The copier: one image URL → one verified S3 object, streamed: never the whole image in memory.

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
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.exceptions import (
    ImageGenError,
    ImageGenImageVerificationError,
    ImageGenStorageError,
    error_from_s3,
)
from airflow_provider_imagegen.image_format import read_dimensions, sniff_format
from airflow_provider_imagegen.models import CopiedImage, full_object_sha256

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
    from airflow_provider_imagegen.plan import PromptJob

HEADER_LIMIT = 1024 * 1024  # the pixel size must be readable within the first MiB
SINGLE_PUT_LIMIT = 8 * 1024 * 1024  # boto3's default multipart threshold, when no TransferConfig is given
_ACCEPTED_NON_IMAGE_TYPES = ("", "application/octet-stream", "binary/octet-stream")


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


class Copier:
    """Copies image URLs into verified S3 objects of one bucket.

    :param hook: the image API hook (downloads carry no API key).
    :param s3_client: a boto3 S3 client (thread-safe: one per try, shared by the copy threads).
    :param bucket: destination bucket.
    :param upload_args: further ``PutObject``/``upload_fileobj`` ExtraArgs (encryption, ACL, tags...).
    :param metadata: object metadata of each job's images (ASCII values).
    :param transfer_config: a boto3 ``TransferConfig`` (multipart threshold and part size).
    """

    def __init__(
        self,
        hook: ImageGenHook,
        s3_client: Any,
        bucket: str,
        *,
        upload_args: dict[str, Any],
        metadata: Callable[[PromptJob], dict[str, str]],
        transfer_config: Any = None,
    ) -> None:
        self.hook = hook
        self.s3_client = s3_client
        self.bucket = bucket
        self.upload_args = upload_args
        self.metadata = metadata
        self.transfer_config = transfer_config
        self.single_put_limit = getattr(transfer_config, "multipart_threshold", None) or SINGLE_PUT_LIMIT

    def copy(self, url: str, key: str, index: int, job: PromptJob) -> CopiedImage:
        """Stream ``url`` into ``s3://{bucket}/{key}``, verified; raise (leaving no object) if anything is off.

        :param url: the image URL the API returned.
        :param key: destination key.
        :param index: the image's index within its prompt.
        :param job: the prompt it answers (format, pixel size, content type).
        """
        request = job.request
        upload_args = {
            **self.upload_args,
            "ContentType": request.content_type,
            "Metadata": {**self.upload_args.get("Metadata", {}), **self.metadata(job), "image-index": str(index)},
        }
        with self.hook.open_image(url) as image:
            check_content_type(image.content_type, request.content_type)
            reader = VerifyingReader(image.iter_bytes(), request.output_format, request.dimensions)
            try:
                body = reader.read_whole(self.single_put_limit)
                if body is not None:
                    put_verified(self.s3_client, self.bucket, key, body, reader.sha256, upload_args)
                else:
                    upload_args["ChecksumAlgorithm"] = "SHA256"
                    self.s3_client.upload_fileobj(
                        reader, self.bucket, key, ExtraArgs=upload_args, Config=self.transfer_config
                    )
            except ImageGenError:
                raise
            except Exception as error:
                raise error_from_s3(error, self.bucket, key) from error
        if body is None:
            _verify_multipart(self.s3_client, reader, self.bucket, key)
        if reader.dimensions is None:  # not reached: the reader's final checks raise first
            raise ImageGenImageVerificationError("Could not read the image's pixel size")
        width, height = reader.dimensions
        return CopiedImage(
            index=index,
            bucket=self.bucket,
            key=key,
            content_type=request.content_type,
            size_bytes=reader.size,
            sha256=reader.sha256,
            width=width,
            height=height,
            prompt_index=job.prompt_index,
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
        raise error_from_s3(error, bucket, key) from error
