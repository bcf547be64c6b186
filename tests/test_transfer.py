"""The copier (one URL → one verified S3 object) and the one comparison of a stored object.

``Copier`` runs against moto in-process (``mock_aws``: no server) with a fake hook that serves
image bytes; ``verify_stored_object`` and ``put_verified`` against a tiny fake S3 client that
answers what each store does (a checksum, an MD5 ETag, neither); ``stored_object_differences``
on plain answers.
"""

from __future__ import annotations

import base64
import hashlib
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from moto import mock_aws

from airflow_provider_imagegen.exceptions import (
    ImageGenDownloadError,
    ImageGenImageVerificationError,
    ImageGenPermanentStorageError,
    ImageGenStorageError,
)
from airflow_provider_imagegen.models import ImageGenerationRequest, stored_object_differences
from airflow_provider_imagegen.plan import PromptJob
from airflow_provider_imagegen.transfer import (
    PART_SIZE,
    Copier,
    check_content_type,
    put_verified,
    read_back_sha256,
    verify_stored_object,
)
from tests.support import image_bytes

BUCKET = "transfer"
JOB = PromptJob(3, ImageGenerationRequest(prompt="a lighthouse", n=2, size="1024x1024"), "imagegen/d/r/t")
URL = "https://cdn.test/0.png"


# -- the copier, on moto in-process -------------------------------------------------------------------


class _Stream:
    def __init__(self, data: bytes, content_type: str) -> None:
        self.data, self.content_type = data, content_type

    def iter_bytes(self) -> Any:
        yield from (self.data[i : i + 65536] for i in range(0, len(self.data), 65536))


class ServingHook:
    """``open_image`` of the real hook, serving ``images[url]`` (bytes, or an error to raise)."""

    def __init__(self, images: dict[str, Any], content_type: str = "image/png") -> None:
        self.images, self.content_type = images, content_type
        self.opened: list[str] = []

    @contextmanager
    def open_image(self, url: str) -> Any:
        self.opened.append(url)
        data = self.images[url]
        if isinstance(data, BaseException):
            raise data
        yield _Stream(data, self.content_type)


@pytest.fixture(scope="module")
def _moto():
    with mock_aws():
        yield boto3.client("s3", region_name="us-east-1")  # one client: building one takes a quarter second


@pytest.fixture
def s3(_moto):
    """An empty bucket, emptied and removed after the test."""
    _moto.create_bucket(Bucket=BUCKET)
    yield _moto
    for upload in _open_uploads(_moto):
        _moto.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    for key in _keys(_moto):
        _moto.delete_object(Bucket=BUCKET, Key=key)
    _moto.delete_bucket(Bucket=BUCKET)


def _copier(s3, hook: ServingHook, upload_args: dict[str, Any] | None = None) -> Copier:
    return Copier(
        hook,  # type: ignore[arg-type]
        s3,
        BUCKET,
        upload_args=upload_args or {},
        metadata=lambda job: {"prompt-sha256": "ab" * 32, "task-id": "t"},
    )


def _keys(s3) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def _open_uploads(s3) -> list[Any]:
    return s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def test_the_copier_uses_one_part_size_for_both_thresholds():
    copier = _copier(None, ServingHook({}))
    assert copier.transfer_config.multipart_threshold == PART_SIZE
    assert copier.transfer_config.multipart_chunksize == PART_SIZE
    assert PART_SIZE == 5 * 1024 * 1024  # the smallest part S3 accepts


