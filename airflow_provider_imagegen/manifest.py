"""Where images land in S3, and the two small JSON records kept beside them.

Layout under a prefix (default ``imagegen/{dag_id}/{run_id}/{task_id}[/{map_index}]``)::

    {prefix}/00.png ... 09.png   the images, in the order the API returned them
    {prefix}/manifest.json       written last: its presence means every image above is verified
    {prefix}/_pending.json       while copying only: the generated URLs, so that a retry after an
                                 S3 failure copies them again instead of paying for new images

With ``prompts=[...]`` each prompt gets ``{prefix}/{prompt_index:03d}/`` with the same layout.
The manifest never holds the API key or the (signed) image URLs; ``_pending.json`` holds the URLs
and is deleted as soon as the manifest is written.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.transfer import CopiedImage

if TYPE_CHECKING:
    from airflow_provider_imagegen.models import ImageGenerationRequest

MANIFEST_NAME = "manifest.json"
PENDING_NAME = "_pending.json"
SCHEMA_VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def safe_segment(value: str) -> str:
    """A string as one S3-friendly path segment: ``manual__2026-01-01T00:00:00+00:00`` →
    ``manual__2026-01-01T00-00-00-00-00``."""
    cleaned = _UNSAFE.sub("-", value).strip("-.")
    return cleaned or "_"


def default_prefix(dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    """``imagegen/{dag_id}/{run_id}/{task_id}`` (S3-safe), plus ``/{map_index}`` for mapped tasks."""
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
    """The manifest of one prompt's images: what was asked, what landed, when and where."""
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "complete",
        "task": task,
        "endpoint": endpoint,
        "prompt": request.prompt,
        "prompt_sha256": prompt_sha256,
        "request": {k: v for k, v in request.to_json().items() if k != "prompt"},
        "requested_images": request.n,
        "received_images": len(images),
        "generated_at": generated_at,
        "generation_seconds": generation_seconds,
        "api_request_id": request_id,
        "completed_at": utcnow_iso(),
        "images": [image.to_dict() for image in images],
    }


def _read_json(s3_client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as error:
        if getattr(error, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _put_json(s3_client: Any, bucket: str, key: str, data: dict[str, Any], extra_args: dict[str, Any]) -> None:
    s3_client.put_object(
        Bucket=bucket,
        Key=key,
        Body=json.dumps(data, indent=2, sort_keys=True).encode(),
        ContentType="application/json",
        ChecksumAlgorithm="SHA256",
        **{k: v for k, v in extra_args.items() if k in _JSON_PUT_ARGS},
    )


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


def write_manifest(
    s3_client: Any, bucket: str, prefix: str, manifest: dict[str, Any], extra_args: dict[str, Any]
) -> None:
    """Write the manifest (the commit point), then drop the pending record."""
    _put_json(s3_client, bucket, manifest_key(prefix), manifest, extra_args)
    s3_client.delete_object(Bucket=bucket, Key=pending_key(prefix))


def load_verified_images(s3_client: Any, bucket: str, prefix: str) -> list[CopiedImage] | None:
    """The images of a complete manifest whose objects all still exist with their recorded size.

    None when there is no manifest, it is not complete, or any object is missing or changed:
    the caller must then produce the images again.
    """
    manifest = _read_json(s3_client, bucket, manifest_key(prefix))
    if not manifest or manifest.get("status") != "complete" or not manifest.get("images"):
        return None
    images = [CopiedImage.from_dict(item) for item in manifest["images"]]
    for image in images:
        try:
            head = s3_client.head_object(Bucket=image.bucket, Key=image.key)
        except Exception:
            return None
        if head.get("ContentLength") != image.size_bytes:
            return None
    return images


def save_pending_urls(
    s3_client: Any, bucket: str, prefix: str, urls: list[str], extra_args: dict[str, Any], **info: Any
) -> None:
    """Record generated URLs so that a retry can copy them without generating (and paying) again."""
    _put_json(
        s3_client, bucket, pending_key(prefix), {"image_urls": urls, "saved_at": utcnow_iso(), **info}, extra_args
    )


def load_pending(s3_client: Any, bucket: str, prefix: str) -> dict[str, Any] | None:
    """The pending record of an earlier try, if any (``image_urls`` plus generation info)."""
    record = _read_json(s3_client, bucket, pending_key(prefix))
    if record and isinstance(record.get("image_urls"), list) and record["image_urls"]:
        return record
    return None
