"""Careless DAG authors: bad values and runaway prompt lists are refused before anything is paid."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from airflow_provider_imagegen.exceptions import ImageGenValidationError, error_from_s3
from airflow_provider_imagegen.version_compat import AirflowFailException
from tests.support import generations, list_keys


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompts": [f"banner {i}" for i in range(101)]}, "max_images"),  # an upstream bug: 101 prompts
        ({"n": 10, "prompts": [f"banner {i}" for i in range(11)]}, "max_images"),
        ({"s3_extra_args": {"StorageClass": "STANDRD"}}, "s3_extra_args"),
        ({"acl_policy": "bucket-owner-ful-control"}, "acl_policy"),
        ({"s3_tags": {"team": 7}}, "s3_tags"),
        ({"s3_key_prefix": "banners/../other-team"}, "s3_key_prefix"),
        ({"s3_key_prefix": "x" * 1015}, "s3_key_prefix"),
        ({"n": "\uff13"}, "n"),
    ],
)
def test_refused_before_any_call_and_nothing_written(make_op, context, emulator, s3, s3_bucket, kwargs, field):
    with pytest.raises(AirflowFailException) as caught:
        make_op(**kwargs).execute(context)
    assert isinstance(caught.value.__cause__, ImageGenValidationError)
    assert caught.value.__cause__.field == field
    assert generations(emulator) == 0
    assert list_keys(s3, s3_bucket) == []


def test_the_spending_guard_passes_at_the_limit(make_op, context, emulator, s3, s3_bucket):
    xcom = make_op(prompts=["a", "b"], n=2, max_images=4).execute(context)
    assert len(xcom) == 4
    assert generations(emulator) == 2


def test_the_spending_guard_names_the_numbers(make_op, context, emulator):
    with pytest.raises(AirflowFailException, match=r"3 prompt\(s\) x n=2 = 6 images"):
        make_op(prompts=["a", "b", "c"], n=2, max_images=5).execute(context)
    assert generations(emulator) == 0


@pytest.mark.parametrize("code", ["InvalidArgument", "InvalidStorageClass", "InvalidTag", "KeyTooLong"])
def test_s3_argument_errors_cannot_heal(code):
    error = ClientError({"Error": {"Code": code, "Message": "no"}}, "PutObject")
    assert error_from_s3(error, "b", "k").permanent


def test_botocore_parameter_validation_cannot_heal():
    error = ParamValidationError(report="Invalid type for parameter SSEKMSKeyId")
    assert error_from_s3(error, "b", "k").permanent


def test_a_transient_s3_error_stays_retryable():
    error = ClientError({"Error": {"Code": "SlowDown", "Message": "reduce your request rate"}}, "PutObject")
    assert not error_from_s3(error, "b", "k").permanent
