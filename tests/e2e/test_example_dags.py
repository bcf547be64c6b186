"""The example DAGs, run for real with ``dag.test()`` against the emulator and a moto S3 server."""

from __future__ import annotations

import csv
import io

import pytest

from airflow_provider_imagegen.plan import default_prefix
from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_2_PLUS
from tests.support import list_keys, read_json

from .support import (
    DAGS_FOLDER,
    LOGICAL_DATE,
    PNG_MAGIC,
    load_dag,
    read_object,
    task_states,
    verify_images,
    xcom_values,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("imagegen_conn", "aws_conn")]

DAILY = "imagegen_daily_content"
MAPPED = "imagegen_mapped_prompts"
CONSUMER = "imagegen_asset_consumer"
RUN_ID = f"manual__{LOGICAL_DATE.isoformat()}"


def daily_prefix() -> str:
    """Where the daily DAG's test run lands its images (the operator's default, S3-safe)."""
    return default_prefix(DAILY, RUN_ID, "generate_images", -1)


def check_daily_outputs(s3_server, emulator, bucket: str, images: list[dict], n: int) -> None:
    """Images verified byte for byte, manifest, thumbnails and gallery all present and consistent."""
    prefix = daily_prefix()
    assert ":" not in prefix
    assert "+" not in prefix
    assert len(images) == n
    assert [image["key"] for image in images] == [f"{prefix}/{i:02d}.png" for i in range(n)]
    manifests = verify_images(s3_server, emulator, images)
    assert list(manifests) == [prefix]
    prompt = manifests[prefix]["prompt"]
    assert prompt.startswith("Banner for Saturday 14 March 2026: ")  # {{ ds }} and params rendered
    assert "api_key" not in read_object(s3_server, bucket, f"{prefix}/manifest.json").decode()

    thumbnails = [f"{prefix}/thumbnails/{i:02d}.png" for i in range(n)]
    expected = {image["key"] for image in images} | set(thumbnails) | {f"{prefix}/manifest.json"}
    assert set(list_keys(s3_server.client(), bucket, prefix)) == expected | {f"{prefix}/gallery.html"}
    for key in thumbnails:
        check_thumbnail(read_object(s3_server, bucket, key))

    gallery = read_object(s3_server, bucket, f"{prefix}/gallery.html").decode()
    assert prompt.split(":")[0] in gallery
    for i in range(n):
        assert f'<a href="{i:02d}.png"><img src="thumbnails/{i:02d}.png"' in gallery


def check_thumbnail(data: bytes) -> None:
    """A PNG no bigger than the DAG's thumbnail box."""
    from PIL import Image

    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as picture:
        assert max(picture.size) <= 320


def test_daily_content_end_to_end(run_dag, emulator, s3_server, s3_bucket):
    dag_run = run_dag(DAILY, {"bucket": s3_bucket, "n": 3})

    assert dag_run.state == "success", task_states(dag_run)
    assert dag_run.run_id == RUN_ID
    images = xcom_values(dag_run, "generate_images")[-1]
    check_daily_outputs(s3_server, emulator, s3_bucket, images, n=3)
    assert len(emulator.state.generation_calls()) == 1
    labels = {ti.rendered_map_index for ti in dag_run.get_task_instances() if ti.task_id == "make_thumbnail"}
    assert labels == {image["key"] for image in images}
    gallery_uri = xcom_values(dag_run, "publish_gallery")[-1]
    assert gallery_uri == f"s3://{s3_bucket}/{daily_prefix()}/gallery.html"


def test_rerun_of_same_daily_run_makes_no_generation_call(run_dag, emulator, s3_server, s3_bucket):
    first = run_dag(DAILY, {"bucket": s3_bucket, "n": 2})
    assert first.state == "success", task_states(first)
    first_images = xcom_values(first, "generate_images")[-1]
    assert len(emulator.state.generation_calls()) == 1
    emulator.state.reset()

    again = run_dag(DAILY, {"bucket": s3_bucket, "n": 2})  # same logical date and run_after: same run id

    assert again.state == "success", task_states(again)
    assert again.run_id == first.run_id
    assert emulator.state.generation_calls() == []
    assert emulator.state.download_calls() == []
    assert xcom_values(again, "generate_images")[-1] == first_images
    check_daily_outputs(s3_server, emulator, s3_bucket, first_images, n=2)


