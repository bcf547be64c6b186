"""The happy path against the emulator and moto: objects, metadata, manifest, XCom, key layout."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from airflow_provider_imagegen.models import prompt_digest
from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_2_PLUS
from tests.support import (
    PREFIX,
    RUN_ID,
    list_keys,
    make_context,
    multipart_uploads,
    object_sha256,
    read_json,
    served_sha256s,
)

XCOM_KEYS = {
    "s3_uri",
    "bucket",
    "key",
    "index",
    "prompt_index",
    "content_type",
    "size_bytes",
    "sha256",
    "width",
    "height",
}


def test_three_pngs_land_verified_with_manifest_and_small_xcom(make_op, context, emulator, s3, s3_bucket):
    prompt = "a lighthouse at dawn, watercolour"
    op = make_op(prompt=prompt, n=3, size="1024x1536", quality="low", real_s3_client=True)
    xcom = op.execute(context)

    keys = list_keys(s3, s3_bucket)
    assert keys == [f"{PREFIX}/00.png", f"{PREFIX}/01.png", f"{PREFIX}/02.png", f"{PREFIX}/manifest.json"]
    assert len(emulator.state.generation_calls()) == 1

    # every object holds exactly the bytes the emulator served
    served = served_sha256s(emulator)
    assert len(served) == 3
    stored = {object_sha256(s3, s3_bucket, key) for key in keys if key.endswith(".png")}
    assert stored == served

    # XCom: one small JSON-safe dict per image, exactly the documented keys, in index order
    assert isinstance(xcom, list)
    assert len(xcom) == 3
    assert len(json.dumps(xcom)) < 3 * 600
    for index, item in enumerate(xcom):
        assert set(item) == XCOM_KEYS
        assert item["index"] == index
        assert item["prompt_index"] == 0
        assert item["key"] == f"{PREFIX}/{index:02d}.png"
        assert item["s3_uri"] == f"s3://{s3_bucket}/{PREFIX}/{index:02d}.png"
        assert item["bucket"] == s3_bucket
        assert item["content_type"] == "image/png"
        assert (item["width"], item["height"]) == (1024, 1536)
        assert item["sha256"] == object_sha256(s3, s3_bucket, item["key"])
        head = s3.head_object(Bucket=s3_bucket, Key=item["key"])
        assert item["size_bytes"] == head["ContentLength"]
        assert all(isinstance(v, (str, int)) for v in item.values())

    # object Content-Type and metadata
    head = s3.head_object(Bucket=s3_bucket, Key=f"{PREFIX}/01.png")
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {
        "prompt-sha256": prompt_digest(prompt),
        "size": "1024x1536",
        "quality": "low",
        "dag-id": "imagegen_test",
        "run-id": RUN_ID,
        "task-id": "generate",
        "image-index": "1",
    }

    # the manifest: request, rendered prompt, per image record, timestamps, endpoint
    manifest = read_json(s3, s3_bucket, f"{PREFIX}/manifest.json")
    assert manifest["status"] == "complete"
    assert manifest["prompt"] == prompt
    assert manifest["prompt_sha256"] == prompt_digest(prompt)
    assert manifest["request"] == {
        "n": 3,
        "size": "1024x1536",
        "quality": "low",
        "background": "auto",
        "moderation": "auto",
        "output_format": "png",
    }
    assert manifest["requested_images"] == 3
    assert manifest["received_images"] == 3
    assert manifest["images"] == xcom
    assert manifest["endpoint"] == emulator.base_url.rstrip("/") + "/v3/gpt-image-2-text-to-image"
    assert manifest["task"] == {
        "dag_id": "imagegen_test",
        "run_id": RUN_ID,
        "task_id": "generate",
        "map_index": -1,
        "try_number": 1,
        "prompt_index": 0,
    }
    generated = datetime.fromisoformat(manifest["generated_at"])
    completed = datetime.fromisoformat(manifest["completed_at"])
    assert generated <= completed
    assert generated.tzinfo is not None
    raw = json.dumps(manifest)
    assert emulator.api_key not in raw
    for url in emulator.state.sha256_by_url():
        assert url not in raw
    assert "/images/" not in raw
    assert s3.head_object(Bucket=s3_bucket, Key=f"{PREFIX}/manifest.json")["ContentType"] == "application/json"


def test_jpeg_with_compression_is_stored_as_jpg(make_op, context, emulator, s3, s3_bucket):
    op = make_op(n=2, output_format="jpeg", output_compression=60, size="1536x1024")
    xcom = op.execute(context)
    assert [item["key"] for item in xcom] == [f"{PREFIX}/00.jpg", f"{PREFIX}/01.jpg"]
    for item in xcom:
        assert item["content_type"] == "image/jpeg"
        assert s3.head_object(Bucket=s3_bucket, Key=item["key"])["ContentType"] == "image/jpeg"
        assert (item["width"], item["height"]) == (1536, 1024)
    assert {item["sha256"] for item in xcom} == served_sha256s(emulator)
    manifest = read_json(s3, s3_bucket, f"{PREFIX}/manifest.json")
    assert manifest["request"]["output_compression"] == 60
    assert manifest["request"]["output_format"] == "jpeg"


def test_size_auto_is_accepted_with_any_pixel_size(make_op, context, emulator, s3, s3_bucket):
    xcom = make_op(size="auto").execute(context)
    assert len(xcom) == 1
    assert xcom[0]["width"] > 0
    assert xcom[0]["height"] > 0


def test_big_image_goes_multipart_and_matches(make_op, context, emulator, s3, s3_bucket):
    emulator.configure(noise=True)
    xcom = make_op(size="3840x2160", quality="high", real_s3_client=True).execute(context)
    (item,) = xcom
    assert item["size_bytes"] >= 20 * 1024 * 1024
    assert (item["width"], item["height"]) == (3840, 2160)
    assert item["sha256"] == served_sha256s(emulator).pop()
    assert object_sha256(s3, s3_bucket, item["key"]) == item["sha256"]
    head = s3.head_object(Bucket=s3_bucket, Key=item["key"])
    assert "-" in head["ETag"]  # "<md5 of md5s>-<parts>": it went up in 5 MiB parts
    assert multipart_uploads(s3, s3_bucket) == []


# -- key layout through the operator --------------------------------------------------------------

SAFE_KEY = re.compile(r"^[A-Za-z0-9._=/-]+$")


@pytest.mark.parametrize(
    "run_id",
    [
        "manual__2026-01-01T00:00:00+00:00",
        "scheduled__2026-01-01T00:00:00+00:00",
        "my run: ünïcode / 日本 + spaces",
    ],
)
def test_default_keys_are_s3_safe_for_odd_run_ids(make_op, emulator, s3, s3_bucket, run_id):
    xcom = make_op().execute(make_context(run_id=run_id))
    keys = list_keys(s3, s3_bucket)
    assert len(keys) == 2
    for key in keys:
        assert SAFE_KEY.match(key), key
        assert "//" not in key
    assert xcom[0]["key"].startswith("imagegen/imagegen_test/")
    assert xcom[0]["key"].endswith("/generate/00.png")
    # the metadata keeps the run id readable (printable ASCII, non-ASCII percent-encoded)
    run_meta = s3.head_object(Bucket=s3_bucket, Key=xcom[0]["key"])["Metadata"]["run-id"]
    assert run_meta.isascii()


def test_mapped_task_gets_its_own_prefix(make_op, emulator, s3, s3_bucket):
    xcom = make_op().execute(make_context(map_index=2))
    assert xcom[0]["key"] == f"{PREFIX}/2/00.png"
    assert f"{PREFIX}/2/manifest.json" in list_keys(s3, s3_bucket)


@pytest.mark.parametrize("given", ["content/launch/", "/content/launch", "content/launch"])
def test_user_prefix_is_used_with_slashes_trimmed(make_op, context, emulator, s3, s3_bucket, given):
    xcom = make_op(s3_key_prefix=given, n=2).execute(context)
    assert [item["key"] for item in xcom] == ["content/launch/00.png", "content/launch/01.png"]
    expected = ["content/launch/00.png", "content/launch/01.png", "content/launch/manifest.json"]
    assert list_keys(s3, s3_bucket) == expected


def test_user_prefix_of_mapped_task_adds_map_index(make_op, emulator, s3, s3_bucket):
    xcom = make_op(s3_key_prefix="content/launch/").execute(make_context(map_index=0))
    assert xcom[0]["key"] == "content/launch/0/00.png"


def test_upload_args_reach_the_objects(make_op, context, emulator, s3, s3_bucket):
    op = make_op(
        real_s3_client=True,
        encrypt=True,
        s3_tags={"team": "content", "pipeline": "daily"},
        s3_extra_args={"StorageClass": "STANDARD_IA", "Metadata": {"campaign": "spring"}},
    )
    xcom = op.execute(context)
    head = s3.head_object(Bucket=s3_bucket, Key=xcom[0]["key"])
    assert head["ServerSideEncryption"] == "AES256"
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["Metadata"]["campaign"] == "spring"
    assert head["Metadata"]["image-index"] == "0"
    tags = s3.get_object_tagging(Bucket=s3_bucket, Key=xcom[0]["key"])["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"team": "content", "pipeline": "daily"}
    manifest_head = s3.head_object(Bucket=s3_bucket, Key=f"{PREFIX}/manifest.json")
    assert manifest_head["ServerSideEncryption"] == "AES256"


def _real_outlet_events(context):
    """Airflow's own outlet event accessors instead of the recording stand-in."""
    from airflow.sdk.execution_time.context import OutletEventAccessors

    context["outlet_events"] = OutletEventAccessors()
    return context["outlet_events"]


