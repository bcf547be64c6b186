"""The record store on moto in-process (no server): the retry-safety protocol, typed records, errors."""

from __future__ import annotations

import hashlib

import boto3
import pytest
from moto import mock_aws

from airflow_provider_imagegen.exceptions import ImageGenStorageError
from airflow_provider_imagegen.models import CopiedImage, ImageGenerationRequest
from airflow_provider_imagegen.plan import PromptJob
from airflow_provider_imagegen.records import Generation, Manifest, RecordStore
from tests.support import RecordingLog

BUCKET = "records"
JOB = PromptJob(0, ImageGenerationRequest(prompt="a lighthouse", n=2), "p/run/task")
OTHER = PromptJob(0, ImageGenerationRequest(prompt="a different lighthouse", n=2), "p/run/task")


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _store(s3, log=None) -> RecordStore:
    return RecordStore(s3, BUCKET, upload_args={"StorageClass": "STANDARD", "Metadata": {}}, log=log or RecordingLog())


def _stored_images(s3, job: PromptJob, count: int = 2) -> list[CopiedImage]:
    images = []
    for index in range(count):
        body = f"image {index}".encode()
        key = job.image_key(index)
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        images.append(
            CopiedImage(index, BUCKET, key, "image/png", len(body), hashlib.sha256(body).hexdigest(), 1024, 1024)
        )
    return images


def _manifest(job: PromptJob, images: list[CopiedImage]) -> Manifest:
    return Manifest.build(
        request=job.request,
        images=images,
        endpoint="https://api.test/v3/x",
        task={"dag_id": "d"},
        generation=Generation(),
    )


def _keys(s3) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_a_committed_manifest_is_reused_and_its_pending_record_dropped(s3):
    store = _store(s3)
    images = _stored_images(s3, JOB)
    store.record_pending(JOB, ["https://cdn.test/0.png", "https://cdn.test/1.png"], Generation("t", 1.5, "req-1"))
    store.commit(JOB, _manifest(JOB, images))
    store.drop_committed()
    assert _keys(s3) == [f"{JOB.prefix}/00.png", f"{JOB.prefix}/01.png", f"{JOB.prefix}/manifest.json"]

    again = _store(s3)
    again.list_records(JOB.prefix, nested=False)
    assert again.reuse(JOB) == images
    assert again.read_manifest(JOB.prefix).images == tuple(images)


def test_a_manifest_for_another_request_is_removed_not_reused(s3):
    images = _stored_images(s3, JOB)
    _store(s3).commit(JOB, _manifest(JOB, images))
    log = RecordingLog()
    store = _store(s3, log)
    store.list_records(OTHER.prefix, nested=False)
    assert store.reuse(OTHER) is None
    assert f"{JOB.prefix}/manifest.json" not in _keys(s3)
    assert any("does not match this request" in line for line in log.lines)


def test_a_changed_object_voids_the_manifest(s3):
    images = _stored_images(s3, JOB)
    _store(s3).commit(JOB, _manifest(JOB, images))
    s3.put_object(Bucket=BUCKET, Key=images[1].key, Body=b"something else entirely")
    assert _store(s3).reuse(JOB) is None


def test_pending_urls_survive_for_the_same_request_only(s3):
    store = _store(s3)
    store.record_pending(JOB, ["https://cdn.test/0.png"], Generation("2026-01-01T00:00:00Z", 2.0, "req-9"))
    again = _store(s3)
    again.list_records(JOB.prefix, nested=False)
    record = again.pending(JOB)
    assert record.image_urls == ("https://cdn.test/0.png",)
    assert record.generation == Generation("2026-01-01T00:00:00Z", 2.0, "req-9")
    assert again.pending(OTHER) is None


def test_a_survey_that_finds_nothing_saves_every_read(s3):
    store = _store(s3)
    store.list_records(JOB.prefix, nested=False)
    calls = []
    s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    assert store.reuse(JOB) is None
    assert store.pending(JOB) is None
    assert calls == []


def test_a_batch_survey_finds_every_prompts_records_in_one_list(s3):
    jobs = [PromptJob(i, JOB.request, f"batch/{i:03d}") for i in range(3)]
    _store(s3).record_pending(jobs[1], ["https://cdn.test/x.png"], Generation())
    store = _store(s3)
    calls = []
    s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    store.list_records("batch", nested=True)
    assert [store.pending(job) is not None for job in jobs] == [False, True, False]
    assert calls == ["ListObjectsV2", "GetObject"]


