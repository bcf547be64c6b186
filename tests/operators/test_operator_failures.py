"""Failures: fewer images, permanent API errors, bad bytes, S3 problems — each classified, nothing left behind."""

from __future__ import annotations

import json

import pytest

from airflow_provider_imagegen.exceptions import (
    ImageGenDownloadError,
    ImageGenError,
    ImageGenImageVerificationError,
    ImageGenNoImagesError,
    ImageGenServerError,
)
from airflow_provider_imagegen.version_compat import AirflowFailException
from tests.support import PREFIX, list_keys, make_context, multipart_uploads


def _final_keys(s3, bucket):
    return [key for key in list_keys(s3, bucket) if not key.endswith("/_pending.json")]


# -- fewer images than asked ----------------------------------------------------------------------


def test_fewer_images_but_enough_succeeds_with_a_warning(make_op, context, emulator, s3, s3_bucket, task_logs):
    emulator.configure(max_images=2)
    xcom = make_op(n=4, min_images=1).execute(context)
    assert len(xcom) == 2
    warnings = [line for line in task_logs().splitlines() if "warning" in line.lower()]
    assert any("returned 2 of 4 requested image(s)" in line for line in warnings), warnings
    manifest = json.loads(s3.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/manifest.json")["Body"].read())
    assert manifest["requested_images"] == 4
    assert manifest["received_images"] == 2


def test_too_few_images_fails_clearly(make_op, context, emulator, s3, s3_bucket):
    emulator.configure(max_images=2)
    with pytest.raises(
        AirflowFailException, match=r"returned 2 of 4 requested image\(s\), fewer than min_images=3"
    ) as info:
        make_op(n=4, min_images=3).execute(context)
    assert isinstance(info.value.__cause__, ImageGenNoImagesError)  # paid once: a retry would pay again
    assert _final_keys(s3, s3_bucket) == []


def test_min_images_above_n_is_a_validation_error(make_op, context, emulator):
    with pytest.raises(AirflowFailException, match="min_images"):
        make_op(n=2, min_images=3).execute(context)
    assert emulator.calls == []


# -- permanent API errors: AirflowFailException, no Airflow retry ---------------------------------


def test_wrong_api_key_is_permanent(make_op, context, emulator, monkeypatch):
    conn = json.loads(emulator.connection_json())
    conn["password"] = "not-the-key"
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", json.dumps(conn))
    with pytest.raises(AirflowFailException, match="refused the API key") as info:
        make_op().execute(context)
    assert "not-the-key" not in str(info.value)
    assert len(emulator.state.generation_calls()) == 1


def test_content_policy_is_permanent(make_op, context, emulator, s3, s3_bucket):
    with pytest.raises(AirflowFailException, match="content moderation"):
        make_op(prompt="something forbidden at night").execute(context)
    assert len(emulator.state.generation_calls()) == 1
    assert list_keys(s3, s3_bucket) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"n": "11"}, "n"),
        ({"n": 0}, "n"),
        ({"size": "999x999"}, "size"),
        ({"quality": "ultra"}, "quality"),
        ({"output_format": "gif"}, "output_format"),
        ({"output_compression": 50}, "output_compression"),  # png takes no compression
        ({"prompt": "x" * 32_001}, "prompt"),
        ({"s3_bucket": "s3://bucket/key"}, "s3_bucket"),
        ({"s3_extra_args": {"StorageClas": "STANDARD_IA"}}, "s3_extra_args"),  # a typo S3 would refuse
        ({"s3_extra_args": {"ChecksumAlgorithm": "CRC32"}}, "s3_extra_args"),  # the operator's to set
        ({"s3_extra_args": "StorageClass=GLACIER"}, "s3_extra_args"),
    ],
)
def test_invalid_rendered_values_fail_before_any_call(make_op, context, emulator, s3, s3_bucket, params, field):
    with pytest.raises(AirflowFailException, match=f"Invalid {field}"):
        make_op(**params).execute(context)
    assert emulator.calls == []
    assert list_keys(s3, s3_bucket) == []