def test_asset_alias_gets_one_task_event_by_default(make_op, context, emulator, s3_bucket):
    from airflow.sdk import Asset, AssetAlias

    alias = AssetAlias("imagegen_images")
    events = _real_outlet_events(context)
    xcom = make_op(n=3, outlets=[alias]).execute(context)
    [event] = events[alias].asset_alias_events
    assert event.dest_asset_key.uri == f"s3://{s3_bucket}/imagegen/imagegen_test/generate"
    extra = event.extra
    if AIRFLOW_V_3_2_PLUS:
        assert extra["manifests"] == [f"{PREFIX}/manifest.json"]
        assert [(i["key"], i["sha256"], i["size_bytes"]) for i in extra["images"]] == [
            (item["key"], item["sha256"], item["size_bytes"]) for item in xcom
        ]
        assert (extra["image_count"], extra["prompt_count"], extra["truncated"]) == (3, 1, False)
    else:  # Airflow 3.1 drops alias events whose extra holds lists: only the flat values go
        assert "images" not in extra
        assert "manifests" not in extra
        assert (extra["image_count"], extra["prompt_count"], extra["truncated"]) == (3, 1, True)
    assert extra["bytes"] == sum(item["size_bytes"] for item in xcom)
    assert (extra["bucket"], extra["prefix"], extra["run_id"]) == (s3_bucket, PREFIX, RUN_ID)
    assert len(json.dumps(extra)) < 4096
    # a second run of the task resolves to the same asset
    context2 = make_context(run_id="manual__2026-01-02T00:00:00+00:00")
    events2 = _real_outlet_events(context2)
    make_op(n=1, outlets=[alias]).execute(context2)
    [event2] = events2[alias].asset_alias_events
    assert event2.dest_asset_key == event.dest_asset_key
    assert Asset(event.dest_asset_key.uri).uri == event.dest_asset_key.uri


