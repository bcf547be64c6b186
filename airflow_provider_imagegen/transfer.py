"""The copier: one image URL → one verified S3 object, streamed: never the whole image in memory.

The bytes flow download → :class:`VerifyingReader` (sha256, byte count, format and pixel-size
checks) → S3. A check that fails raises inside ``read()``, so nothing is stored (boto3 aborts a
multipart upload), and no partial object ever appears under the final key.

The reader also computes the MD5 of the body and, part by part, the MD5 and SHA-256 of each
multipart part, and checks that the body ends with the format's end marker (PNG ``IEND``, JPEG
``EOI``): a body cut short without a ``Content-Length`` is refused, not stored.

* An image that ends within one part (:data:`PART_SIZE`, 5 MiB, is also the multipart threshold:
  every 1024-pixel image) goes up in one ``PutObject`` carrying the SHA-256 computed while reading.
  A store that checks it refuses a mismatch (``BadDigest``) and answers with the checksum it
  stored, which must be the one sent. The answer's ETag, the body's MD5 on S3-compatible stores,
  must equal the MD5 computed while reading. When the answer has neither a checksum nor an MD5
  ETag (SSE-KMS, SSE-C), the object is read back (streamed) and hashed.
* A bigger image streams through boto3's ``upload_fileobj`` as a multipart upload (each part
  with its SHA-256, which a checking store verifies); a ``HeadObject`` afterwards compares the
  size, the whole-object SHA-256 or the composite one (SHA-256 of the parts' SHA-256s, ``-N``),
  and the composite ETag (MD5 of the parts' MD5s, ``-N``). When none of these can be compared,
  the object is read back and hashed.

Both compare with :func:`~airflow_provider_imagegen.models.stored_object_differences`, as a later
try does before it reuses the object. Nothing is taken on trust: a mismatch deletes the object and
fails. The ETag of the verified object travels on the returned
:class:`~airflow_provider_imagegen.models.CopiedImage` into the manifest.
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.exceptions import (
    ImageGenDownloadError,
    ImageGenError,
    ImageGenImageVerificationError,
    ImageGenStorageError,
    error_from_s3,
)
from airflow_provider_imagegen.image_format import TAIL_BYTES, ends_whole, read_dimensions, sniff_format
from airflow_provider_imagegen.models import CopiedImage, etag_of, stored_object_differences

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
    from airflow_provider_imagegen.plan import PromptJob

HEADER_LIMIT = 1024 * 1024  # the pixel size must be readable within the first MiB
PART_SIZE = 5 * 1024 * 1024
"""The multipart part size, and the largest image sent in one ``PutObject``: the smallest part S3
accepts, so that each copy holds the least memory (one part)."""
_READ_BACK_CHUNK = 1024 * 1024
_ACCEPTED_NON_IMAGE_TYPES = ("", "application/octet-stream", "binary/octet-stream")


class VerifyingReader:
    """A non-seekable file object over image chunks that hashes, counts and checks as it is read.

    :param chunks: the image body.
    :param expected_format: ``png`` or ``jpeg``.
    :param expected_dimensions: (width, height), or None when the size was ``auto``.
    :param part_size: the multipart part size: per-part MD5 and SHA-256 are kept for the
        composite ETag and checksum (None: not kept).
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        expected_format: str,
        expected_dimensions: tuple[int, int] | None,
        part_size: int | None = None,
    ) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._head = bytearray()
        self._expected_format = expected_format
        self._expected_dimensions = expected_dimensions
        self._digest = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._tail = b""
        self._part_size = part_size
        self._part_md5 = hashlib.md5(usedforsecurity=False)
        self._part_sha256 = hashlib.sha256()
        self._part_filled = 0
        self._part_md5s: list[bytes] = []
        self._part_sha256s: list[bytes] = []
        self.size = 0
        self.dimensions: tuple[int, int] | None = None
        self._exhausted = False
        self._complete = False

    @property
    def sha256(self) -> str:
        """Hex digest of every byte read so far."""
        return self._digest.hexdigest()

    @property
    def md5(self) -> str:
        """Hex MD5 of every byte read so far (the ETag of a single-part upload on most stores)."""
        return self._md5.hexdigest()

    @property
    def parts(self) -> int:
        """How many multipart parts the body read so far makes (0 if ``part_size`` was not given)."""
        return len(self._part_md5s) + (1 if self._part_filled else 0)

    def composite_etag(self) -> str | None:
        """The ETag of a multipart upload of the body: MD5 of the parts' MD5s, ``-N``; None without parts."""
        md5s, _ = self._part_digests()
        if not md5s:
            return None
        return f"{hashlib.md5(b''.join(md5s), usedforsecurity=False).hexdigest()}-{len(md5s)}"

    def composite_sha256(self) -> str | None:
        """The composite checksum of a multipart upload (base64 SHA-256 of the parts' SHA-256s, no ``-N``)."""
        _, sha256s = self._part_digests()
        if not sha256s:
            return None
        return base64.b64encode(hashlib.sha256(b"".join(sha256s)).digest()).decode()

    def _part_digests(self) -> tuple[list[bytes], list[bytes]]:
        md5s, sha256s = list(self._part_md5s), list(self._part_sha256s)
        if self._part_filled:
            md5s.append(self._part_md5.copy().digest())
            sha256s.append(self._part_sha256.copy().digest())
        return md5s, sha256s

    @property
    def finished(self) -> bool:
        """Whether the whole body was read and passed every check."""
        return self._complete

    @property
    def pixel_size(self) -> tuple[int, int]:
        """(width, height) of a body read to its end (its final checks read them, or refuse it)."""
        if not self._complete or self.dimensions is None:
            raise RuntimeError("The image's pixel size is known only once its body was read to the end")
        return self.dimensions

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
                self._complete = True
                return
            self._accept(chunk)

    def _accept(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self._md5.update(chunk)
        if self._part_size:
            self._hash_parts(chunk)
        self._tail = (self._tail + chunk[-TAIL_BYTES:])[-TAIL_BYTES:]
        self.size += len(chunk)
        self._buffer += chunk
        if self.dimensions is None:
            self._head += chunk
            self._check_head(final=False)

    def _hash_parts(self, chunk: bytes) -> None:
        part_size = self._part_size or len(chunk)
        with memoryview(chunk) as view:
            while view:
                piece = view[: part_size - self._part_filled]
                self._part_md5.update(piece)
                self._part_sha256.update(piece)
                self._part_filled += len(piece)
                view = view[len(piece) :]
                if self._part_filled == part_size:
                    self._part_md5s.append(self._part_md5.digest())
                    self._part_sha256s.append(self._part_sha256.digest())
                    self._part_md5 = hashlib.md5(usedforsecurity=False)
                    self._part_sha256 = hashlib.sha256()
                    self._part_filled = 0

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
        if not ends_whole(self._expected_format, self._tail):
            end = "IEND chunk" if self._expected_format == "png" else "EOI marker"
            raise ImageGenDownloadError(
                f"Image body was cut short: {self.size} bytes without the {self._expected_format} {end} at the end"
            )


def check_content_type(declared: str, expected: str) -> None:
    """Refuse a declared Content-Type that is neither the asked image type nor a generic binary type."""
    if declared != expected and declared not in _ACCEPTED_NON_IMAGE_TYPES:
        raise ImageGenImageVerificationError(f"Image URL served Content-Type {declared!r}, expected {expected!r}")


def read_back_sha256(s3_client: Any, bucket: str, key: str, *, extra: dict[str, Any] | None = None) -> tuple[int, str]:
    """Stream an object back (1 MiB at a time) and return its size and sha256 (hex).

    :param s3_client: a boto3 S3 client.
    :param bucket: the bucket.
    :param key: the key.
    :param extra: further ``GetObject`` arguments (SSE-C key...).
    """
    body = s3_client.get_object(Bucket=bucket, Key=key, **(extra or {}))["Body"]
    digest, size = hashlib.sha256(), 0
    try:
        for chunk in body.iter_chunks(_READ_BACK_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    finally:
        body.close()
    return size, digest.hexdigest()


def _read_back_args(args: dict[str, Any]) -> dict[str, Any]:
    names = ("SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5", "ExpectedBucketOwner", "RequestPayer")
    return {name: args[name] for name in names if name in args}


def _reject(s3_client: Any, bucket: str, key: str, problems: list[str]) -> ImageGenStorageError:
    s3_client.delete_object(Bucket=bucket, Key=key)
    return ImageGenStorageError(f"s3://{bucket}/{key} failed verification: {', '.join(problems)}; deleted")


def verify_stored_object(
    s3_client: Any,
    bucket: str,
    key: str,
    size: int,
    sha256_hex: str,
    *,
    answer: dict[str, Any] | None = None,
    md5_etag: str | None = None,
    composite_sha256: str | None = None,
    upload_args: dict[str, Any] | None = None,
) -> str:
    """Check an object just written against the bytes sent; on any difference delete it and raise.

    What S3 said of it (``answer``, the ``PutObject`` answer; without one, a ``HeadObject`` is
    made) is compared by :func:`~airflow_provider_imagegen.models.stored_object_differences`. When
    that could compare nothing but the size (a store that keeps no checksum and gives no MD5 ETag:
    SSE-KMS, SSE-C), the object is streamed back and its sha256 compared. A difference deletes the
    object and raises :class:`ImageGenStorageError`.

    :param s3_client: a boto3 S3 client.
    :param bucket: the bucket.
    :param key: the key just written.
    :param size: the bytes streamed.
    :param sha256_hex: their sha256.
    :param answer: the ``PutObject`` answer, if the object went up in one.
    :param md5_etag: the ETag computed while streaming: the MD5, or the MD5 of the parts' MD5s with ``-N``.
    :param composite_sha256: base64 SHA-256 of the parts' SHA-256s (multipart), if known.
    :param upload_args: the upload's ExtraArgs (encryption decides what the ETag is).
    :return: the stored object's ETag, for the manifest.
    """
    args = upload_args or {}
    if answer is None:
        answer = s3_client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **_read_back_args(args))
    problems, compared = stored_object_differences(
        answer, size=size, sha256=sha256_hex, md5_etag=md5_etag, composite_sha256=composite_sha256, upload_args=args
    )
    # only the size could be compared: the object itself is read back and hashed
    stored = None if problems or compared else read_back_sha256(s3_client, bucket, key, extra=_read_back_args(args))
    if stored is not None and stored != (size, sha256_hex):
        problems.append("the bytes read back differ from the bytes sent")
    if problems:
        raise _reject(s3_client, bucket, key, problems)
    return etag_of(answer)


class Copier:
    """Copies image URLs into verified S3 objects of one bucket.

    :param hook: the image API hook (downloads carry no API key).
    :param s3_client: a boto3 S3 client (thread-safe: one per try, shared by the copy threads).
    :param bucket: destination bucket.
    :param upload_args: further ``PutObject``/``upload_fileobj`` ExtraArgs (encryption, ACL, tags...).
    :param metadata: object metadata of each job's images (ASCII values).
    """

    def __init__(
        self,
        hook: ImageGenHook,
        s3_client: Any,
        bucket: str,
        *,
        upload_args: dict[str, Any],
        metadata: Callable[[PromptJob], dict[str, str]],
    ) -> None:
        from boto3.s3.transfer import TransferConfig

        self.hook = hook
        self.s3_client = s3_client
        self.bucket = bucket
        self.upload_args = upload_args
        self.metadata = metadata
        # parts of PART_SIZE, one in memory per copy; no read-ahead threads: the copies run in parallel
        self.transfer_config = TransferConfig(
            multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, use_threads=False
        )

    def copy(self, url: str, key: str, index: int, job: PromptJob) -> CopiedImage:
        """Stream ``url`` into ``s3://{bucket}/{key}``, verified; raise (leaving no object) if anything is off.

        :param url: the image URL the API returned.
        :param key: destination key.
        :param index: the image's index within its prompt.
        :param job: the prompt it answers (format, pixel size, content type).
        :return: the image, with the ETag S3 gave it.
        """
        request = job.request
        upload_args = {
            **self.upload_args,
            "ContentType": request.content_type,
            "Metadata": {**self.upload_args.get("Metadata", {}), **self.metadata(job), "image-index": str(index)},
        }
        with self.hook.open_image(url) as image:
            check_content_type(image.content_type, request.content_type)
            reader = VerifyingReader(image.iter_bytes(), request.output_format, request.dimensions, part_size=PART_SIZE)
            etag = self._store(reader, key, upload_args)
        width, height = reader.pixel_size
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
            etag=etag,
        )

    def _store(self, reader: VerifyingReader, key: str, upload_args: dict[str, Any]) -> str:
        """Upload the reader's body to ``key`` and verify it: one ``PutObject`` when it fits, else a
        multipart upload. Returns the stored object's ETag."""
        try:
            body = reader.read_whole(PART_SIZE)
            if body is not None:
                return put_verified(
                    self.s3_client, self.bucket, key, body, reader.sha256, upload_args, md5_hex=reader.md5
                )
            upload_args["ChecksumAlgorithm"] = "SHA256"
            self.s3_client.upload_fileobj(reader, self.bucket, key, ExtraArgs=upload_args, Config=self.transfer_config)
            if not reader.finished:  # boto3 stopped reading early: the image's final checks did not run
                raise _reject(self.s3_client, self.bucket, key, ["the upload ended before the image did"])
            return verify_stored_object(
                self.s3_client,
                self.bucket,
                key,
                reader.size,
                reader.sha256,
                md5_etag=reader.composite_etag(),
                composite_sha256=reader.composite_sha256(),
                upload_args=upload_args,
            )
        except ImageGenError:
            raise
        except Exception as error:
            raise error_from_s3(error, self.bucket, key) from error


