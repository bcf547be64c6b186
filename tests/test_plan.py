"""The plan: rendered values → validated jobs, keys and upload arguments, before anything is paid."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_imagegen.exceptions import ImageGenValidationError
from airflow_provider_imagegen.plan import (
    Plan,
    TaskIdentity,
    build_plan,
    default_prefix,
    image_key,
    safe_segment,
    task_prefix,
    upload_args,
)

TASK = TaskIdentity(dag_id="daily", run_id="manual__2026-01-01T00:00:00+00:00", task_id="gen", try_number=1)
DEFAULT = "imagegen/daily/manual__2026-01-01T00-00-00-00-00/gen"
SAFE_KEY = re.compile(r"^[A-Za-z0-9._=/-]+$")
SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._=-]+$")


def _plan(**overrides) -> Plan:
    values = {
        "task": TASK,
        "prompt": "a lighthouse",
        "prompts": None,
        "s3_bucket": "bucket",
        "s3_key_prefix": None,
        "request_params": {"n": 2, "size": "1024x1024"},
        "min_images": 1,
    }
    values.update(overrides)
    return build_plan(**values)


def test_one_prompt_one_job_under_the_default_prefix():
    plan = _plan()
    (job,) = plan.jobs
    assert (job.prompt_index, job.prefix, job.request.n) == (0, DEFAULT, 2)
    assert job.image_key(3) == f"{DEFAULT}/03.png"
    assert plan.list_prefix == DEFAULT
    assert not plan.batch


def test_batch_jobs_get_numbered_folders_and_one_list_prefix():
    plan = _plan(prompt=None, prompts='["a", "b", "c"]', request_params={"n": "1", "output_format": "jpeg"})
    assert [job.prefix for job in plan.jobs] == [f"{DEFAULT}/{i:03d}" for i in range(3)]
    assert [job.request.prompt for job in plan.jobs] == ["a", "b", "c"]
    assert plan.jobs[2].image_key(0) == f"{DEFAULT}/002/00.jpg"
    assert plan.list_prefix == DEFAULT
    assert plan.batch


def test_mapped_tasks_get_their_map_index():
    mapped = TaskIdentity("daily", "r", "gen", map_index=4)
    assert task_prefix(None, mapped) == "imagegen/daily/r/gen/4"
    assert task_prefix("/banners/2026/", mapped) == "banners/2026/4"
    assert task_prefix("  ", TASK) == DEFAULT


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"request_params": {"n": "three"}}, "n"),
        ({"request_params": {"n": 11}}, "n"),
        ({"request_params": {"size": "999x999"}}, "size"),
        ({"min_images": 3}, "min_images"),
        ({"min_images": True}, "min_images"),
        ({"s3_bucket": "s3://bucket/key"}, "s3_bucket"),
        ({"s3_bucket": " bucket"}, "s3_bucket"),
        ({"s3_key_prefix": 5}, "s3_key_prefix"),
        ({"prompt": None, "prompts": []}, "prompts"),
        ({"prompt": None, "prompts": "not a list ["}, "prompts"),
        ({"s3_extra_args": {"StorageClas": "STANDARD"}}, "s3_extra_args"),
        ({"s3_extra_args": {"ChecksumSHA256": "x"}}, "s3_extra_args"),
        ({"s3_extra_args": ["StorageClass"]}, "s3_extra_args"),
        ({"s3_extra_args": {"StorageClass": "STANDRD"}}, "s3_extra_args"),
        ({"request_params": {"n": "\uff13"}}, "n"),  # a full-width 3: a digit to Python, not to the API
        ({"request_params": {"n": "\u0663"}}, "n"),  # an Arabic-Indic 3
        ({"s3_tags": ["team", "a"]}, "s3_tags"),
        ({"s3_tags": {"team": 5}}, "s3_tags"),
        ({"s3_tags": {f"k{i}": "v" for i in range(11)}}, "s3_tags"),
        ({"acl_policy": "bucket-owner-ful-control"}, "acl_policy"),
        ({"kms_key_id": 1234}, "kms_key_id"),
        ({"s3_bucket": "My_Bucket"}, "s3_bucket"),
        ({"s3_bucket": "ab"}, "s3_bucket"),
        ({"s3_bucket": "a..b"}, "s3_bucket"),
        ({"s3_bucket": "192.168.1.1"}, "s3_bucket"),
        ({"s3_key_prefix": "banners/../secrets"}, "s3_key_prefix"),
        ({"s3_key_prefix": "banners/./x"}, "s3_key_prefix"),
        ({"s3_key_prefix": "banners//x"}, "s3_key_prefix"),
        ({"s3_key_prefix": "banners/\nx"}, "s3_key_prefix"),
        ({"s3_key_prefix": "p" * 1012}, "s3_key_prefix"),
        ({"s3_key_prefix": "\u00e9" * 506}, "s3_key_prefix"),  # 1012 bytes in UTF-8, 506 characters
        ({"max_images": 1}, "max_images"),
        ({"max_images": 0}, "max_images"),
        ({"prompt": None, "prompts": ["x"] * 51}, "max_images"),  # 51 x n=2 > 100
    ],
)
def test_bad_values_are_refused_naming_the_field(overrides, field):
    with pytest.raises(ImageGenValidationError) as caught:
        _plan(**overrides)
    assert caught.value.field == field
    assert caught.value.permanent


def test_the_spending_guard_passes_at_the_limit_and_can_be_disabled():
    assert len(_plan(prompt=None, prompts=["x"] * 50).jobs) == 50  # 50 x n=2 = 100 = the default cap
    assert len(_plan(prompt=None, prompts=["x"] * 51, max_images=None).jobs) == 51
    with pytest.raises(ImageGenValidationError, match=r"51 prompt\(s\) x n=2 = 102 images"):
        _plan(prompt=None, prompts=["x"] * 51)


def test_the_longest_prefix_that_fits():
    assert _plan(s3_key_prefix="p" * 1010).jobs[0].prefix == "p" * 1010  # + "/_pending.json" = 1024 bytes


def test_upload_arguments_and_metadata():
    args = upload_args(
        {"StorageClass": "STANDARD_IA"}, encrypt=True, acl_policy="bucket-owner-full-control", s3_tags={"team": "a b"}
    )
    assert args == {
        "StorageClass": "STANDARD_IA",
        "ServerSideEncryption": "AES256",
        "ACL": "bucket-owner-full-control",
        "Tagging": "team=a+b",
    }
    assert upload_args(None, encrypt=True, kms_key_id="k")["ServerSideEncryption"] == "aws:kms"
    plan = _plan(s3_extra_args={"StorageClass": "STANDARD_IA"}, task=TaskIdentity("dä", "r", "t"))
    assert plan.upload_args == {"StorageClass": "STANDARD_IA"}
    metadata = plan.object_metadata(plan.jobs[0])
    assert metadata["dag-id"] == "d%C3%A4"
    assert all(value.isascii() for value in metadata.values())
    assert metadata["size"] == "1024x1024"


def test_task_identity_from_a_context():
    class TI:
        dag_id, task_id, map_index, try_number = "d", "t", None, 3

    identity = TaskIdentity.from_context({"ti": TI(), "run_id": "r"})
    assert identity == TaskIdentity("d", "r", "t", map_index=-1, try_number=3)
    assert identity.record(2)["prompt_index"] == 2


# -- key layout -----------------------------------------------------------------------------------


def test_airflow_run_id_becomes_a_readable_segment():
    assert safe_segment("manual__2026-01-01T00:00:00+00:00") == "manual__2026-01-01T00-00-00-00-00"
    assert safe_segment("scheduled__2026-01-01T00:00:00+00:00") == "scheduled__2026-01-01T00-00-00-00-00"


@pytest.mark.parametrize(
    "run_id",
    [
        "manual__2026-01-01T00:00:00+00:00",
        "scheduled__2026-03-04T05:06:07.123456+00:00",
        "my run with spaces",
        "ünïcödé run — 日本語",
        "a/b/../c",
        "..",
        "???",
        "trailing-",
    ],
)
def test_default_prefix_is_s3_safe_for_odd_run_ids(run_id):
    prefix = default_prefix("my_dag", run_id, "generate", -1)
    assert SAFE_KEY.match(prefix), prefix
    parts = prefix.split("/")
    assert parts[:2] == ["imagegen", "my_dag"]
    assert parts[3:] == ["generate"]
    assert parts[2] not in ("", ".", "..")


def test_lossy_cleaning_keeps_distinct_run_ids_apart():
    assert safe_segment("run ä") != safe_segment("run ö")
    assert safe_segment("a/b") != safe_segment("a b")


def test_mapped_task_adds_map_index():
    assert default_prefix("d", "r", "t", 2) == "imagegen/d/r/t/2"
    assert default_prefix("d", "r", "t", 0) == "imagegen/d/r/t/0"
    assert default_prefix("d", "r", "t", -1) == "imagegen/d/r/t"
    assert default_prefix("d", "r", "t", None) == "imagegen/d/r/t"


def test_image_key_is_zero_padded():
    assert image_key("p", 0, "png") == "p/00.png"
    assert image_key("p", 9, "jpg") == "p/09.jpg"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_safe_segment_is_always_non_empty_and_safe(value):
    segment = safe_segment(value)
    assert segment
    assert SAFE_SEGMENT.match(segment), segment
    assert segment not in (".", "..")
    assert safe_segment(segment) == segment  # stable: already-safe names are kept as they are


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii", categories=("L", "N")) | st.sampled_from("._=-"), min_size=1))
def test_safe_segment_keeps_safe_names(value):
    if value.strip("-.") == value:
        assert safe_segment(value) == value


# -- helpers of the plan --------------------------------------------------------------------------


def test_as_int_and_metadata_helpers():
    from airflow_provider_imagegen.plan import as_int as _as_int
    from airflow_provider_imagegen.plan import metadata_value as _metadata_value
    from airflow_provider_imagegen.plan import parse_list as _parse_list

    assert _as_int("n", "3") == 3
    assert _as_int("n", " 10 ") == 10
    assert _as_int("n", "three") == "three"
    assert _as_int("n", None) is None
    assert _metadata_value("manual__2026-01-01T00:00:00+00:00") == "manual__2026-01-01T00:00:00+00:00"
    assert _metadata_value("ü").isascii()
    assert _parse_list('["a", "b"]') == ["a", "b"]
    assert _parse_list("['a', 'b']") == ["a", "b"]
