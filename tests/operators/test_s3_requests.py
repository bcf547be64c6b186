"""What the operator asks of S3, request by request, and how a prompt's copy overlaps the next call.

The S3 requests are counted on the operator's real boto3 client (botocore's ``before-call``
events) against the moto server; the overlaps are read from the emulator's call records.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from typing import Any

import pytest

from airflow_provider_imagegen.exceptions import ImageGenStorageError
from tests.support import PREFIX, list_keys, make_context


class S3Calls:
    """Every S3 operation the client sends, with its parameters."""

    def __init__(self, client: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        client.meta.events.register("before-call.s3", self._record)

    def _record(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.calls.append((model.name, params))

    def counts(self) -> Counter[str]:
        return Counter(name for name, _ in self.calls)

    def puts(self, suffix: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == "PutObject" and params["url_path"].endswith(suffix)]


def _operator_with_counted_client(make_op: Any, **kwargs: Any) -> tuple[Any, S3Calls]:
    op = make_op(real_s3_client=True, **kwargs)
    _ = op.s3_client  # builds the client (from the AWS connection, through S3Hook)
    return op, S3Calls(op.s3_client)


def test_one_prompt_costs_a_list_one_put_per_object_and_one_delete(make_op, emulator, s3, s3_bucket):
    op, s3_calls = _operator_with_counted_client(make_op, n=3)
    op.execute(make_context())
    # LIST open uploads and earlier records, PUT pending, 3 x PUT image, PUT manifest, DELETE pending:
    # no HEAD, no GET (moto answers each PUT with the checksum it stored)
    assert s3_calls.counts() == Counter(
        {"ListMultipartUploads": 1, "ListObjectsV2": 1, "PutObject": 5, "DeleteObjects": 1}
    )
    assert list_keys(s3, s3_bucket) == [f"{PREFIX}/{i:02d}.png" for i in range(3)] + [f"{PREFIX}/manifest.json"]


def test_a_batch_lists_and_cleans_up_once_for_all_its_prompts(make_op, emulator, s3, s3_bucket):
    op, s3_calls = _operator_with_counted_client(make_op, prompts=[f"mug {i}" for i in range(6)], n=2)
    op.execute(make_context())
    assert s3_calls.counts() == Counter(
        {"ListMultipartUploads": 1, "ListObjectsV2": 1, "PutObject": 6 * (1 + 2 + 1), "DeleteObjects": 1}
    )
    assert not [key for key in list_keys(s3, s3_bucket) if key.endswith("_pending.json")]


def test_a_rerun_of_a_finished_batch_only_reads(make_op, emulator, s3, s3_bucket):
    prompts = [f"mug {i}" for i in range(4)]
    first = make_op(prompts=prompts).execute(make_context())
    op, s3_calls = _operator_with_counted_client(make_op, prompts=prompts)
    assert op.execute(make_context(try_number=2)) == first
    # one LIST for the batch, then each manifest read and its images checked: nothing written
    assert s3_calls.counts() == Counter(
        {"ListMultipartUploads": 1, "ListObjectsV2": 1, "GetObject": 4, "HeadObject": 4}
    )
    assert len(emulator.state.generation_calls()) == 4


def test_each_image_put_carries_the_sha256_computed_while_streaming(make_op, emulator, s3, s3_bucket):
    op, s3_calls = _operator_with_counted_client(make_op, n=2)
    xcom = op.execute(make_context())
    sent = {
        put["url_path"].rsplit("/", 1)[-1]: put["headers"]["x-amz-checksum-sha256"] for put in s3_calls.puts(".png")
    }
    for item in xcom:
        expected = base64.b64encode(bytes.fromhex(item["sha256"])).decode()
        assert sent[item["key"].rsplit("/", 1)[-1]] == expected
        stored = s3.head_object(Bucket=s3_bucket, Key=item["key"], ChecksumMode="ENABLED")["ChecksumSHA256"]
        assert stored == expected
        body = s3.get_object(Bucket=s3_bucket, Key=item["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == item["sha256"]


def test_a_store_that_keeps_another_checksum_fails_the_copy_and_keeps_nothing(make_op, emulator, s3, s3_bucket):
    op, _ = _operator_with_counted_client(make_op, n=2)

    def other_checksum(parsed: dict[str, Any], model: Any, **_: Any) -> None:
        assert "ChecksumSHA256" in parsed  # S3 (and moto) answer with the checksum they stored
        parsed["ChecksumSHA256"] = base64.b64encode(b"\0" * 32).decode()

    op.s3_client.meta.events.register("after-call.s3.PutObject", other_checksum)
    with pytest.raises(ImageGenStorageError, match=r"stored SHA-256 .*not the one sent; deleted"):
        op.execute(make_context())
    assert list_keys(s3, s3_bucket) == [f"{PREFIX}/_pending.json"]  # for the retry: nothing else


def test_a_multipart_image_is_checked_with_a_head(make_op, emulator, s3, s3_bucket):
    emulator.configure(noise=True)  # a 4K image of noise is well above the 5 MiB part size
    op, s3_calls = _operator_with_counted_client(make_op, n=1, size="3840x2160")
    xcom = op.execute(make_context())
    counts = s3_calls.counts()
    assert counts["CreateMultipartUpload"] == 1
    assert counts["HeadObject"] == 1
    assert xcom[0]["size_bytes"] > 5 * 1024 * 1024


def _overlaps(a: Any, b: Any) -> bool:
    return a.started_at < b.finished_at and b.started_at < a.finished_at


def test_a_prompts_copy_overlaps_the_next_prompts_api_call_within_both_bounds(make_op, emulator, s3, s3_bucket):
    emulator.configure(latency=0.3, download_latency=0.4)
    xcom = make_op(prompts=[f"mug {i}" for i in range(4)], n=1, max_concurrency=1).execute(make_context())
    assert [item["prompt_index"] for item in xcom] == [0, 1, 2, 3]
    state = emulator.state
    assert state.max_in_flight_generations == 1  # max_concurrency bounds the API calls ...
    assert state.max_in_flight_downloads == 1  # ... and, separately, the prompts being copied
    generations, downloads = state.generation_calls(), state.download_calls()
    assert len(generations) == len(downloads) == 4
    overlapping = [d for d in downloads if any(_overlaps(d, g) for g in generations)]
    assert len(overlapping) >= 2  # the copies of prompts 0-2 ran while the next prompt was generated


def test_a_rerun_removes_a_pending_record_a_killed_try_left_beside_its_manifest(make_op, emulator, s3, s3_bucket):
    first = make_op(n=2).execute(make_context())
    # a try killed after writing its manifest but before its cleanup leaves both records
    s3.put_object(Bucket=s3_bucket, Key=f"{PREFIX}/_pending.json", Body=b'{"image_urls": ["https://x.test/0.png"]}')
    assert make_op(n=2).execute(make_context(try_number=2)) == first
    assert len(emulator.state.generation_calls()) == 1
    assert f"{PREFIX}/_pending.json" not in list_keys(s3, s3_bucket)


def test_pending_records_are_deleted_1000_per_request(s3, s3_bucket):
    import logging

    from airflow_provider_imagegen.records import RecordStore

    prefixes = [f"batch/{i:04d}" for i in range(2500)]
    for prefix in (prefixes[0], prefixes[1500], prefixes[-1]):
        s3.put_object(Bucket=s3_bucket, Key=f"{prefix}/_pending.json", Body=b"{}")
    s3_calls = S3Calls(s3)
    try:
        store = RecordStore(s3, s3_bucket, upload_args={}, log=logging.getLogger(__name__))
        store.drop_pending(prefixes)  # most of them do not exist: S3 deletes are idempotent
    finally:
        s3.meta.events.unregister("before-call.s3", s3_calls._record)
    assert s3_calls.counts() == Counter({"DeleteObjects": 3})
    assert list_keys(s3, s3_bucket, "batch/") == []


def test_a_failed_cleanup_is_only_a_warning(make_op, emulator, s3, s3_bucket, task_logs):
    op, _ = _operator_with_counted_client(make_op, n=1)

    def refuse(params: dict[str, Any], **_: Any) -> None:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no s3:DeleteObject"}}, "DeleteObjects")

    op.s3_client.meta.events.register("before-call.s3.DeleteObjects", refuse)
    xcom = op.execute(make_context())  # the images and their manifest are committed: the task succeeds
    assert len(xcom) == 1
    assert f"{PREFIX}/_pending.json" in list_keys(s3, s3_bucket)  # harmless beside the manifest ...
    assert "Could not delete the pending record(s)" in task_logs()  # ... and reported


def _deny_listing(client: Any) -> None:
    def refuse(params: dict[str, Any], **_: Any) -> None:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no s3:ListBucket"}}, "ListObjectsV2")

    client.meta.events.register("before-call.s3.ListObjectsV2", refuse)


@pytest.mark.parametrize("prompts", [None, ["mug 0", "mug 1", "mug 2"]], ids=["one prompt", "batch"])
def test_without_list_permission_each_prompt_reads_its_records(make_op, emulator, s3, s3_bucket, prompts):
    kwargs: dict[str, Any] = {"prompts": prompts} if prompts else {}
    first_op, _ = _operator_with_counted_client(make_op, **kwargs)
    _deny_listing(first_op.s3_client)
    first = first_op.execute(make_context())
    calls = len(emulator.state.generation_calls())
    assert calls == len(prompts or [None])

    again, s3_calls = _operator_with_counted_client(make_op, **kwargs)
    _deny_listing(again.s3_client)
    assert again.execute(make_context(try_number=2)) == first
    assert len(emulator.state.generation_calls()) == calls  # nothing paid twice without LIST either
    assert s3_calls.counts()["GetObject"] == calls  # each prompt read its manifest directly
    assert not [key for key in list_keys(s3, s3_bucket) if key.endswith("_pending.json")]


def test_when_delete_objects_is_refused_each_key_is_deleted(make_op, emulator, s3, s3_bucket, task_logs):
    op, s3_calls = _operator_with_counted_client(make_op, n=1)

    def refuse(params: dict[str, Any], **_: Any) -> None:  # as OpenStack Swift's s3api without Content-MD5
        from botocore.exceptions import ClientError

        error = {"Code": "InvalidRequest", "Message": "Missing required header for this request: Content-MD5"}
        raise ClientError({"Error": error}, "DeleteObjects")

    op.s3_client.meta.events.register("before-call.s3.DeleteObjects", refuse)
    op.execute(make_context())
    assert s3_calls.counts()["DeleteObject"] == 1
    assert f"{PREFIX}/_pending.json" not in list_keys(s3, s3_bucket)
    assert "Could not delete" not in task_logs()


@pytest.mark.parametrize(
    ("etag", "encryption"),
    [("not-an-md5", None), ("0" * 32, "aws:kms")],
    ids=["ETag not an MD5", "bucket default SSE-KMS"],
)
def test_a_put_answered_without_checksum_or_md5_etag_is_read_back(make_op, emulator, s3, s3_bucket, etag, encryption):
    """A store that ignores checksums and gives no MD5 ETag: nothing in the answer to compare, so GET and hash."""
    op, s3_calls = _operator_with_counted_client(make_op, n=2)

    def nothing_to_compare(parsed: dict[str, Any], **_: Any) -> None:
        parsed.pop("ChecksumSHA256", None)
        parsed["ETag"] = f'"{etag}"'
        if encryption:  # encrypted without being asked: the ETag is not the MD5
            parsed["ServerSideEncryption"] = encryption

    op.s3_client.meta.events.register("after-call.s3.PutObject", nothing_to_compare)
    xcom = op.execute(make_context())
    assert s3_calls.counts()["GetObject"] == 2  # each image read back once
    for item in xcom:
        body = s3.get_object(Bucket=s3_bucket, Key=item["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == item["sha256"]


def test_a_put_whose_etag_is_not_the_md5_sent_is_deleted(make_op, emulator, s3, s3_bucket):
    op, _ = _operator_with_counted_client(make_op, n=1)

    def other_bytes_stored(parsed: dict[str, Any], **_: Any) -> None:
        parsed.pop("ChecksumSHA256", None)  # a store that ignores checksums ...
        parsed["ETag"] = '"' + "0" * 32 + '"'  # ... and received other bytes

    op.s3_client.meta.events.register("after-call.s3.PutObject", other_bytes_stored)
    with pytest.raises(ImageGenStorageError, match=r"ETag 0{32} is not the MD5 [0-9a-f]{32} of the bytes sent"):
        op.execute(make_context())
    assert list_keys(s3, s3_bucket) == [f"{PREFIX}/_pending.json"]