def test_an_image_within_one_part_is_stored_verified_with_its_etag(s3):
    data = image_bytes("png", (1024, 1024))
    key = JOB.image_key(1)
    image = _copier(s3, ServingHook({URL: data}), {"Metadata": {"team": "content"}}).copy(URL, key, 1, JOB)

    head = s3.head_object(Bucket=BUCKET, Key=key)
    stored = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert stored == data
    assert (image.bucket, image.key, image.index, image.prompt_index) == (BUCKET, key, 1, 3)
    assert (image.size_bytes, image.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert (image.width, image.height, image.content_type) == (1024, 1024, "image/png")
    assert image.etag == head["ETag"].strip('"')
    assert image.etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {"team": "content", "prompt-sha256": "ab" * 32, "task-id": "t", "image-index": "1"}


def test_a_bigger_image_goes_up_in_parts_and_is_verified_with_its_composite_etag(s3):
    data = image_bytes("png", (1024, 1024), padding=PART_SIZE + 1000)
    key = JOB.image_key(0)
    image = _copier(s3, ServingHook({URL: data})).copy(URL, key, 0, JOB)

    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert image.etag == head["ETag"].strip('"')
    assert image.etag.endswith("-2")  # two parts of PART_SIZE at most
    assert (image.size_bytes, image.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert hashlib.sha256(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()).hexdigest() == image.sha256
    assert _open_uploads(s3) == []


@pytest.mark.parametrize(
    ("data", "content_type", "error"),
    [
        pytest.param(image_bytes("png", (100, 100)), "image/png", ImageGenImageVerificationError, id="pixel-size"),
        pytest.param(image_bytes("jpeg", (1024, 1024)), "image/png", ImageGenImageVerificationError, id="format"),
        pytest.param(image_bytes("png", (1024, 1024)), "text/html", ImageGenImageVerificationError, id="type"),
        pytest.param(image_bytes("png", (1024, 1024))[:-5], "image/png", ImageGenDownloadError, id="cut-short"),
        pytest.param(
            image_bytes("png", (1024, 1024), padding=PART_SIZE + 10)[:-5], "image/png", ImageGenDownloadError, id="big"
        ),
    ],
)
def test_an_image_that_fails_a_check_leaves_nothing_stored(s3, data, content_type, error):
    with pytest.raises(error):
        _copier(s3, ServingHook({URL: data}, content_type)).copy(URL, JOB.image_key(0), 0, JOB)
    assert _keys(s3) == []
    assert _open_uploads(s3) == []


def test_a_failed_download_is_raised_as_it_is(s3):
    failure = ImageGenDownloadError("Image download failed: ConnectError")
    with pytest.raises(ImageGenDownloadError) as caught:
        _copier(s3, ServingHook({URL: failure})).copy(URL, JOB.image_key(0), 0, JOB)
    assert caught.value is failure
    assert _keys(s3) == []


def test_an_s3_refusal_becomes_a_storage_error_permanent_when_retrying_cannot_help(s3):
    data = image_bytes("png", (1024, 1024))
    with pytest.raises(ImageGenPermanentStorageError, match="does not exist"):
        Copier(ServingHook({URL: data}), s3, "no-such-bucket", upload_args={}, metadata=lambda job: {}).copy(  # type: ignore[arg-type]
            URL, JOB.image_key(0), 0, JOB
        )


def test_check_content_type():
    check_content_type("image/png", "image/png")
    check_content_type("application/octet-stream", "image/png")
    check_content_type("", "image/jpeg")
    with pytest.raises(ImageGenImageVerificationError, match="text/html"):
        check_content_type("text/html", "image/png")
    with pytest.raises(ImageGenImageVerificationError):
        check_content_type("image/jpeg", "image/png")


# -- verify_stored_object and put_verified, on a fake client -------------------------------------------


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def iter_chunks(self, size: int) -> Any:
        yield from (self.data[i : i + size] for i in range(0, len(self.data), size))

    def close(self) -> None:
        pass


class FakeS3:
    """Answers ``put_object``/``head_object`` with ``answer`` and serves ``stored`` back; records calls."""

    def __init__(self, answer: dict[str, Any], stored: bytes = b"") -> None:
        self.answer = answer
        self.stored = stored
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("put_object", kwargs))
        return dict(self.answer)

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("head_object", kwargs))
        return dict(self.answer)

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("get_object", kwargs))
        return {"Body": _Body(self.stored)}

    def delete_object(self, **kwargs: Any) -> None:
        self.calls.append(("delete_object", kwargs))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


BODY = b"the bytes that were sent"
SHA = hashlib.sha256(BODY).hexdigest()
MD5 = hashlib.md5(BODY, usedforsecurity=False).hexdigest()
CHECKSUM = base64.b64encode(hashlib.sha256(BODY).digest()).decode()


def test_a_stored_checksum_that_matches_is_enough():
    s3 = FakeS3({"ChecksumSHA256": CHECKSUM, "ETag": '"OpaqueTag"'})
    assert verify_stored_object(s3, "b", "k", len(BODY), SHA, answer=s3.answer) == "opaquetag"
    assert s3.names() == []


def test_without_an_answer_the_object_is_headed_with_its_checksum():
    s3 = FakeS3({"ContentLength": len(BODY), "ChecksumSHA256": CHECKSUM, "ETag": f'"{MD5}"'})
    assert verify_stored_object(s3, "b", "k", len(BODY), SHA, md5_etag=MD5) == MD5
    ((name, kwargs),) = s3.calls
    assert (name, kwargs["ChecksumMode"]) == ("head_object", "ENABLED")


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ({"ChecksumSHA256": base64.b64encode(b"x" * 32).decode()}, "stored SHA-256"),
        ({"ETag": '"0123456789abcdef0123456789abcdef"'}, "not the MD5"),
        ({"ContentLength": 3, "ChecksumSHA256": CHECKSUM}, "size 3"),
    ],
)
def test_a_difference_deletes_the_object_and_fails(answer, words):
    s3 = FakeS3(answer)
    with pytest.raises(ImageGenStorageError, match=words) as caught:
        verify_stored_object(s3, "b", "k", len(BODY), SHA, answer=answer, md5_etag=MD5)
    assert not caught.value.permanent  # a retry may store it whole
    assert s3.names() == ["delete_object"]


