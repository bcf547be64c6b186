"""The retry-safety records kept beside the images, and the one store that reads and writes them.

Two small JSON objects live under each prompt's prefix (layout in ``plan``):

* ``manifest.json``: the commit point, written last. Its presence means every image it lists
  was stored and verified; a later try of the same request reuses them without paying again.
* ``_pending.json``: the generated (signed, short-lived) image URLs, written alongside the copy
  so that a try that fails after paying lets the next try copy them instead of generating again.
  Deleted once the manifest is written (all prompts' records together, at the end of the try).

Both carry a fingerprint of the request (prompt and parameters): a record written for another
request (the DAG changed between tries) is never mistaken for this one's. A record that exists
but cannot be read or parsed is an error, not "missing": treating it as missing would pay again.

:class:`RecordStore` is the only code that touches these records; everything else asks it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.exceptions import (
    S3_MISSING_CODES,
    ImageGenPermanentStorageError,
    ImageGenStorageError,
    ImageGenWriteConflictError,
    error_from_s3,
    s3_error_code,
)
from airflow_provider_imagegen.models import (
    CopiedImage,
    ImageGenerationRequest,
    prompt_digest,
    stored_object_differences,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from airflow_provider_imagegen.plan import PromptJob
    from airflow_provider_imagegen.task_log import TaskLog

MANIFEST_NAME = "manifest.json"
PENDING_NAME = "_pending.json"
SCHEMA_VERSION = 1
_DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes
# DeleteObjects refused as such (OpenStack Swift s3api without Content-MD5, stores without it):
# delete key by key instead
_DELETE_MANY_REFUSED = frozenset({"InvalidRequest", "NotImplemented", "MissingContentMD5", "MethodNotAllowed", "501"})
# listing or aborting multipart uploads refused or unsupported: warn, do not fail the try
_UPLOADS_UNAVAILABLE = frozenset({"AccessDenied", "403", "NotImplemented", "501", "MethodNotAllowed"})
# upload ExtraArgs that put_object takes too (encryption and ACL apply to the records as well)
_RECORD_PUT_ARGS = (
    "ServerSideEncryption",
    "SSEKMSKeyId",
    "SSEKMSEncryptionContext",
    "BucketKeyEnabled",
    "ACL",
    "ExpectedBucketOwner",
    "RequestPayer",
    "Tagging",
    "StorageClass",
)
# what the small pending record needs: encryption a bucket policy may demand, nothing that could be
# refused for the record after the images were paid for (a mistyped ACL, tag or storage class)
_PENDING_PUT_ARGS = (
    "ServerSideEncryption",
    "SSEKMSKeyId",
    "SSEKMSEncryptionContext",
    "BucketKeyEnabled",
    "ExpectedBucketOwner",
    "RequestPayer",
)


def manifest_key(prefix: str) -> str:
    """``{prefix}/manifest.json``."""
    return f"{prefix}/{MANIFEST_NAME}"


def pending_key(prefix: str) -> str:
    """``{prefix}/_pending.json``."""
    return f"{prefix}/{PENDING_NAME}"


def utcnow_iso() -> str:
    """Now, as an ISO 8601 UTC timestamp."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def request_fingerprint(request: ImageGenerationRequest) -> str:
    """sha256 of the request body (prompt and every parameter), to tie records to one request."""
    return hashlib.sha256(json.dumps(request.to_json(), sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Generation:
    """What the API call that produced a prompt's images said of itself (kept for the manifest)."""

    generated_at: str = ""
    generation_seconds: float | None = None
    request_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Its fields as both records store them (the request id as ``api_request_id``)."""
        return {
            "generated_at": self.generated_at,
            "generation_seconds": self.generation_seconds,
            "api_request_id": self.request_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Generation:
        """Read it back from a record (a ``_pending.json`` of earlier builds keeps the id as ``request_id``)."""
        seconds = data.get("generation_seconds")
        request_id = data.get("api_request_id", data.get("request_id"))
        return cls(
            generated_at=str(data.get("generated_at") or ""),
            generation_seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
            request_id=request_id if isinstance(request_id, str) else None,
        )


@dataclass(frozen=True)
class PendingRecord:
    """``_pending.json``: the URLs one generation returned, kept until the images are committed."""

    image_urls: tuple[str, ...]
    request_fingerprint: str
    generation: Generation
    saved_at: str = ""
    generations: int = 1  # paid generations this task instance made for the prompt so far
    download_failed: bool = False  # a try failed downloading these URLs (a retry will not pay again)
    try_number: int | None = None  # the try whose call paid for them (None: records of earlier builds)

    def to_json(self) -> dict[str, Any]:
        """The stored JSON object."""
        return {
            "image_urls": list(self.image_urls),
            "request_fingerprint": self.request_fingerprint,
            "saved_at": self.saved_at,
            "generations": self.generations,
            "download_failed": self.download_failed,
            "try_number": self.try_number,
            **self.generation.to_json(),
        }

    @classmethod
    def from_json(cls, data: Any) -> PendingRecord:
        """Parse a stored record; ``ValueError`` when it is not one."""
        urls = data.get("image_urls") if isinstance(data, dict) else None
        if not isinstance(urls, list) or not urls or not all(isinstance(url, str) for url in urls):
            raise ValueError("no list of image URLs")
        return cls(
            image_urls=tuple(urls),
            request_fingerprint=str(data.get("request_fingerprint", "")),
            generation=Generation.from_json(data),
            saved_at=str(data.get("saved_at") or ""),
            generations=int(data.get("generations") or 1),
            download_failed=data.get("download_failed") is True,
            try_number=data["try_number"] if isinstance(data.get("try_number"), int) else None,
        )


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: one prompt's verified images, what was asked, when and where."""

    task: dict[str, Any]
    endpoint: str
    prompt: str
    prompt_sha256: str
    request: dict[str, Any]
    request_fingerprint: str
    requested_images: int
    generation: Generation
    images: tuple[CopiedImage, ...]
    completed_at: str = ""
    status: str = "complete"
    schema_version: int = SCHEMA_VERSION
    cost: dict[str, Any] | None = None  # the generation's figures (metrics.prompt_cost); None in old manifests

    @classmethod
    def build(
        cls,
        *,
        request: ImageGenerationRequest,
        images: Sequence[CopiedImage],
        endpoint: str,
        task: dict[str, Any],
        generation: Generation,
        cost: dict[str, Any] | None = None,
    ) -> Manifest:
        """The manifest of ``images``, just verified, for ``request``.

        :param request: the validated request.
        :param images: the verified images, in index order.
        :param endpoint: the generation endpoint's URL (no credentials).
        :param task: dag/run/task ids, map index, try number and prompt index.
        :param generation: what the API call said of itself.
        :param cost: paid calls, images requested/received/stored, bytes stored, API seconds.
        """
        return cls(
            task=task,
            endpoint=endpoint,
            prompt=request.prompt,
            prompt_sha256=prompt_digest(request.prompt),
            request={k: v for k, v in request.to_json().items() if k != "prompt"},
            request_fingerprint=request_fingerprint(request),
            requested_images=request.n,
            generation=generation,
            images=tuple(images),
            completed_at=utcnow_iso(),
            cost=cost,
        )

    def to_json(self) -> dict[str, Any]:
        """The stored JSON object (its field names are documented in the docs' operator page, "Manifest").

        Each image is listed as in XCom; the ETag S3 gave each verified object is under
        ``stored_etags`` (key → ETag), for a later try to compare.
        """
        etags = {image.key: image.etag for image in self.images if image.etag}
        return {
            "schema_version": self.schema_version,
            "status": self.status,
            "task": self.task,
            "endpoint": self.endpoint,
            "prompt": self.prompt,
            "prompt_sha256": self.prompt_sha256,
            "request": self.request,
            "request_fingerprint": self.request_fingerprint,
            "requested_images": self.requested_images,
            "received_images": len(self.images),
            **self.generation.to_json(),
            "completed_at": self.completed_at,
            "images": [image.to_dict() for image in self.images],
            **({"stored_etags": etags} if etags else {}),
            **({"cost": dict(self.cost)} if self.cost is not None else {}),
        }

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Parse a stored manifest; ``ValueError`` when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            etags = {str(k): str(v) for k, v in (data.get("stored_etags") or {}).items()}
            images = tuple(
                replace(image, etag=etags.get(image.key, ""))
                for image in (CopiedImage.from_dict(item) for item in data.get("images") or ())
            )
            return cls(
                task=dict(data.get("task") or {}),
                endpoint=str(data.get("endpoint") or ""),
                prompt=str(data.get("prompt", "")),
                prompt_sha256=str(data.get("prompt_sha256", "")),
                request=dict(data.get("request") or {}),
                request_fingerprint=str(data.get("request_fingerprint", "")),
                requested_images=int(data.get("requested_images") or 0),
                generation=Generation.from_json(data),
                images=images,
                completed_at=str(data.get("completed_at") or ""),
                status=str(data.get("status", "")),
                schema_version=int(data.get("schema_version") or 0),
                cost=dict(data["cost"]) if isinstance(data.get("cost"), dict) else None,
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"missing or malformed field: {error}") from error


class RecordStore:
    """The retry-safety protocol of one task try, on one S3 client and bucket.

    ``list_records`` (one LIST) → per prompt ``reuse`` (a verified manifest) or ``pending`` (recorded
    URLs) → ``record_pending`` → the copy → ``commit`` (the manifest) or ``discard`` (the copied
    objects) → at the end of the try ``drop_committed`` (the pending records of committed prompts).

    :param s3_client: a boto3 S3 client (thread-safe; shared by the copy threads).
    :param bucket: the bucket.
    :param upload_args: upload ExtraArgs; encryption, ACL, tags and storage class apply to the records.
    :param log: where to say what was found.
    """

    def __init__(self, s3_client: Any, bucket: str, *, upload_args: dict[str, Any], log: TaskLog) -> None:
        self.s3_client = s3_client
        self.bucket = bucket
        self.log = log
        self._put_args = {k: v for k, v in upload_args.items() if k in _RECORD_PUT_ARGS}
        self._present: dict[str, frozenset[str]] | None = None  # None: unknown (listing denied or not done)
        self._committed: list[str] = []  # list.append is atomic: the copy threads commit concurrently
        self._task_prefix: str | None = None  # what list_records listed

    # -- what earlier tries left -------------------------------------------------------------------

    def list_records(self, prefix: str, *, nested: bool) -> None:
        """List the records under ``prefix`` (``nested``: under every sub-prefix), in one paginated LIST.

        A fresh run then costs one request instead of two failed GETs per prompt. When listing is
        denied (a role without ``s3:ListBucket``) the store reads each record directly instead.
        A missing bucket raises a permanent error, before anything is generated.

        :param prefix: the task's prefix (batch mode: the parent of the prompts' prefixes).
        :param nested: batch mode: records of ``{prefix}/{i:03d}/`` too.
        """
        self._task_prefix = prefix
        found: dict[str, set[str]] = {}
        try:
            pages = self.s3_client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{prefix}/", **({} if nested else {"Delimiter": "/"})
            )
            for page in pages:
                for item in page.get("Contents", []):
                    parent, _, name = item["Key"].rpartition("/")
                    if name in (MANIFEST_NAME, PENDING_NAME):
                        found.setdefault(parent, set()).add(name)
        except Exception as error:
            if s3_error_code(error) in ("AccessDenied", "403"):
                self._present = None
                return
            raise error_from_s3(error, self.bucket, f"{prefix}/", action="listing of") from error
        self._present = {parent: frozenset(names) for parent, names in found.items()}

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Abort the multipart uploads left open under ``prefix`` (a worker killed mid-upload): S3 bills them.

        Only the task's own prefix is looked at; a store that refuses or lacks the listing only
        gets a warning (the upload stays; a bucket lifecycle rule is the other remedy).

        :param prefix: the task's prefix.
        :return: how many uploads were aborted.
        """
        aborted = 0
        try:
            pages = self.s3_client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=f"{prefix}/"
            )
            for page in pages:
                for upload in page.get("Uploads") or []:
                    self.s3_client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
                    self.log.warning(
                        "Aborted a multipart upload an earlier try left open: s3://%s/%s (started %s)",
                        self.bucket,
                        upload["Key"],
                        upload.get("Initiated", "?"),
                    )
        except Exception as error:
            code = s3_error_code(error)
            if code == "NoSuchBucket":
                raise error_from_s3(error, self.bucket, f"{prefix}/", action="listing of") from error
            if code in _UPLOADS_UNAVAILABLE or code in S3_MISSING_CODES:
                self.log.warning(
                    "Could not list or abort incomplete multipart uploads under s3://%s/%s/ (%s)",
                    self.bucket,
                    prefix,
                    code,
                )
                return aborted
            raise error_from_s3(error, self.bucket, f"{prefix}/", action="abort of uploads under") from error
        return aborted

    def _may_exist(self, prefix: str, name: str) -> bool:
        return self._present is None or name in self._present.get(prefix, frozenset())

    def reuse(self, job: PromptJob) -> list[CopiedImage] | None:
        """The verified images of an earlier try's manifest for this request; None if there are none.

        A manifest that no longer holds (another request, a missing or changed object) is deleted
        before its objects are overwritten: it must not vouch for them meanwhile.
        """
        if not self._may_exist(job.prefix, MANIFEST_NAME):
            return None
        manifest = self.read_manifest(job.prefix)
        if manifest is None:
            return None
        images = self._verified(manifest, job)
        if images is None:
            self.log.warning(
                "Prompt %d: s3://%s/%s from an earlier run does not match this request "
                "or its objects changed; producing the images again",
                job.prompt_index,
                self.bucket,
                manifest_key(job.prefix),
            )
            self._delete(manifest_key(job.prefix))
            return None
        if self._may_exist(job.prefix, PENDING_NAME):  # left by a try killed before cleaning up
            self._committed.append(job.prefix)
        self.log.info(
            "Prompt %d: s3://%s/%s already holds %d verified image(s) from an earlier try; no API call",
            job.prompt_index,
            self.bucket,
            job.prefix,
            len(images),
        )
        return images

    def pending(self, job: PromptJob) -> PendingRecord | None:
        """The URLs an earlier try of this same request generated and did not commit; else None."""
        if not self._may_exist(job.prefix, PENDING_NAME):
            return None
        data = self._read(pending_key(job.prefix))
        if data is None:
            return None
        record = self._parse(PendingRecord.from_json, data, pending_key(job.prefix))
        return record if record.request_fingerprint == request_fingerprint(job.request) else None

    def read_manifest(self, prefix: str) -> Manifest | None:
        """The manifest stored under ``prefix``, whatever request it was for; None if absent.

        :param prefix: a prompt's prefix.
        """
        data = self._read(manifest_key(prefix))
        return None if data is None else self._parse(Manifest.from_json, data, manifest_key(prefix))

    def _verified(self, manifest: Manifest, job: PromptJob) -> list[CopiedImage] | None:
        if manifest.status != "complete" or not manifest.images:
            return None
        if manifest.request_fingerprint != request_fingerprint(job.request):
            return None
        if any(image.bucket != self.bucket or not image.key.startswith(job.prefix + "/") for image in manifest.images):
            return None
        if not all(self._still_stored(image) for image in manifest.images):
            return None
        return list(manifest.images)

    def _still_stored(self, image: CopiedImage) -> bool:
        """Whether the object exists as it was verified: its size, and whatever the store offers to compare.

        The whole-object SHA-256 when S3 kept one; the ETag the store gave the verified object
        (``image.etag``, recorded in the manifest), which changes when the object is overwritten.
        """
        try:
            head = self.s3_client.head_object(Bucket=image.bucket, Key=image.key, ChecksumMode="ENABLED")
        except Exception as error:
            if s3_error_code(error) in S3_MISSING_CODES:
                return False
            raise error_from_s3(error, image.bucket, image.key, action="check of") from error
        differences, _ = stored_object_differences(head, size=image.size_bytes, sha256=image.sha256, etag=image.etag)
        return not differences

    # -- this try's records ------------------------------------------------------------------------

    def record_pending(
        self,
        job: PromptJob,
        urls: Sequence[str],
        generation: Generation,
        *,
        generations: int = 1,
        download_failed: bool = False,
        try_number: int | None = None,
    ) -> None:
        """Record generated URLs so that a retry can copy them without generating (and paying) again.

        Written with only the arguments a small JSON object needs (encryption), so that a bad
        image-upload argument cannot also lose the record of what was paid for.

        :param job: the prompt.
        :param urls: the image URLs to copy.
        :param generation: what the API call said of itself.
        :param generations: paid generations this task instance made for the prompt so far.
        :param download_failed: a try failed downloading these URLs (their host, not S3, failed).
        :param try_number: the try whose call paid for them.
        """
        record = PendingRecord(
            image_urls=tuple(urls),
            request_fingerprint=request_fingerprint(job.request),
            generation=generation,
            saved_at=utcnow_iso(),
            generations=generations,
            download_failed=download_failed,
            try_number=try_number,
        )
        self._write(pending_key(job.prefix), record.to_json(), put_args=_PENDING_PUT_ARGS)

    def commit(self, job: PromptJob, manifest: Manifest, *, shared: bool = False) -> None:
        """Write the manifest: the commit point. The pending record goes later (:meth:`drop_committed`).

        :param job: the prompt.
        :param manifest: its verified images.
        :param shared: the prefix is an explicit ``s3_key_prefix`` other tasks may write to as well.
            Every image is then checked again right before the manifest goes (size, checksum, the
            ETag it was stored with), and the manifest is written only if none exists
            (``If-None-Match``): a second writer makes this try fail loudly instead of leaving a
            manifest that vouches for another task's bytes.
        """
        if shared:
            changed = [image for image in manifest.images if not self._still_stored(image)]
            if changed:
                raise ImageGenWriteConflictError(
                    f"Another writer changed {changed[0].s3_uri} while this task was copying to the shared prefix "
                    f"{job.prefix!r}; not committing. Tasks that share an s3_key_prefix must not run at once."
                )
        self._write(manifest_key(job.prefix), manifest.to_json(), exclusive=shared)
        self._committed.append(job.prefix)

    def discard(self, images: Iterable[CopiedImage]) -> None:
        """Best effort: delete the objects of a failed copy (no manifest will vouch for them)."""
        for image in images:
            try:
                self.s3_client.delete_object(Bucket=image.bucket, Key=image.key)
            except Exception as error:  # the original failure matters more
                self.log.warning("Could not delete %s after a failed copy: %s", image.s3_uri, error)

    def drop_committed(self) -> None:
        """End of a try: delete the committed prompts' pending records, abort uploads left open.

        The pending records go with :meth:`drop_pending`. Then the multipart uploads still open
        under the task's prefix (the one :meth:`list_records` listed; else each committed prompt's) are
        leftovers of an earlier try killed mid-upload (this try's copies are over): they are
        aborted (:meth:`abort_incomplete_uploads`). A pending record beside a manifest is harmless
        (the manifest wins), and an open upload is only billed, so a failure here only warns.
        """
        prefixes, self._committed = self._committed, []
        try:
            self.drop_pending(prefixes)
        except ImageGenStorageError as error:
            self.log.warning("Could not delete the pending record(s) of committed prompts: %s", error)
        for prefix in [self._task_prefix] if self._task_prefix else sorted(set(prefixes)):
            try:
                self.abort_incomplete_uploads(prefix)
            except ImageGenStorageError as error:
                self.log.warning(
                    "Could not abort the multipart uploads left under s3://%s/%s/: %s", self.bucket, prefix, error
                )

    def drop_pending(self, prefixes: Sequence[str]) -> None:
        """Delete the pending records under ``prefixes``: one ``DeleteObjects`` per 1000 prefixes.

        :param prefixes: the prompts' prefixes (a missing record is no error).
        """
        keys = [pending_key(prefix) for prefix in prefixes]
        for start in range(0, len(keys), _DELETE_BATCH):
            self._delete_many(keys[start : start + _DELETE_BATCH])

    # -- S3 ----------------------------------------------------------------------------------------

    def _read(self, key: str) -> Any:
        """The JSON value stored at ``key``; None if there is no such object."""
        try:
            body = self.s3_client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as error:
            if s3_error_code(error) in S3_MISSING_CODES:
                return None
            raise error_from_s3(error, self.bucket, key, action="read of") from error
        try:
            return json.loads(body)
        except ValueError as error:
            raise self._unreadable(key, "not JSON") from error

    def _parse(self, parse: Any, data: Any, key: str) -> Any:
        try:
            return parse(data)
        except ValueError as error:
            raise self._unreadable(key, str(error)) from error

    def _unreadable(self, key: str, why: str) -> ImageGenPermanentStorageError:
        return ImageGenPermanentStorageError(
            f"s3://{self.bucket}/{key} exists but is not a record this provider can read ({why}); "
            "delete it to produce the images again"
        )

    def _write(
        self, key: str, data: dict[str, Any], *, put_args: tuple[str, ...] = _RECORD_PUT_ARGS, exclusive: bool = False
    ) -> None:
        """PUT a JSON record; ``exclusive``: only if no object exists at ``key`` (``If-None-Match: *``)."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": json.dumps(data, indent=2, sort_keys=True).encode(),
            "ContentType": "application/json",
            "ChecksumAlgorithm": "SHA256",
            **{k: v for k, v in self._put_args.items() if k in put_args},
        }
        try:
            try:
                self.s3_client.put_object(**args, **({"IfNoneMatch": "*"} if exclusive else {}))
            except Exception as error:
                if not exclusive or s3_error_code(error) not in ("NotImplemented", "501"):
                    raise
                self.s3_client.put_object(**args)  # a store without conditional writes: the check above stands
        except Exception as error:
            if exclusive and s3_error_code(error) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise ImageGenWriteConflictError(
                    f"Another writer committed s3://{self.bucket}/{key} first while this task was copying; "
                    "not overwriting it. Tasks that share an s3_key_prefix must not run at once."
                ) from error
            raise error_from_s3(error, self.bucket, key, action="write to") from error

    def _delete(self, key: str) -> None:
        try:
            self.s3_client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as error:
            raise error_from_s3(error, self.bucket, key, action="delete of") from error

    def _delete_many(self, keys: list[str]) -> None:
        try:
            response = self.s3_client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
            )
        except Exception as error:
            if s3_error_code(error) not in _DELETE_MANY_REFUSED:
                raise error_from_s3(error, self.bucket, keys[0], action="delete of") from error
            # the store refuses DeleteObjects itself (Swift s3api wants a Content-MD5): one by one
            self.log.info(
                "S3 refused DeleteObjects (%s); deleting %d key(s) one by one", s3_error_code(error), len(keys)
            )
            for key in keys:
                self._delete(key)
            return
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise ImageGenStorageError(
                f"S3 delete of s3://{self.bucket}/{first.get('Key')} failed: {first.get('Code')}: "
                f"{first.get('Message')}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
            )
