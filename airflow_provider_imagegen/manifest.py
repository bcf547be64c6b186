"""Where images land in S3, and the two small JSON records kept beside them.

Layout under a prefix (default ``imagegen/{dag_id}/{run_id}/{task_id}[/{map_index}]``)::

    {prefix}/00.png ... 09.png   the images, in the order the API returned them
    {prefix}/manifest.json       written last: its presence means every image above is verified
    {prefix}/_pending.json       until the try ends: the generated URLs, so that a retry after an
                                 S3 failure copies them again instead of paying for new images

With ``prompts=[...]`` each prompt gets ``{prefix}/{prompt_index:03d}/`` with the same layout.
The manifest never holds the API key or the (signed) image URLs; ``_pending.json`` holds the URLs
and is deleted once the manifest is written (all prompts' records together, at the end of the try).

Both records carry a fingerprint of the request (prompt and parameters): a record written for a
different request (the DAG changed between tries) is ignored, never mistaken for this one's.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.exceptions import ImageGenStorageError
from airflow_provider_imagegen.transfer import CopiedImage, full_object_sha256, storage_error

if TYPE_CHECKING:
    from airflow_provider_imagegen.models import ImageGenerationRequest

MANIFEST_NAME = "manifest.json"
PENDING_NAME = "_pending.json"
SCHEMA_VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")
# characters of Airflow's own run ids (``manual__2026-01-01T00:00:00+00:00``) that are replaced
# readably; any other replaced character adds a digest of the original so that names stay distinct
_TIMESTAMP_CHARS = frozenset(":+")
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes


def safe_segment(value: str) -> str:
    """A string as one S3-friendly path segment, made only of ``[A-Za-z0-9._=-]``.

    ``manual__2026-01-01T00:00:00+00:00`` → ``manual__2026-01-01T00-00-00-00-00``. When other
    characters had to go (spaces, slashes, non-ASCII letters...), an 8-character digest of the
    original is appended, so that ``"ünïcode"`` and ``"anicode"`` never share a prefix.

    :param value: any string (a dag, run or task id).
    """
    value = str(value)
    cleaned = _UNSAFE.sub("-", value).strip("-.")
    lossy = any(_UNSAFE.match(char) and char not in _TIMESTAMP_CHARS for char in value)
    if not cleaned or lossy:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = f"{cleaned}-{digest}" if cleaned else digest
    return cleaned


def default_prefix(dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    """``imagegen/{dag_id}/{run_id}/{task_id}`` (S3-safe), plus ``/{map_index}`` for mapped tasks.

    :param dag_id: the DAG id.
    :param run_id: the DAG run id (made S3-safe).
    :param task_id: the task id.
    :param map_index: the map index; None or negative for an unmapped task.
    """
    parts = ["imagegen", safe_segment(dag_id), safe_segment(run_id), safe_segment(task_id)]
    if map_index is not None and map_index >= 0:
        parts.append(str(map_index))
    return "/".join(parts)


def image_key(prefix: str, index: int, extension: str) -> str:
    """``{prefix}/{index:02d}.{png|jpg}``."""
    return f"{prefix}/{index:02d}.{extension}"


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


def build_manifest(
    *,
    request: ImageGenerationRequest,
    images: list[CopiedImage],
    prompt_sha256: str,
    endpoint: str,
    task: dict[str, Any],
    generated_at: str,
    generation_seconds: float | None,
    request_id: str | None,
) -> dict[str, Any]:
    """The manifest of one prompt's images: what was asked, what landed, when and where.

    :param request: the validated request.
    :param images: the verified images, in index order.
    :param prompt_sha256: sha256 of the rendered prompt.
    :param endpoint: the generation endpoint's URL (no credentials).
    :param task: dag/run/task ids, map index, try number and prompt index.
    :param generated_at: when the API call finished (ISO 8601).
    :param generation_seconds: how long the API call took.
    :param request_id: the API's request id, if it sent one.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "complete",
        "task": task,
        "endpoint": endpoint,
        "prompt": request.prompt,
        "prompt_sha256": prompt_sha256,
        "request": {k: v for k, v in request.to_json().items() if k != "prompt"},
        "request_fingerprint": request_fingerprint(request),
        "requested_images": request.n,
        "received_images": len(images),
        "generated_at": generated_at,
        "generation_seconds": generation_seconds,
        "api_request_id": request_id,
        "completed_at": utcnow_iso(),
        "images": [image.to_dict() for image in images],
    }