@pytest.mark.parametrize(
    ("upload_args", "answer"),
    [
        ({"ServerSideEncryption": "aws:kms"}, {"ETag": '"0123456789abcdef0123456789abcdef"'}),
        ({}, {"ETag": '"0123456789abcdef0123456789abcdef"', "ServerSideEncryption": "aws:kms"}),
        ({"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k"}, {"ETag": '"whatever"'}),
        ({}, {}),
    ],
    ids=["asked-kms", "bucket-kms", "sse-c", "nothing"],
)
def test_when_nothing_comparable_is_answered_the_object_is_read_back(upload_args, answer):
    s3 = FakeS3(answer, stored=BODY)
    verify_stored_object(s3, "b", "k", len(BODY), SHA, answer=answer, md5_etag=MD5, upload_args=upload_args)
    assert s3.names() == ["get_object"]
    if "SSECustomerKey" in upload_args:
        assert s3.calls[0][1]["SSECustomerKey"] == "k"  # the key that reads it

    changed = FakeS3(answer, stored=b"other bytes of the same len")
    with pytest.raises(ImageGenStorageError, match="read back differ"):
        verify_stored_object(changed, "b", "k", len(BODY), SHA, answer=answer, md5_etag=MD5, upload_args=upload_args)
    assert changed.names() == ["get_object", "delete_object"]


def test_put_verified_sends_the_checksum_and_computes_the_md5_itself():
    s3 = FakeS3({"ETag": f'"{MD5}"'})
    assert put_verified(s3, "b", "k", BODY, SHA, {"ContentType": "image/png"}) == MD5
    ((name, kwargs),) = s3.calls
    assert name == "put_object"
    assert (kwargs["ChecksumAlgorithm"], kwargs["ChecksumSHA256"], kwargs["ContentType"]) == (
        "SHA256",
        CHECKSUM,
        "image/png",
    )

    wrong = FakeS3({"ETag": '"0123456789abcdef0123456789abcdef"'})
    with pytest.raises(ImageGenStorageError):
        put_verified(wrong, "b", "k", BODY, SHA, {})
    assert wrong.names() == ["put_object", "delete_object"]


def test_read_back_streams_size_and_sha256():
    s3 = FakeS3({}, stored=BODY * 1000)
    assert read_back_sha256(s3, "b", "k", extra={"RequestPayer": "requester"}) == (
        len(BODY) * 1000,
        hashlib.sha256(BODY * 1000).hexdigest(),
    )
    assert s3.calls[0][1]["RequestPayer"] == "requester"


# -- stored_object_differences: the one answer to "is this the object we verified?" --------------------


def test_the_same_object_has_no_differences_and_its_bytes_were_compared():
    answer = {"ContentLength": len(BODY), "ChecksumSHA256": CHECKSUM, "ETag": f'"{MD5}"'}
    assert stored_object_differences(answer, size=len(BODY), sha256=SHA, etag=MD5) == ([], True)


def test_an_overwritten_object_differs_by_the_recorded_etag():
    # what a later try sees before it reuses: same size, no checksum kept, another ETag
    answer = {"ContentLength": len(BODY), "ETag": '"fedcba9876543210fedcba9876543210"'}
    problems, compared = stored_object_differences(answer, size=len(BODY), sha256=SHA, etag=MD5)
    assert compared
    assert problems == [f"ETag fedcba9876543210fedcba9876543210 is not the {MD5} recorded"]


def test_only_a_size_compares_nothing_of_the_bytes():
    assert stored_object_differences({"ContentLength": len(BODY)}, size=len(BODY), sha256=SHA) == ([], False)
    assert stored_object_differences({"ContentLength": 1}, size=len(BODY), sha256=SHA) == (
        [f"size 1 != {len(BODY)}"],
        False,
    )


def test_a_composite_checksum_compares_with_the_parts_sent():
    answer = {"ChecksumSHA256": "Y29tcG9zaXRl-2", "ChecksumType": "COMPOSITE", "ETag": '"abc-2"'}
    assert stored_object_differences(answer, size=1, sha256=SHA, composite_sha256="Y29tcG9zaXRl") == ([], True)
    problems, _ = stored_object_differences(answer, size=1, sha256=SHA, composite_sha256="b3RoZXI=")
    assert problems == ["stored composite SHA-256 Y29tcG9zaXRl-2, not the one sent"]


def test_an_md5_etag_is_compared_only_in_the_same_form_and_without_kms():
    plain = {"ETag": '"0123456789abcdef0123456789abcdef"'}
    assert stored_object_differences(plain, size=1, sha256=SHA, md5_etag=f"{MD5}-2") == ([], False)  # not alike
    kms = {"ETag": '"0123456789abcdef0123456789abcdef"', "ServerSideEncryption": "aws:kms"}
    assert stored_object_differences(kms, size=1, sha256=SHA, md5_etag=MD5) == ([], False)
    problems, compared = stored_object_differences(plain, size=1, sha256=SHA, md5_etag=MD5)
    assert compared
    assert problems