def test_static_asset_outlet_gets_the_extra(make_op, context, emulator, s3_bucket):
    from airflow.sdk import Asset

    banners = Asset(f"s3://{s3_bucket}/banners/")
    events = _real_outlet_events(context)
    xcom = make_op(n=2, outlets=[banners]).execute(context)
    extra = events[banners].extra
    assert [i["key"] for i in extra["images"]] == [item["key"] for item in xcom]
    assert extra["image_count"] == 2
    assert extra["manifests"] == [f"{PREFIX}/manifest.json"]
    assert events[banners].asset_alias_events == []


def test_task_event_extra_is_bounded(make_op, context, emulator, s3_bucket):
    from airflow.sdk import AssetAlias

    from airflow_provider_imagegen import assets

    alias = AssetAlias("imagegen_images")
    events = _real_outlet_events(context)
    xcom = make_op(prompts=[f"prompt {i}" for i in range(3)], n=2, outlets=[alias]).execute(context)
    extra = events[alias].asset_alias_events[0].extra
    if AIRFLOW_V_3_2_PLUS:
        plan_images = extra["images"]
        assert (extra["image_count"], len(plan_images), extra["truncated"]) == (6, 6, False)
    else:  # Airflow 3.1: no lists in an alias event's extra
        plan_images = [{key: item[key] for key in ("key", "sha256", "size_bytes", "prompt_index")} for item in xcom]
        assert (extra["image_count"], "images" in extra, extra["truncated"]) == (6, False, True)
    # the same builder with a small cap: the lists stop, the counts do not
    op = make_op(prompts=[f"prompt {i}" for i in range(3)], n=2)
    plan = op.build_plan(context)
    from airflow_provider_imagegen.models import CopiedImage

    images = [
        CopiedImage.from_dict(
            {**image, "bucket": s3_bucket, "content_type": "image/png", "index": 0, "width": 1, "height": 1}
        )
        for image in plan_images
    ]
    small = assets.task_event_extra(plan, images, limit=2)
    assert (small["image_count"], len(small["images"]), len(small["manifests"]), small["truncated"]) == (6, 2, 2, True)
    assert small["prefix"] == plan.list_prefix  # where the rest of the manifests are


def test_asset_alias_per_image_when_asked(make_op, context, emulator, s3_bucket):
    from airflow.sdk import Asset, AssetAlias

    alias = AssetAlias("imagegen_images")
    xcom = make_op(n=3, outlets=[alias], asset_events="image").execute(context)
    added = context["outlet_events"].added
    assert len(added) == 3
    for (outlet, asset, extra), item in zip(added, xcom, strict=True):
        assert outlet == alias
        assert asset == Asset(item["s3_uri"])
        assert extra["sha256"] == item["sha256"]
        assert extra["size_bytes"] == item["size_bytes"]
        assert extra["prompt_sha256"] == prompt_digest("a lighthouse at dawn, watercolour")


def test_asset_events_mode_is_validated(make_op):
    with pytest.raises(ValueError, match="asset_events must be one of"):
        make_op(asset_events="run")


def test_no_asset_events_without_alias_outlets(make_op, context, emulator, s3_bucket):
    make_op().execute(context)
    assert context["outlet_events"].added == []


def test_a_task_without_outlets_needs_no_outlet_events(make_op, context, emulator):
    """Asset bookkeeping is only asked for when there are outlets (a bare context works, as in bench/)."""
    del context["outlet_events"]
    assert len(make_op(n=1).execute(context)) == 1
