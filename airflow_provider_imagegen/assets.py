"""What a task tells Airflow's asset system about the images it stored: pure, small, JSON-safe.

By default (``asset_events="task"``) a task instance makes ONE asset event per outlet, whatever
the number of images: a static ``Asset`` outlet gets it as its event's ``extra``; an
``AssetAlias`` outlet resolves to one stable asset per task, :func:`task_asset_uri`, so the
number of assets Airflow holds does not grow with runs or images. With ``asset_events="image"`` an
alias gets one ``s3://`` asset (and event) per stored image instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.models import prompt_digest
from airflow_provider_imagegen.records import manifest_key

if TYPE_CHECKING:
    from airflow_provider_imagegen.models import CopiedImage
    from airflow_provider_imagegen.plan import Plan

ASSET_EVENT_MODES = ("task", "image")
MAX_LISTED_IMAGES = 100
"""The most images (and manifests) one event's ``extra`` lists; beyond it ``truncated`` is true."""


def check_asset_events(mode: Any) -> str:
    """``mode`` if it is one of :data:`ASSET_EVENT_MODES`; else ``ValueError``."""
    if mode not in ASSET_EVENT_MODES:
        raise ValueError(f"asset_events must be one of {ASSET_EVENT_MODES}, not {mode!r}")
    return str(mode)


def task_asset_uri(plan: Plan) -> str:
    """The one asset an ``AssetAlias`` outlet resolves to by default: ``s3://{bucket}/imagegen/{dag_id}/{task_id}``.

    Stable across runs, tries and map indexes (it names the data set the task produces, not one
    run's folder; the event's ``extra`` says where this run's images are).
    """
    return f"s3://{plan.bucket}/imagegen/{plan.task.dag_id}/{plan.task.task_id}"


def task_event_extra(plan: Plan, images: list[CopiedImage], *, limit: int = MAX_LISTED_IMAGES) -> dict[str, Any]:
    """The ``extra`` of a task-level event: what this task instance stored, bounded in size.

    :param plan: the try's plan.
    :param images: the stored images, in prompt order.
    :param limit: the most images and manifests listed; the rest are under ``prefix``.
    """
    manifests = [manifest_key(job.prefix) for job in plan.jobs]
    truncated = len(images) > limit or len(manifests) > limit
    return {
        "bucket": plan.bucket,
        "prefix": plan.list_prefix,
        "dag_id": plan.task.dag_id,
        "run_id": plan.task.run_id,
        "task_id": plan.task.task_id,
        "map_index": plan.task.map_index,
        "prompt_count": len(plan.jobs),
        "image_count": len(images),
        "bytes": sum(image.size_bytes for image in images),
        "manifests": manifests[:limit],
        "images": [
            {
                "key": image.key,
                "sha256": image.sha256,
                "size_bytes": image.size_bytes,
                "prompt_index": image.prompt_index,
            }
            for image in images[:limit]
        ],
        "truncated": truncated,
    }


def image_events(plan: Plan, images: list[CopiedImage]) -> list[tuple[str, dict[str, Any]]]:
    """One ``(s3 URI, extra)`` per stored image, for an ``AssetAlias`` outlet with ``asset_events="image"``.

    :param plan: the try's plan (the prompts, for their digests).
    :param images: the stored images, in prompt order.
    """
    digests = {job.prompt_index: prompt_digest(job.request.prompt) for job in plan.jobs}
    return [
        (
            image.s3_uri,
            {
                "sha256": image.sha256,
                "size_bytes": image.size_bytes,
                "width": image.width,
                "height": image.height,
                "content_type": image.content_type,
                "prompt_sha256": digests[image.prompt_index],
            },
        )
        for image in images
    ]


def emit(outlets: Any, outlet_events: Any, plan: Plan, images: list[CopiedImage], *, mode: str) -> None:
    """Tell Airflow about ``images`` through the task's ``outlets`` (see the module docstring).

    :param outlets: the operator's outlets.
    :param outlet_events: ``context["outlet_events"]``.
    :param plan: the try's plan.
    :param images: the stored images.
    :param mode: ``"task"`` (one event per outlet) or ``"image"`` (aliases: one per image).
    """
    from airflow.sdk import Asset, AssetAlias

    from airflow_provider_imagegen.version_compat import alias_event_extra

    extra = task_event_extra(plan, images)
    for outlet in outlets or ():
        if isinstance(outlet, AssetAlias):
            accessor = outlet_events[outlet]
            if mode == "image":
                for uri, image_extra in image_events(plan, images):
                    accessor.add(Asset(uri), extra=image_extra)
            else:
                accessor.add(Asset(task_asset_uri(plan)), extra=alias_event_extra(extra))
        elif isinstance(outlet, Asset):
            outlet_events[outlet].extra = extra