def test_daily_content_deferrable(run_dag, emulator, s3_server, s3_bucket, monkeypatch):
    from airflow_provider_imagegen.triggers.imagegen import ImageGenTrigger

    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    dag = load_dag(DAILY)  # the DAG file reads [operators] default_deferrable when parsed
    assert dag.get_task("generate_images").deferrable is True
    trigger_runs = []
    original_run = ImageGenTrigger.run

    def counting_run(self):
        trigger_runs.append(self.serialize())
        return original_run(self)

    monkeypatch.setattr(ImageGenTrigger, "run", counting_run)

    dag_run = run_dag(DAILY, {"bucket": s3_bucket, "n": 2}, dag=dag)

    assert dag_run.state == "success", task_states(dag_run)
    assert len(trigger_runs) == 1, "the generation request should have run in the trigger"
    assert "emulator-key" not in repr(trigger_runs[0])
    check_daily_outputs(s3_server, emulator, s3_bucket, xcom_values(dag_run, "generate_images")[-1], n=2)
    assert len(emulator.state.generation_calls()) == 1


def test_mapped_prompts_end_to_end(run_dag, emulator, s3_server, s3_bucket):
    from airflow_provider_imagegen.plan import safe_segment

    with (DAGS_FOLDER / "data" / "catalogue.csv").open(encoding="utf-8") as handle:
        skus = [row["sku"] for row in csv.DictReader(handle)]
    assert 5 <= len(skus) <= 8

    dag_run = run_dag(MAPPED, {"bucket": s3_bucket, "n": 2})

    assert dag_run.state == "success", task_states(dag_run)
    results = xcom_values(dag_run, "generate_product_images")
    assert sorted(results) == list(range(len(skus)))
    task_prefix = f"imagegen/{MAPPED}/{safe_segment(RUN_ID)}/generate_product_images"
    for map_index, images in results.items():
        assert [image["key"] for image in images] == [f"{task_prefix}/{map_index}/{i:02d}.png" for i in range(2)]
    manifests = verify_images(s3_server, emulator, [image for images in results.values() for image in images])
    for map_index, sku in enumerate(skus):
        assert f"({sku})" in manifests[f"{task_prefix}/{map_index}"]["prompt"]
    assert len(emulator.state.generation_calls()) == len(skus)
    labels = [ti.rendered_map_index for ti in dag_run.get_task_instances() if ti.task_id == "generate_product_images"]
    assert len(labels) == len(skus)
    assert all(label.startswith("Product photo of a") for label in labels), labels

    summary = read_json(s3_server.client(), s3_bucket, f"{task_prefix}/summary.json")
    assert summary["image_count"] == 2 * len(skus)
    assert [product["map_index"] for product in summary["products"]] == list(range(len(skus)))
    assert xcom_values(dag_run, "collect_results")[-1]["image_count"] == 2 * len(skus)


def test_asset_consumer_checks_images_of_a_producer_run(run_dag, emulator, s3_server, s3_bucket):
    from airflow.models.asset import AssetDagRunQueue, AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    producer = run_dag(DAILY, {"bucket": s3_bucket, "n": 2}, when=LOGICAL_DATE.replace(day=15))
    assert producer.state == "success", task_states(producer)
    uris = sorted(image["s3_uri"] for image in xcom_values(producer, "generate_images")[-1])
    with create_session() as session:
        events = session.scalars(select(AssetEvent).where(AssetEvent.source_run_id == producer.run_id)).all()
        # one event per task instance, on the task's stable asset; the images are in its extra
        (event,) = events
        assert event.uri == f"s3://{s3_bucket}/imagegen/{DAILY}/generate_images"
        if AIRFLOW_V_3_2_PLUS:
            assert sorted(f"s3://{s3_bucket}/{image['key']}" for image in event.extra["images"]) == uris
            assert all(len(image["sha256"]) == 64 for image in event.extra["images"])
        else:  # 3.1 drops alias events whose extra holds lists: the consumer reads the manifests
            assert event.extra["truncated"] is True
            assert event.extra["image_count"] == len(uris)
        queued = session.scalars(select(AssetDagRunQueue.target_dag_id)).all()
        assert CONSUMER in queued, "the scheduler would not start the consumer"

    consumer = run_dag(CONSUMER, {"recent": 1}, when=LOGICAL_DATE.replace(day=15))

    assert consumer.state == "success", task_states(consumer)
    assert sorted(xcom_values(consumer, "validate_new_images")[-1]["checked"]) == uris