@pytest.mark.parametrize(
    ("name", "body"),
    [("manifest.json", b"{not json"), ("manifest.json", b"[1, 2]"), ("_pending.json", b'{"image_urls": []}')],
)
def test_an_unreadable_record_is_an_error_not_missing(s3, name, body):
    s3.put_object(Bucket=BUCKET, Key=f"{JOB.prefix}/{name}", Body=body)
    store = _store(s3)
    with pytest.raises(ImageGenStorageError, match="not a record this provider can read") as caught:
        store.reuse(JOB) if name == "manifest.json" else store.pending(JOB)
    assert caught.value.permanent


def test_discard_deletes_and_only_warns_on_failure(s3):
    images = _stored_images(s3, JOB)
    log = RecordingLog()
    store = _store(s3, log)
    store.discard([*images, CopiedImage(9, "no-such-bucket", "k", "image/png", 1, "0" * 64, 1, 1)])
    assert _keys(s3) == []
    assert any("Could not delete s3://no-such-bucket/k" in line for line in log.lines)


def test_records_carry_the_upload_arguments_that_apply_to_them(s3):
    _store(s3).record_pending(JOB, ["https://cdn.test/0.png"], Generation())
    head = s3.head_object(Bucket=BUCKET, Key=f"{JOB.prefix}/_pending.json")
    assert head["ContentType"] == "application/json"
    assert head.get("StorageClass", "STANDARD") == "STANDARD"


def test_a_missing_bucket_is_permanent_before_anything_else(s3):
    store = RecordStore(s3, "no-such-bucket", upload_args={}, log=RecordingLog())
    with pytest.raises(ImageGenStorageError, match="does not exist") as caught:
        store.list_records("p", nested=False)
    assert caught.value.permanent


def test_manifest_json_round_trip_keeps_the_documented_fields():
    images = [CopiedImage(0, BUCKET, "p/00.png", "image/png", 10, "a" * 64, 1024, 1024)]
    manifest = _manifest(JOB, images)
    data = manifest.to_json()
    assert {"schema_version", "status", "prompt", "prompt_sha256", "request", "request_fingerprint"} <= set(data)
    assert data["received_images"] == 1
    assert data["requested_images"] == 2
    assert Manifest.from_json(data) == manifest


def test_the_pending_record_survives_a_bad_image_upload_argument(s3):
    """Only encryption goes with the small record: a mistyped storage class or tag cannot lose it."""
    store = RecordStore(
        s3,
        BUCKET,
        upload_args={"StorageClass": "NOT_A_CLASS", "Tagging": "bad tag=x", "ServerSideEncryption": "AES256"},
        log=RecordingLog(),
    )
    store.record_pending(JOB, ["https://cdn.test/0.png"], Generation())
    head = s3.head_object(Bucket=BUCKET, Key=f"{JOB.prefix}/_pending.json")
    assert head["ServerSideEncryption"] == "AES256"
    assert "StorageClass" not in head
    assert s3.get_object_tagging(Bucket=BUCKET, Key=f"{JOB.prefix}/_pending.json")["TagSet"] == []


def test_a_failed_download_is_remembered_with_the_urls(s3):
    store = _store(s3)
    store.record_pending(JOB, ["https://cdn.test/0.png"], Generation(), generations=2, download_failed=True)
    record = _store(s3).pending(JOB)
    assert (record.generations, record.download_failed) == (2, True)


def test_a_pending_record_keeps_the_try_that_paid_for_it():
    from airflow_provider_imagegen.records import Generation, PendingRecord

    record = PendingRecord(
        image_urls=("https://img/1.png",), request_fingerprint="f", generation=Generation(), try_number=3
    )

    assert PendingRecord.from_json(record.to_json()).try_number == 3
    earlier_build = {key: value for key, value in record.to_json().items() if key != "try_number"}
    assert PendingRecord.from_json(earlier_build).try_number is None
    assert PendingRecord.from_json({**record.to_json(), "try_number": "3"}).try_number is None
