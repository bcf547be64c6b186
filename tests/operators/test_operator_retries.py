"""Retry safety: a repeated try pays nothing, a failed try leaves nothing that looks like success."""

from __future__ import annotations

import time
from typing import Any, NoReturn

import pytest
from botocore.exceptions import ClientError

from airflow_provider_imagegen.exceptions import ImageGenDownloadError, ImageGenStorageError
from tests.support import (
    PREFIX,
    list_keys,
    make_context,
    multipart_uploads,
    object_sha256,
    read_json,
    served_sha256s,
)


class FailingUploads:
    """A boto3 client whose image uploads fail with a transient S3 error; everything else passes."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def upload_fileobj(self, *args: Any, **kwargs: Any) -> None:
        self._fail()

    def put_object(self, **kwargs: Any) -> Any:
        if not kwargs["Key"].endswith(".json"):
            self._fail()
        return self._client.put_object(**kwargs)

    @staticmethod
    def _fail() -> NoReturn:
        error = {"Error": {"Code": "InternalError", "Message": "We encountered an internal error"}}
        raise ClientError(error, "PutObject")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _generations(emulator) -> int:
    return len(emulator.state.generation_calls())


def test_second_try_makes_no_api_call_and_returns_the_same_xcom(make_op, emulator, s3, s3_bucket):
    first = make_op(n=3).execute(make_context(try_number=1))
    assert _generations(emulator) == 1
    downloads = len(emulator.state.download_calls())

    second = make_op(n=3).execute(make_context(try_number=2))
    assert second == first
    assert _generations(emulator) == 1
    assert len(emulator.state.download_calls()) == downloads
    assert f"{PREFIX}/_pending.json" not in list_keys(s3, s3_bucket)


def test_same_operator_object_executed_twice_pays_once(make_op, context, emulator):
    op = make_op(n=2)
    assert op.execute(context) == op.execute(context)
    assert _generations(emulator) == 1


@pytest.mark.parametrize("tamper", ["delete", "change", "same_size"])
def test_a_missing_or_changed_object_makes_the_next_try_generate_again(make_op, emulator, s3, s3_bucket, tamper):
    make_op(n=3).execute(make_context())
    downloads = len(emulator.state.download_calls())
    victim = f"{PREFIX}/01.png"
    if tamper == "delete":
        s3.delete_object(Bucket=s3_bucket, Key=victim)
    elif tamper == "change":
        s3.put_object(Bucket=s3_bucket, Key=victim, Body=b"not the image any more")
    else:  # same length, other bytes: caught by S3's SHA-256 checksum
        size = s3.head_object(Bucket=s3_bucket, Key=victim)["ContentLength"]
        s3.put_object(Bucket=s3_bucket, Key=victim, Body=b"x" * size, ChecksumAlgorithm="SHA256")

    second = make_op(n=3).execute(make_context(try_number=2))
    assert _generations(emulator) == 2
    assert len(emulator.state.download_calls()) == downloads + 3
    for item in second:
        assert object_sha256(s3, s3_bucket, item["key"]) == item["sha256"]
    assert read_json(s3, s3_bucket, f"{PREFIX}/manifest.json")["images"] == second


def test_a_changed_request_is_not_served_from_an_old_manifest(make_op, emulator, s3, s3_bucket):
    make_op(prompt="first idea").execute(make_context())
    xcom = make_op(prompt="second idea").execute(make_context(try_number=2))
    assert _generations(emulator) == 2
    assert read_json(s3, s3_bucket, f"{PREFIX}/manifest.json")["prompt"] == "second idea"
    assert xcom[0]["sha256"] == object_sha256(s3, s3_bucket, xcom[0]["key"])


def test_s3_failure_after_generation_is_resumed_from_recorded_urls(make_op, emulator, s3, s3_bucket):
    op = make_op(n=3)
    op.__dict__["s3_client"] = FailingUploads(op.s3_client)
    with pytest.raises(ImageGenStorageError, match="InternalError"):
        op.execute(make_context(try_number=1))
    assert _generations(emulator) == 1
    # the failed try left its URLs for the next one, and nothing that looks like success
    assert list_keys(s3, s3_bucket) == [f"{PREFIX}/_pending.json"]
    assert multipart_uploads(s3, s3_bucket) == []

    xcom = make_op(n=3).execute(make_context(try_number=2))
    assert _generations(emulator) == 1  # nothing paid twice
    assert len(xcom) == 3
    assert {item["sha256"] for item in xcom} == served_sha256s(emulator)
    assert f"{PREFIX}/_pending.json" not in list_keys(s3, s3_bucket)
    assert f"{PREFIX}/manifest.json" in list_keys(s3, s3_bucket)


def test_truncated_downloads_leave_pending_and_the_retry_copies_them(make_op, emulator, s3, s3_bucket):
    emulator.configure(truncate_bodies=True)
    with pytest.raises(ImageGenDownloadError):
        make_op(n=2).execute(make_context(try_number=1))
    assert list_keys(s3, s3_bucket) == [f"{PREFIX}/_pending.json"]
    assert _generations(emulator) == 1

    emulator.configure(truncate_bodies=False)
    xcom = make_op(n=2).execute(make_context(try_number=2))
    assert _generations(emulator) == 1
    for item in xcom:
        assert object_sha256(s3, s3_bucket, item["key"]) == item["sha256"]
    assert {item["sha256"] for item in xcom} == served_sha256s(emulator)


def test_expired_recorded_urls_are_regenerated_exactly_once(make_op, emulator, s3, s3_bucket):
    emulator.configure(url_ttl=0.2)
    op = make_op(n=2)
    op.__dict__["s3_client"] = FailingUploads(op.s3_client)
    with pytest.raises(ImageGenStorageError):
        op.execute(make_context(try_number=1))
    time.sleep(0.4)
    emulator.configure(url_ttl=3600.0)

    xcom = make_op(n=2).execute(make_context(try_number=2))
    assert _generations(emulator) == 2
    assert len(xcom) == 2
    for item in xcom:
        assert object_sha256(s3, s3_bucket, item["key"]) == item["sha256"]
    keys = list_keys(s3, s3_bucket)
    assert f"{PREFIX}/_pending.json" not in keys
    assert f"{PREFIX}/manifest.json" in keys

    make_op(n=2).execute(make_context(try_number=3))
    assert _generations(emulator) == 2


def test_worker_killed_between_upload_and_manifest(make_op, emulator, s3, s3_bucket, monkeypatch):
    from airflow_provider_imagegen.records import RecordStore

    def killed(*args, **kwargs):
        raise SystemExit("worker killed")

    with monkeypatch.context() as patch:
        patch.setattr(RecordStore, "commit", killed)
        with pytest.raises(SystemExit):
            make_op(n=2).execute(make_context(try_number=1))
    keys = list_keys(s3, s3_bucket)
    assert f"{PREFIX}/manifest.json" not in keys  # nothing vouches for the objects of the dead try
    assert f"{PREFIX}/_pending.json" in keys

    xcom = make_op(n=2).execute(make_context(try_number=2))
    assert _generations(emulator) == 1
    assert read_json(s3, s3_bucket, f"{PREFIX}/manifest.json")["images"] == xcom
    assert f"{PREFIX}/_pending.json" not in list_keys(s3, s3_bucket)


def test_stale_manifest_is_removed_before_objects_are_replaced(make_op, emulator, s3, s3_bucket):
    make_op(prompt="first idea").execute(make_context())
    emulator.configure(truncate_bodies=True)
    with pytest.raises(ImageGenDownloadError):
        make_op(prompt="second idea").execute(make_context(try_number=2))
    # the old manifest no longer vouches for objects that are being replaced
    assert f"{PREFIX}/manifest.json" not in list_keys(s3, s3_bucket)
