"""What a task tells Airflow's asset system about the images it stored: pure, small, JSON-safe."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.models import prompt_digest

if TYPE_CHECKING:
    from airflow_provider_imagegen.models import CopiedImage
    from airflow_provider_imagegen.plan import Plan


def image_events(plan: Plan, images: list[CopiedImage]) -> list[tuple[str, dict[str, Any]]]:
    """One ``(s3 URI, extra)`` per stored image, for an ``AssetAlias`` outlet.

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