def test_server_errors_exhausting_retries_stay_retryable(make_op, context, emulator, fast_retries, s3, s3_bucket):
    emulator.configure(server_errors=100)
    with pytest.raises(ImageGenServerError) as info:
        make_op().execute(context)
    assert not isinstance(info.value, AirflowFailException)
    assert len(emulator.state.generation_calls()) == 4  # 1 + the default 3 retries
    assert list_keys(s3, s3_bucket) == []


def test_transient_server_errors_are_retried_inside_the_call(make_op, context, emulator, fast_retries):
    emulator.configure(server_errors=2)
    xcom = make_op().execute(context)
    assert len(xcom) == 1
    assert len(emulator.state.generation_calls()) == 3


# -- bytes that are not what was asked ------------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "permanent", "message"),
    [
        ({"wrong_format": True}, True, "png was asked"),
        ({"wrong_dimensions": True}, True, "1024x1024 was asked"),
        ({"image_content_type": "text/html"}, True, "text/html"),
        ({"truncate_bodies": True}, False, ""),
    ],
)
def test_bad_downloads_fail_and_leave_no_object(make_op, context, emulator, s3, s3_bucket, knobs, permanent, message):
    emulator.configure(**knobs)
    with pytest.raises((AirflowFailException, ImageGenDownloadError), match=message) as info:
        make_op(n=3).execute(context)
    if permanent:  # the API served these bytes for this request: paying again on every retry cannot help
        assert isinstance(info.value, AirflowFailException)
        assert isinstance(info.value.__cause__, ImageGenImageVerificationError)
    else:  # a transfer cut short: the next try copies the recorded URLs again, without paying
        assert isinstance(info.value, ImageGenDownloadError)
        assert not isinstance(info.value, AirflowFailException)
    assert _final_keys(s3, s3_bucket) == []
    assert multipart_uploads(s3, s3_bucket) == []


@pytest.mark.parametrize("knobs", [{"truncate_bodies": True}, {"wrong_dimensions": True}])
def test_bad_big_download_aborts_its_multipart_upload(make_op, context, emulator, s3, s3_bucket, knobs):
    emulator.configure(noise=True, **knobs)
    with pytest.raises((ImageGenDownloadError, AirflowFailException)):
        make_op(size="3840x2160").execute(context)
    assert _final_keys(s3, s3_bucket) == []
    assert multipart_uploads(s3, s3_bucket) == []


def test_one_bad_image_among_good_ones_leaves_no_final_object(make_op, context, emulator, s3, s3_bucket, monkeypatch):
    from airflow_provider_imagegen.transfer import Copier

    real = Copier.copy

    def copy(self, url, key, index, job):
        if index == 2:
            raise ImageGenImageVerificationError("image 2 is not a PNG")
        return real(self, url, key, index, job)

    monkeypatch.setattr(Copier, "copy", copy)
    with pytest.raises(AirflowFailException, match="image 2"):
        make_op(n=4, upload_concurrency=1).execute(context)
    assert _final_keys(s3, s3_bucket) == []


# -- S3 problems ----------------------------------------------------------------------------------


def test_missing_bucket_fails_permanently_before_generating(make_op, context, emulator, s3):
    with pytest.raises(AirflowFailException, match=r"S3 bucket .no-such-bucket-here. does not exist"):
        make_op(s3_bucket="no-such-bucket-here", real_s3_client=True).execute(context)
    assert emulator.calls == []


def test_unreachable_s3_is_retryable(make_op, context, emulator, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {
                    "endpoint_url": "http://127.0.0.1:9",
                    "region_name": "us-east-1",
                    "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
                },
            }
        ),
    )
    with pytest.raises(ImageGenError) as info:
        make_op(real_s3_client=True).execute(context)
    assert not isinstance(info.value, AirflowFailException)
    assert emulator.calls == []


def test_mapped_instances_and_runs_never_share_keys(make_op, emulator, s3, s3_bucket):
    a = make_op().execute(make_context(map_index=0))
    b = make_op().execute(make_context(map_index=1))
    c = make_op().execute(make_context(run_id="manual__2026-01-02T00:00:00+00:00"))
    keys = [a[0]["key"], b[0]["key"], c[0]["key"]]
    assert len(set(keys)) == 3
    assert len(emulator.state.generation_calls()) == 3
