"""The stored images as a person sees them: the image entries of an XCom value, each with the
prompt from the manifest beside it, and the URL the provider's plugin serves it at.

Read by the Images tab (:mod:`airflow_provider_imagegen.plugins._app`, in the API server) and by
:class:`~airflow_provider_imagegen.operators.review.ImageReviewOperator` (on a worker), so that
neither imports the other. Manifests are read through the record store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

URL_PREFIX = "/imagegen"
"""Where the API server mounts the plugin's app (the start of every image URL)."""


@dataclass(frozen=True)
class ImageView:
    """One stored image as a page shows it."""

    bucket: str
    key: str
    s3_uri: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int | None
    height: int | None
    index: int
    prompt_index: int
    prompt: str | None


def image_entries(value: Any) -> list[dict[str, Any]]:
    """The image dicts in an XCom value (the operator's list, or lists of them from mapped tasks).

    :param value: a deserialised XCom value.
    """
    if isinstance(value, dict):
        keys_ok = isinstance(value.get("bucket"), str) and isinstance(value.get("key"), str)
        return [value] if keys_ok and isinstance(value.get("sha256"), str) else []
    if isinstance(value, (list, tuple)):
        return [entry for item in value for entry in image_entries(item)]
    return []


def read_manifest(s3_client: Any, bucket: str, prefix: str) -> dict[str, Any] | None:
    """The manifest of the images under ``prefix`` (``None`` if there is none or it is unreadable).

    :param s3_client: a boto3 S3 client.
    :param bucket: the bucket.
    :param prefix: the folder of the images (``{prefix}/manifest.json``).
    """
    from airflow_provider_imagegen.records import RecordStore

    store = RecordStore(s3_client, bucket, upload_args={}, log=logging.getLogger(__name__))
    try:
        manifest = store.read_manifest(prefix)
    except Exception:  # a missing or unreadable manifest: the page still shows the images
        return None
    return None if manifest is None else manifest.to_json()


def _pixels(value: Any) -> int | None:
    """A width or height from XCom, if it is a positive int (XCom is any task's or API user's JSON, not markup)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def describe(s3_client: Any, entries: list[dict[str, Any]]) -> list[ImageView]:
    """Each XCom image entry with its prompt from the manifest of its folder (one read per folder).

    :param s3_client: a boto3 S3 client.
    :param entries: image dicts from XCom.
    """
    prompts: dict[tuple[str, str], str | None] = {}
    views = []
    for entry in entries:
        bucket, key = entry["bucket"], entry["key"]
        folder = key.rsplit("/", 1)[0] if "/" in key else ""
        if (bucket, folder) not in prompts:
            manifest = read_manifest(s3_client, bucket, folder)
            prompt = manifest.get("prompt") if manifest else None
            prompts[(bucket, folder)] = prompt if isinstance(prompt, str) else None
        views.append(
            ImageView(
                bucket=bucket,
                key=key,
                s3_uri=str(entry.get("s3_uri") or f"s3://{bucket}/{key}"),
                content_type=str(entry.get("content_type") or ""),
                size_bytes=int(entry.get("size_bytes") or 0),
                sha256=entry["sha256"],
                width=_pixels(entry.get("width")),
                height=_pixels(entry.get("height")),
                index=int(entry.get("index") or 0),
                prompt_index=int(entry.get("prompt_index") or 0),
                prompt=prompts[(bucket, folder)],
            )
        )
    return views


def image_url(dag_id: str, run_id: str, key: str, *, thumbnail: bool = False, base: str = "") -> str:
    """The plugin's URL of one image of a DAG run (``base`` is the API server's URL or path prefix).

    :param dag_id: the DAG.
    :param run_id: the run whose XCom lists the image.
    :param key: the image's S3 key.
    :param thumbnail: the thumbnail instead of the full image.
    :param base: prepended as is, e.g. ``https://airflow.example.com`` (no trailing slash).
    """
    url = f"{base}{URL_PREFIX}/images/{quote(dag_id, safe='')}/{quote(run_id, safe='')}?key={quote(key, safe='')}"
    return url + "&thumbnail=true" if thumbnail else url
