"""The operator against SeaweedFS, a real S3 implementation that verifies checksums, and through
proxies that make it behave like stores that do not (ignore checksums, refuse ``DeleteObjects``).

Every test runs the operator's real ``execute`` against the emulator; the proxies sit on
loopback between the operator's boto3 client and SeaweedFS.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_imagegen.exceptions import ImageGenStorageError
from tests.storage.proxy import Exchange, LoopbackProxy, flip_byte
from tests.support import (
    PREFIX,
    generations,
    list_keys,
    make_context,
    multipart_uploads,
    object_sha256,
    read_json,
    served_sha256s,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from airflow_provider_imagegen.testing import LocalS3

MANIFEST = f"{PREFIX}/manifest.json"
PENDING = f"{PREFIX}/_pending.json"
_CHECKSUM_XML = re.compile(
    rb"<Checksum(?:SHA256|CRC32C?|SHA1|CRC64NVME|Type)>[^<]*</Checksum(?:SHA256|CRC32C?|SHA1|CRC64NVME|Type)>"
)


def _assert_stored(xcom: list[dict[str, Any]], s3: Any, bucket: str, emulator: Any) -> None:
    served = served_sha256s(emulator)
    for item in xcom:
        assert object_sha256(s3, bucket, item["key"]) == item["sha256"]
        assert item["sha256"] in served
    assert read_json(s3, bucket, MANIFEST)["images"] == xcom
    assert PENDING not in list_keys(s3, bucket)
    assert multipart_uploads(s3, bucket) == []


@pytest.fixture
def proxied(seaweedfs: LocalS3) -> Iterator[Callable[..., Any]]:
    """``proxied(on_request=..., on_response=...)``: a boto3 client of SeaweedFS through a proxy."""
    proxies: list[LoopbackProxy] = []

    def build(**hooks: Any) -> Any:
        from airflow_provider_imagegen.testing import LocalS3

        proxy = LoopbackProxy(seaweedfs.endpoint_url.removeprefix("http://"), **hooks).__enter__()
        proxies.append(proxy)
        return LocalS3(endpoint_url=proxy.url).client()

    yield build
    for proxy in proxies:
        proxy.__exit__(None, None, None)


def _is_image_upload(request: Exchange) -> bool:
    path = request.path.split("?")[0]
    return request.method == "PUT" and path.endswith((".png", ".jpg"))


def _strip_checksums(request: Exchange) -> None:
    """A store that ignores checksums: it never sees them, so it neither checks nor returns one."""
    for name in list(request.headers):
        if name.lower().startswith(("x-amz-checksum-", "x-amz-sdk-checksum-")) or name.lower() == "content-md5":
            del request.headers[name]
    if request.method == "POST" and "uploadId=" in request.path:  # CompleteMultipartUpload
        request.body = _CHECKSUM_XML.sub(b"", request.body)


def _strip_answer_checksums(answer: Exchange) -> None:
    for name in list(answer.headers):
        if name.lower().startswith("x-amz-checksum-"):
            del answer.headers[name]
    answer.body = _CHECKSUM_XML.sub(b"", answer.body)


# -- SeaweedFS as it is ------------------------------------------------------------------------


@pytest.mark.parametrize(("output_format", "extension"), [("png", "png"), ("jpeg", "jpg")])
def test_single_put_images_land_verified(make_weed_op, emulator, weed_s3, weed_bucket, output_format, extension):
    xcom = make_weed_op(n=2, output_format=output_format).execute(make_context())
    assert [item["key"] for item in xcom] == [f"{PREFIX}/00.{extension}", f"{PREFIX}/01.{extension}"]
    _assert_stored(xcom, weed_s3, weed_bucket, emulator)
    for item in xcom:  # SeaweedFS kept the checksum the operator sent
        head = weed_s3.head_object(Bucket=weed_bucket, Key=item["key"], ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"]
    assert generations(emulator) == 1


def test_a_multipart_4k_image_lands_verified(make_weed_op, emulator, weed_s3, weed_bucket):
    emulator.configure(noise=True)
    xcom = make_weed_op(n=1, size="3840x2160").execute(make_context())
    assert xcom[0]["size_bytes"] > 8 * 1024 * 1024
    head = weed_s3.head_object(Bucket=weed_bucket, Key=xcom[0]["key"], ChecksumMode="ENABLED")
    assert re.fullmatch(r'"[0-9a-f]{32}-\d+"', head["ETag"])  # really a multipart upload
    _assert_stored(xcom, weed_s3, weed_bucket, emulator)


def test_a_batch_lands_and_cleans_up(make_weed_op, emulator, weed_s3, weed_bucket):
    xcom = make_weed_op(prompts=["mug 0", "mug 1", "mug 2"], n=1).execute(make_context())
    assert [item["prompt_index"] for item in xcom] == [0, 1, 2]
    for item in xcom:
        assert object_sha256(weed_s3, weed_bucket, item["key"]) == item["sha256"]
    assert not [key for key in list_keys(weed_s3, weed_bucket) if key.endswith("_pending.json")]
    assert generations(emulator) == 3


def test_a_rerun_reuses_the_manifest_with_zero_calls(make_weed_op, emulator, weed_s3, weed_bucket):
    first = make_weed_op(n=2).execute(make_context())
    assert make_weed_op(n=2).execute(make_context(try_number=2)) == first
    assert generations(emulator) == 1
    _assert_stored(first, weed_s3, weed_bucket, emulator)


def test_a_byte_flipped_in_transit_is_refused_by_the_store(make_weed_op, emulator, weed_s3, weed_bucket, proxied):
    def corrupt(request: Exchange) -> None:
        if _is_image_upload(request):
            request.body = flip_byte(request.body)

    client = proxied(on_request=lambda request: corrupt(request))
    with pytest.raises(ImageGenStorageError, match=r"BadDigest"):
        make_weed_op(n=1, client=client).execute(make_context())
    assert list_keys(weed_s3, weed_bucket) == [PENDING]  # no image, no manifest: only the URLs for a retry
    assert generations(emulator) == 1


def test_an_open_multipart_upload_left_by_a_killed_worker_is_aborted(make_weed_op, emulator, weed_s3, weed_bucket):
    weed_s3.create_multipart_upload(Bucket=weed_bucket, Key=f"{PREFIX}/00.png")
    other = weed_s3.create_multipart_upload(Bucket=weed_bucket, Key="someone-else/00.png")
    make_weed_op(n=1).execute(make_context())
    left = multipart_uploads(weed_s3, weed_bucket)
    assert [(u["Key"], u["UploadId"]) for u in left] == [("someone-else/00.png", other["UploadId"])]
    weed_s3.abort_multipart_upload(Bucket=weed_bucket, Key="someone-else/00.png", UploadId=other["UploadId"])


# -- a store that ignores checksums (issue 12 item 1) --------------------------------------------


def test_without_checksums_a_clean_upload_is_verified_by_its_etag(
    make_weed_op, emulator, weed_s3, weed_bucket, proxied
):
    client = proxied(on_request=_strip_checksums, on_response=_strip_answer_checksums)
    xcom = make_weed_op(n=2, client=client).execute(make_context())
    _assert_stored(xcom, weed_s3, weed_bucket, emulator)


@pytest.mark.parametrize("size", ["1024x1024", "3840x2160"], ids=["single PUT", "multipart"])
def test_without_checksums_a_byte_flipped_in_transit_is_caught(
    make_weed_op, emulator, weed_s3, weed_bucket, proxied, size
):
    flipped = []

    def corrupt(request: Exchange) -> None:
        _strip_checksums(request)
        if _is_image_upload(request) and not flipped and len(request.body) > 1000:
            request.body = flip_byte(request.body)
            flipped.append(request.path)

    emulator.configure(noise=True)
    client = proxied(on_request=corrupt, on_response=_strip_answer_checksums)
    with pytest.raises(ImageGenStorageError, match=r"failed verification.*deleted"):
        make_weed_op(n=1, size=size, client=client).execute(make_context())
    assert flipped  # the store did receive other bytes than were sent ...
    assert list_keys(weed_s3, weed_bucket) == [PENDING]  # ... and the operator did not keep them
    assert multipart_uploads(weed_s3, weed_bucket) == []


@pytest.mark.parametrize("note_etags", [True, False], ids=["ETag recorded", "no ETag recorded"])
def test_reuse_compares_the_recorded_etag_when_the_store_keeps_no_checksum(weed_bucket, proxied, note_etags):
    """The record store and copier as the pipeline joins them: the ETag travels on the image into the manifest."""
    import hashlib
    import logging

    from airflow_provider_imagegen.models import CopiedImage, ImageGenerationRequest
    from airflow_provider_imagegen.plan import PromptJob
    from airflow_provider_imagegen.records import Generation, Manifest, RecordStore
    from airflow_provider_imagegen.transfer import put_verified

    client = proxied(on_request=_strip_checksums, on_response=_strip_answer_checksums)
    job = PromptJob(0, ImageGenerationRequest(prompt="a lighthouse", n=1), "p/run/task")
    store = RecordStore(client, weed_bucket, upload_args={}, log=logging.getLogger(__name__))
    body = b"\x89PNG image bytes " * 100
    sha256 = hashlib.sha256(body).hexdigest()
    etag = put_verified(client, weed_bucket, job.image_key(0), body, sha256, {})
    assert etag == hashlib.md5(body, usedforsecurity=False).hexdigest()  # verified by the ETag: no checksum came back
    recorded = etag if note_etags else ""
    image = CopiedImage(0, weed_bucket, job.image_key(0), "image/png", len(body), sha256, 1, 1, etag=recorded)
    manifest = Manifest.build(request=job.request, images=[image], endpoint="e", task={}, generation=Generation())
    store.commit(job, manifest)
    assert RecordStore(client, weed_bucket, upload_args={}, log=logging.getLogger(__name__)).reuse(job) == [image]

    client.put_object(Bucket=weed_bucket, Key=job.image_key(0), Body=flip_byte(body))  # same size, other bytes
    reused = RecordStore(client, weed_bucket, upload_args={}, log=logging.getLogger(__name__)).reuse(job)
    # with the ETag recorded the change is seen; with only the size to compare it is not
    assert reused is None if note_etags else reused == [image]


def test_a_rerun_on_a_store_without_checksums_sees_a_changed_object_by_its_etag(
    make_weed_op, emulator, weed_s3, weed_bucket, proxied
):
    """Through the operator: the manifest records each object's ETag, and reuse compares it."""
    client = proxied(on_request=_strip_checksums, on_response=_strip_answer_checksums)
    first = make_weed_op(n=2, client=client).execute(make_context())
    manifest = read_json(weed_s3, weed_bucket, f"{PREFIX}/manifest.json")
    assert set(manifest["stored_etags"]) == {item["key"] for item in first}
    key = first[1]["key"]
    body = weed_s3.get_object(Bucket=weed_bucket, Key=key)["Body"].read()
    weed_s3.put_object(Bucket=weed_bucket, Key=key, Body=flip_byte(body))  # same size, other bytes

    again = make_weed_op(n=2, client=client).execute(make_context(try_number=2))
    assert generations(emulator) == 2  # the changed object was noticed: produced again, not reused
    _assert_stored(again, weed_s3, weed_bucket, emulator)  # and S3 holds the verified bytes again


# -- a store that refuses DeleteObjects, like OpenStack Swift's s3api (issue 12 item 2) ----------


def test_when_delete_objects_is_refused_the_pending_record_still_goes(
    make_weed_op, emulator, weed_s3, weed_bucket, proxied
):
    refused = []

    def like_swift(request: Exchange) -> Exchange | None:
        if request.method == "POST" and request.path.split("?", 1)[-1].startswith("delete"):
            refused.append(request.path)
            body = (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidRequest</Code>'
                b"<Message>Missing required header for this request: Content-MD5</Message></Error>"
            )
            return Exchange(request.method, request.path, {"Content-Type": "application/xml"}, body, status=400)
        return None

    client = proxied(on_request=like_swift)
    xcom = make_weed_op(n=2, client=client).execute(make_context())
    assert refused
    _assert_stored(xcom, weed_s3, weed_bucket, emulator)  # no _pending.json outlives the run