def put_verified(
    s3_client: Any,
    bucket: str,
    key: str,
    body: bytes,
    sha256_hex: str,
    args: dict[str, Any],
    *,
    md5_hex: str | None = None,
) -> str:
    """One ``PutObject`` of ``body``, verified whatever the store does with checksums.

    A store that checks ``ChecksumSHA256`` refuses a mismatch (``BadDigest``) and answers with
    the checksum it stored, which must be the one sent. A store that answers without one is
    checked by its ETag (the body's MD5, unless SSE-KMS/SSE-C), else by reading the object back
    (:func:`verify_stored_object`). A mismatch deletes the object and raises :class:`ImageGenStorageError`.

    :param s3_client: a boto3 S3 client.
    :param bucket: the bucket.
    :param key: the key.
    :param body: the whole object.
    :param sha256_hex: the body's sha256, computed while it was read.
    :param args: further ``PutObject`` arguments (content type, metadata, encryption...).
    :param md5_hex: the body's MD5, computed while it was read (computed here if not given).
    :return: the stored object's ETag.
    """
    checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    answer = s3_client.put_object(
        Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum, **args
    )
    return verify_stored_object(
        s3_client,
        bucket,
        key,
        len(body),
        sha256_hex,
        answer=answer,
        md5_etag=md5_hex or hashlib.md5(body, usedforsecurity=False).hexdigest(),
        upload_args=args,
    )
