"""### imagegen_asset_consumer: check new images as soon as they land

Scheduled on ``AssetAlias("imagegen_images")``: every task instance of a producer (e.g.
``imagegen_daily_content``) that stores images through that alias makes ONE asset event (on the
task's stable asset ``s3://{bucket}/imagegen/{dag_id}/{task_id}``) whose ``extra`` lists what it
stored: bucket, manifest keys, and each image's key, size and SHA-256 (the first 100; beyond that
``truncated`` is true and the rest are read from the manifests under ``extra["prefix"]``). This
DAG HEADs every listed object and checks it against the event (size, and the SHA-256 checksum when
S3 kept one). Run by hand, it checks the images of the most recent ``params.recent`` events instead.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, AssetAlias, Param, task

IMAGES_ALIAS = "imagegen_images"


def _split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"Not an s3:// URI: {uri}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def check_object(client: Any, uri: str, extra: dict[str, Any]) -> str | None:
    """HEAD one object; a problem description, or None when it matches its event."""
    import base64

    bucket, key = _split_s3_uri(uri)
    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except Exception as error:
        return f"{uri}: missing or unreadable ({error})"
    if extra.get("size_bytes") is not None and head["ContentLength"] != extra["size_bytes"]:
        return f"{uri}: {head['ContentLength']} bytes, the event says {extra['size_bytes']}"
    stored = head.get("ChecksumSHA256")
    if stored and "-" not in stored and extra.get("sha256") and base64.b64decode(stored).hex() != extra["sha256"]:
        return f"{uri}: sha256 differs from the event's"
    return None


# [START howto_asset_consumer_read_event]
def images_of_event(client: Any, extra: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(s3 URI, {"size_bytes", "sha256"})`` of every image a task-level event announced.

    A truncated list is completed from the manifests under the event's ``prefix``.
    """
    import json

    bucket = extra["bucket"]
    images = {image["key"]: image for image in extra.get("images") or []}
    if extra.get("truncated"):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{extra['prefix']}/")
        for key in (item["Key"] for page in pages for item in page.get("Contents", [])):
            if key.endswith("/manifest.json"):
                manifest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
                images.update({image["key"]: image for image in manifest["images"]})
    return [(f"s3://{bucket}/{key}", image) for key, image in sorted(images.items())]


# [END howto_asset_consumer_read_event]


@task(multiple_outputs=False, inlets=[AssetAlias(IMAGES_ALIAS)])
def validate_new_images(
    triggering_asset_events: Any = None,
    inlet_events: Any = None,
    params: dict[str, Any] | None = None,
    aws_conn_id: str = "aws_default",
) -> dict[str, Any]:
    """Check every image that the triggering events announced (or the latest events' on a manual run)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    alias = AssetAlias(IMAGES_ALIAS)
    events = [event for events in (triggering_asset_events or {}).values() for event in events]
    if not events:
        recent = int((params or {}).get("recent") or 10)
        print(f"No triggering events: checking the images of the latest {recent} event(s) of {IMAGES_ALIAS!r}")
        accessor = inlet_events[alias]
        if hasattr(accessor, "ascending"):  # Airflow 3.2+: a query, newest first
            events = list(accessor.ascending(False).limit(recent))
        else:  # Airflow 3.1: a list, oldest first
            events = list(accessor)[-recent:][::-1]
    client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
    images: dict[str, tuple[dict[str, Any], Any]] = {}
    for event in events:
        extra = dict(event.extra or {})
        if "image_count" not in extra:  # a per-image event (asset_events="image")
            images[event.asset.uri] = (extra, event)
            continue
        for uri, image in images_of_event(client, extra):
            images[uri] = (image, event)
    problems = []
    for uri, (image, event) in sorted(images.items()):
        problem = check_object(client, uri, image)
        print(f"{'FAIL' if problem else 'ok  '} {uri} from {event.source_dag_id}/{event.source_run_id}")
        if problem:
            problems.append(problem)
    if problems:
        raise ValueError(f"{len(problems)} of {len(images)} image(s) failed the check: " + "; ".join(problems))
    return {"checked": sorted(images)}


# [START howto_asset_consumer]
with DAG(
    dag_id="imagegen_asset_consumer",
    description="Validate newly generated images announced through the imagegen_images asset alias",
    schedule=[AssetAlias(IMAGES_ALIAS)],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"recent": Param(10, type="integer", minimum=1, description="manual runs: events to check")},
    tags=["imagegen", "example"],
    doc_md=__doc__,
) as dag:
    validate_new_images()
# [END howto_asset_consumer]