def _error_code(error: BaseException) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _read_json(s3_client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The JSON object stored at ``key``; None if it is missing or not a JSON object."""
    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as error:
        if _error_code(error) in _MISSING_CODES:
            return None
        raise storage_error(error, bucket, key, action="read of") from error
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


# upload_fileobj ExtraArgs that put_object takes too (encryption and ACL apply to the records as well)
_JSON_PUT_ARGS = (
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


def _put_json(s3_client: Any, bucket: str, key: str, data: dict[str, Any], extra_args: dict[str, Any]) -> None:
    try:
        s3_client.put_object(
            Bucket=bucket,
            Key=key,
            Body=json.dumps(data, indent=2, sort_keys=True).encode(),
            ContentType="application/json",
            ChecksumAlgorithm="SHA256",
            **{k: v for k, v in extra_args.items() if k in _JSON_PUT_ARGS},
        )
    except Exception as error:
        raise storage_error(error, bucket, key, action="write to") from error


def _delete(s3_client: Any, bucket: str, key: str) -> None:
    try:
        s3_client.delete_object(Bucket=bucket, Key=key)
    except Exception as error:
        raise storage_error(error, bucket, key, action="delete of") from error


def write_manifest(
    s3_client: Any, bucket: str, prefix: str, manifest: dict[str, Any], extra_args: dict[str, Any]
) -> None:
    """Write the manifest: the commit point. The pending record goes later (:func:`delete_pending`).

    :param s3_client: a boto3 S3 client.
    :param bucket: the bucket.
    :param prefix: the prompt's prefix.
    :param manifest: from :func:`build_manifest`.
    :param extra_args: upload ExtraArgs (encryption, ACL, tags apply to the manifest too).
    """
    _put_json(s3_client, bucket, manifest_key(prefix), manifest, extra_args)


def delete_pending(s3_client: Any, bucket: str, prefixes: list[str]) -> None:
    """Drop the pending records of committed prompts: one ``DeleteObjects`` per 1000 prompts.

    A pending record beside a manifest is harmless (the manifest wins), so the operator removes
    them together at the end of a try instead of with one request per prompt.

    :param s3_client: a boto3 S3 client.
    :param bucket: the bucket.
    :param prefixes: the prompts' prefixes.
    """
    keys = [pending_key(prefix) for prefix in prefixes]
    for start in range(0, len(keys), _DELETE_BATCH):
        batch = keys[start : start + _DELETE_BATCH]
        try:
            response = s3_client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
            )
        except Exception as error:
            raise storage_error(error, bucket, batch[0], action="delete of") from error
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise ImageGenStorageError(
                f"S3 delete of s3://{bucket}/{first.get('Key')} failed: {first.get('Code')}: {first.get('Message')}"
                + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
            )


def records_present(s3_client: Any, bucket: str, prefix: str) -> frozenset[str] | None:
    """Which of ``manifest.json`` and ``_pending.json`` exist under ``prefix``, in one LIST call.

    A fresh run then costs one request instead of two failed GETs. None when listing is denied
    (a role without ``s3:ListBucket``): the caller then reads both records directly. A missing
    bucket raises a permanent :class:`ImageGenStorageError`, before anything is generated.
    """
    found = _list_records(s3_client, bucket, prefix, delimiter=True)
    return None if found is None else found.get(prefix, frozenset())


def records_by_prefix(s3_client: Any, bucket: str, prefix: str) -> dict[str, frozenset[str]] | None:
    """The records under every prefix below ``prefix`` (batch mode), in one paginated LIST.

    ``{"p/000": {"manifest.json"}, ...}``; prefixes without records are absent. None when
    listing is denied; a missing bucket raises, as :func:`records_present` does.
    """
    return _list_records(s3_client, bucket, prefix, delimiter=False)


def _list_records(s3_client: Any, bucket: str, prefix: str, *, delimiter: bool) -> dict[str, frozenset[str]] | None:
    found: dict[str, set[str]] = {}
    try:
        pages = s3_client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{prefix}/", **({"Delimiter": "/"} if delimiter else {})
        )
        for page in pages:
            for item in page.get("Contents", []):
                parent, _, name = item["Key"].rpartition("/")
                if name in (MANIFEST_NAME, PENDING_NAME):
                    found.setdefault(parent, set()).add(name)
    except Exception as error:
        code = _error_code(error)
        if code in ("AccessDenied", "403"):
            return None
        if code == "NoSuchBucket":
            raise ImageGenStorageError(
                f"S3 bucket {bucket!r} does not exist (check s3_bucket and the AWS connection)", permanent=True
            ) from error
        raise storage_error(error, bucket, f"{prefix}/", action="listing of") from error
    return {parent: frozenset(names) for parent, names in found.items()}


def load_manifest(s3_client: Any, bucket: str, prefix: str) -> dict[str, Any] | None:
    """The manifest stored under ``prefix`` by an earlier try, whatever its state; None if absent."""
    return _read_json(s3_client, bucket, manifest_key(prefix))


def delete_manifest(s3_client: Any, bucket: str, prefix: str) -> None:
    """Remove a manifest that no longer holds, before its objects are overwritten."""
    _delete(s3_client, bucket, manifest_key(prefix))


def _still_stored(s3_client: Any, image: CopiedImage) -> bool:
    """Whether the object exists with its recorded size (and SHA-256, when S3 kept a full one)."""
    try:
        head = s3_client.head_object(Bucket=image.bucket, Key=image.key, ChecksumMode="ENABLED")
    except Exception as error:
        if _error_code(error) in _MISSING_CODES:
            return False
        raise storage_error(error, image.bucket, image.key, action="check of") from error
    if head.get("ContentLength") != image.size_bytes:
        return False
    stored = full_object_sha256(head)
    return stored is None or stored == image.sha256


def verified_images(
    s3_client: Any, manifest: dict[str, Any] | None, bucket: str, prefix: str, request: ImageGenerationRequest
) -> list[CopiedImage] | None:
    """The images of a complete manifest for this request whose objects all still hold.

    None when the manifest is missing, incomplete, written for another request, or any object
    is missing or changed: the caller must then produce the images again.

    :param s3_client: a boto3 S3 client.
    :param manifest: from :func:`load_manifest`.
    :param bucket: the bucket the images must be in.
    :param prefix: the prefix the images must be under.
    :param request: the request this task instance would send now.
    """
    if not manifest or manifest.get("status") != "complete" or not manifest.get("images"):
        return None
    if manifest.get("request_fingerprint") != request_fingerprint(request):
        return None
    try:
        images = [CopiedImage.from_dict(item) for item in manifest["images"]]
    except (KeyError, TypeError):
        return None
    if any(image.bucket != bucket or not image.key.startswith(prefix + "/") for image in images):
        return None
    if not all(_still_stored(s3_client, image) for image in images):
        return None
    return images


def load_verified_images(
    s3_client: Any, bucket: str, prefix: str, request: ImageGenerationRequest
) -> list[CopiedImage] | None:
    """:func:`verified_images` of the manifest stored under ``prefix``."""
    return verified_images(s3_client, load_manifest(s3_client, bucket, prefix), bucket, prefix, request)


def save_pending_urls(
    s3_client: Any,
    bucket: str,
    prefix: str,
    urls: list[str],
    extra_args: dict[str, Any],
    request: ImageGenerationRequest,
    **info: Any,
) -> None:
    """Record generated URLs so that a retry can copy them without generating (and paying) again.

    :param s3_client: a boto3 S3 client.
    :param bucket: the bucket.
    :param prefix: the prompt's prefix.
    :param urls: the image URLs the API returned.
    :param extra_args: upload ExtraArgs (encryption, ACL...).
    :param request: the request the URLs answer.
    :param info: generation details kept for the manifest (``generated_at``...).
    """
    record = {
        "image_urls": urls,
        "saved_at": utcnow_iso(),
        "request_fingerprint": request_fingerprint(request),
        **info,
    }
    _put_json(s3_client, bucket, pending_key(prefix), record, extra_args)


def load_pending(s3_client: Any, bucket: str, prefix: str, request: ImageGenerationRequest) -> dict[str, Any] | None:
    """The pending record an earlier try left for this same request (``image_urls`` and generation info)."""
    record = _read_json(s3_client, bucket, pending_key(prefix))
    if not record or record.get("request_fingerprint") != request_fingerprint(request):
        return None
    urls = record.get("image_urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(url, str) for url in urls):
        return None
    return record
