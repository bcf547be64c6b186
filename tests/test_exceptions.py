"""The exception tree: shape, flags, and errors that survive pickling."""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest
from airflow.exceptions import AirflowException

from airflow_provider_imagegen import exceptions as ex

TREE = {
    ex.ImageGenWriteConflictError: ex.ImageGenStorageError,
    ex.ImageGenValidationError: ex.ImageGenError,
    ex.ImageGenAPIError: ex.ImageGenError,
    ex.ImageGenBadRequestError: ex.ImageGenAPIError,
    ex.ImageGenContentPolicyError: ex.ImageGenBadRequestError,
    ex.ImageGenAuthenticationError: ex.ImageGenAPIError,
    ex.ImageGenNotFoundError: ex.ImageGenAPIError,
    ex.ImageGenRateLimitError: ex.ImageGenAPIError,
    ex.ImageGenServerError: ex.ImageGenAPIError,
    ex.ImageGenConnectionError: ex.ImageGenError,
    ex.ImageGenTimeoutError: ex.ImageGenConnectionError,
    ex.ImageGenBadResponseError: ex.ImageGenError,
    ex.ImageGenNoImagesError: ex.ImageGenBadResponseError,
    ex.ImageGenDownloadError: ex.ImageGenError,
    ex.ImageGenImageVerificationError: ex.ImageGenDownloadError,
    ex.ImageGenURLRefusedError: ex.ImageGenDownloadError,
    ex.ImageGenURLExpiredError: ex.ImageGenDownloadError,
    ex.ImageGenPaidURLsExpiredError: ex.ImageGenURLExpiredError,
    ex.ImageGenStorageError: ex.ImageGenError,
    ex.ImageGenPermanentStorageError: ex.ImageGenStorageError,
}


def test_the_tree_is_the_documented_one():
    assert issubclass(ex.ImageGenError, AirflowException)
    assert issubclass(ex.ImageGenValidationError, ValueError)
    for cls, parent in TREE.items():
        assert cls.__bases__[0] is parent, cls
        assert cls.__name__ in ex.__doc__, cls
        assert cls.__doc__, cls
    defined = {name for name, obj in vars(ex).items() if inspect.isclass(obj) and issubclass(obj, ex.ImageGenError)}
    assert defined == {cls.__name__ for cls in TREE} | {"ImageGenError"}
    assert defined <= set(ex.__all__)


@pytest.mark.parametrize(
    ("error", "retryable", "permanent"),
    [
        (ex.ImageGenValidationError("n", 0, "1 to 10"), False, True),
        (ex.ImageGenBadRequestError("m", status_code=400), False, True),
        (ex.ImageGenContentPolicyError("m", status_code=400), False, True),
        (ex.ImageGenAuthenticationError("m", status_code=401), False, True),
        (ex.ImageGenNotFoundError("m", status_code=404), False, True),
        (ex.ImageGenRateLimitError("m", status_code=429), True, False),
        (ex.ImageGenServerError("m", status_code=503), True, False),
        (ex.ImageGenConnectionError("m"), True, False),
        (ex.ImageGenTimeoutError("m"), True, False),
        (ex.ImageGenBadResponseError("m"), False, True),
        (ex.ImageGenNoImagesError("m"), False, True),
        (ex.ImageGenDownloadError("m"), False, False),
        (ex.ImageGenURLExpiredError("m", status_code=404), False, False),
        (ex.ImageGenURLRefusedError("m"), False, True),
        (ex.ImageGenImageVerificationError("m"), False, True),
        (ex.ImageGenStorageError("m"), False, False),
        (ex.ImageGenStorageError("m", permanent=True), False, True),
    ],
)
def test_flags(error, retryable, permanent):
    assert error.retryable is retryable
    assert error.permanent is permanent


ERRORS = [
    ex.ImageGenValidationError("output_compression", 50, "only with jpeg"),
    ex.ImageGenBadRequestError("bad", status_code=400, request_id="r1", code="invalid_value", param="n"),
    ex.ImageGenContentPolicyError("refused", status_code=400, code="content_policy_violation"),
    ex.ImageGenAuthenticationError("key", status_code=401),
    ex.ImageGenRateLimitError("slow", status_code=429, retry_after=7.0, request_id="r2"),
    ex.ImageGenServerError("boom", status_code=503),
    ex.ImageGenTimeoutError("late"),
    ex.ImageGenNoImagesError("none"),
    ex.ImageGenImageVerificationError("not a png"),
    ex.ImageGenStorageError("denied", permanent=True),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_pickle_and_copy(error):
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert clone.args == error.args
        assert vars(clone) == vars(error)
        assert clone.retryable is error.retryable
        assert clone.permanent is error.permanent


def test_api_error_message_carries_status_and_request_id():
    error = ex.ImageGenServerError("The image API failed: boom", status_code=502, request_id="abc")
    assert str(error) == "The image API failed: boom (HTTP 502, request id abc)"
    assert error.status_code == 502
    assert str(ex.ImageGenServerError("x", status_code=500)) == "x (HTTP 500)"


def test_validation_error_shortens_huge_values():
    error = ex.ImageGenValidationError("prompt", "p" * 50_000, "at most 32000 characters")
    assert len(str(error)) < 300
    assert "50000 characters" in str(error)
    assert error.value == "p" * 50_000  # kept whole on the object
