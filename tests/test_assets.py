"""What a task tells Airflow's asset system (``assets``): pure values, and ``emit`` on a recording ``outlet_events``."""

from __future__ import annotations

import json

import pytest

from airflow_provider_imagegen.assets import (
    ASSET_EVENT_MODES,
    MAX_LISTED_IMAGES,
    check_asset_events,
    emit,
    image_events,
    task_asset_uri,
    task_event_extra,
)
from airflow_provider_imagegen.models import CopiedImage, ImageGenerationRequest, prompt_digest
from airflow_provider_imagegen.plan import Plan, PromptJob, TaskIdentity
from airflow_provider_imagegen.version_compat import alias_event_extra
from tests.support import RecordingOutletEvents

TASK = TaskIdentity(dag_id="daily", run_id="manual__1", task_id="banner", map_index=2, try_number=1)
PREFIX = "imagegen/daily/manual__1/banner/2"


def _plan(prompts: int = 2, n: int = 2) -> Plan:
    jobs = tuple(
        PromptJob(i, ImageGenerationRequest(prompt=f"prompt {i}", n=n), f"{PREFIX}/{i:03d}") for i in range(prompts)
    )
    return Plan(jobs=jobs, bucket="art", batch=True, min_images=1, task=TASK)


def _images(plan: Plan) -> list[CopiedImage]:
    return [
        CopiedImage(
            index=index,
            bucket=plan.bucket,
            key=job.image_key(index),
            content_type="image/png",
            size_bytes=100 * (job.prompt_index + 1) + index,
            sha256=f"{job.prompt_index}{index}".ljust(64, "0"),
            width=1024,
            height=1536,
            prompt_index=job.prompt_index,
            etag="not-for-assets",
        )
        for job in plan.jobs
        for index in range(job.request.n)
    ]


def test_the_task_asset_is_stable_across_runs_and_map_indexes():
    plan = _plan()
    assert task_asset_uri(plan) == "s3://art/imagegen/daily/banner"
    other = Plan(jobs=plan.jobs, bucket="art", batch=True, min_images=1, task=TaskIdentity("daily", "run_2", "banner"))
    assert task_asset_uri(other) == task_asset_uri(plan)


def test_the_task_event_extra_says_what_this_task_instance_stored():
    plan = _plan()
    images = _images(plan)
    extra = task_event_extra(plan, images)
    assert extra == {
        "bucket": "art",
        "prefix": PREFIX,
        "dag_id": "daily",
        "run_id": "manual__1",
        "task_id": "banner",
        "map_index": 2,
        "prompt_count": 2,
        "image_count": 4,
        "bytes": sum(image.size_bytes for image in images),
        "manifests": [f"{PREFIX}/000/manifest.json", f"{PREFIX}/001/manifest.json"],
        "images": [
            {"key": i.key, "sha256": i.sha256, "size_bytes": i.size_bytes, "prompt_index": i.prompt_index}
            for i in images
        ],
        "truncated": False,
    }
    assert json.loads(json.dumps(extra)) == extra  # JSON-safe
    assert "not-for-assets" not in json.dumps(extra)


def test_the_task_event_extra_is_bounded():
    plan = _plan(prompts=3, n=2)
    extra = task_event_extra(plan, _images(plan), limit=2)
    assert (len(extra["images"]), len(extra["manifests"]), extra["truncated"]) == (2, 2, True)
    assert (extra["image_count"], extra["prompt_count"]) == (6, 3)  # the counts stay whole
    assert MAX_LISTED_IMAGES == 100


def test_image_events_name_each_object_with_its_prompts_digest():
    plan = _plan()
    images = _images(plan)
    events = image_events(plan, images)
    assert [uri for uri, _ in events] == [image.s3_uri for image in images]
    _, extra = events[3]
    assert extra == {
        "sha256": images[3].sha256,
        "size_bytes": images[3].size_bytes,
        "width": 1024,
        "height": 1536,
        "content_type": "image/png",
        "prompt_sha256": prompt_digest("prompt 1"),
    }


def test_emit_through_an_alias_makes_one_task_event_by_default():
    from airflow.sdk import Asset, AssetAlias

    plan = _plan()
    images = _images(plan)
    alias = AssetAlias("generated")
    events = RecordingOutletEvents()
    emit([alias], events, plan, images, mode="task")
    ((outlet, asset, extra),) = events.added
    assert outlet is alias
    assert asset == Asset(task_asset_uri(plan))
    assert extra == alias_event_extra(task_event_extra(plan, images))


def test_emit_through_an_alias_makes_one_event_per_image_in_image_mode():
    from airflow.sdk import Asset, AssetAlias

    plan = _plan()
    images = _images(plan)
    events = RecordingOutletEvents()
    emit([AssetAlias("generated")], events, plan, images, mode="image")
    assert [(asset, extra) for _, asset, extra in events.added] == [
        (Asset(uri), extra) for uri, extra in image_events(plan, images)
    ]


def test_emit_sets_a_static_assets_extra_and_ignores_other_outlets():
    from airflow.sdk import Asset

    plan = _plan()
    images = _images(plan)
    static = Asset("s3://art/banners")
    events = RecordingOutletEvents()
    emit([static, "not an asset"], events, plan, images, mode="image")  # image mode is for aliases only
    assert events.added == []
    assert events.extras == [(static, task_event_extra(plan, images))]

    emit(None, events, plan, images, mode="task")
    assert events.added == []


@pytest.mark.parametrize("mode", ASSET_EVENT_MODES)
def test_check_asset_events_accepts_the_modes(mode):
    assert check_asset_events(mode) == mode


@pytest.mark.parametrize("mode", ["images", "", None, "TASK"])
def test_check_asset_events_refuses_anything_else(mode):
    with pytest.raises(ValueError, match="asset_events must be one of"):
        check_asset_events(mode)
