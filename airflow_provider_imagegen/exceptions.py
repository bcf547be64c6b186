"""Every way a call to the image API, or a copy of its images, can fail.

The whole hierarchy, one place. The mark at the end of a line says whether Airflow retries the
task for that error: ``[permanent]`` classes (``permanent = True``, set on the class) fail it at
once with ``AirflowFailException``, ``[retried]`` ones leave it to the task's ``retries``::

    ImageGenError (AirflowException)                any other failure                           [retried]
    ├── ImageGenValidationError (also ValueError)   bad input, caught before any network call  [permanent]
    ├── ImageGenAPIError                            the API answered with an HTTP error
    │   ├── ImageGenBadRequestError                 400 / 422: the API rejected the request    [permanent]
    │   │   └── ImageGenContentPolicyError          the prompt was refused by moderation       [permanent]
    │   ├── ImageGenAuthenticationError             401 / 403: missing, wrong or revoked key   [permanent]
    │   ├── ImageGenNotFoundError                   404: wrong base URL or endpoint            [permanent]
    │   ├── ImageGenRateLimitError                  429 (keeps Retry-After)                    [retried]
    │   └── ImageGenServerError                     408, 409, 5xx                              [retried]
    ├── ImageGenConnectionError                     connect failure, reset, protocol error     [retried]
    │   └── ImageGenTimeoutError                    connect timeout [retried]; read timeout (``request_sent``):
    │                                               the request was sent and may be billed [permanent]
    ├── ImageGenBadResponseError                    2xx whose body is not {"images": [URL, ...]}  [permanent]
    │   └── ImageGenNoImagesError                   2xx with an empty image list, or fewer than min_images
    ├── ImageGenDownloadError                       an image URL could not be fetched (cut short, too slow...)
    │   ├── ImageGenURLRefusedError                 the URL policy refused it (scheme, internal address) [permanent]
    │   ├── ImageGenURLExpiredError                 the image host answered 403 / 404 / 410: expired or refused
    │   │   └── ImageGenPaidURLsExpiredError        ... URLs already paid for, after a failed download or a
    │   │                                           second generation: not paying again         [permanent]
    │   └── ImageGenImageVerificationError          the bytes are not the image that was asked for  [permanent]
    └── ImageGenStorageError                        S3 failed or lost an upload                  [retried]
        ├── ImageGenPermanentStorageError           a missing bucket, denied access, arguments S3 refuses,
        │                                           a record that cannot be read                [permanent]
        └── ImageGenWriteConflictError              another task wrote the same explicit prefix at once

An unmarked class has its parent's mark. ``permanent`` says that retrying can never help (retries
of such errors only cost money); ``retryable`` says whether the hook retries the call itself (with
backoff). Two kinds of error decide per instance, both in this module: a timeout by its
``request_sent``, and a plain ``ImageGenError`` standing for several prompts' failures (permanent
only when every one of them is: :func:`several_failures`) or for a trigger event of a class this
version does not know (:func:`error_from_event`). Error texts never contain the API key.

Failures of other libraries are mapped onto this tree here and nowhere else:
:func:`error_from_response` (an HTTP error status), :func:`error_from_transport` (httpx transport
failures, of the API call or an image download) and :func:`error_from_s3` (botocore errors).
:func:`event_from_error` / :func:`error_from_event` carry an error through a trigger event as JSON,
keeping its class and whether it is permanent.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow.exceptions import AirflowException

if TYPE_CHECKING:
    from collections.abc import Iterable

    import httpx

__all__ = [
    "ImageGenAPIError",
    "ImageGenAuthenticationError",
    "ImageGenBadRequestError",
    "ImageGenBadResponseError",
    "ImageGenConnectionError",
    "ImageGenContentPolicyError",
    "ImageGenDownloadError",
    "ImageGenError",
    "ImageGenImageVerificationError",
    "ImageGenNoImagesError",
    "ImageGenNotFoundError",
    "ImageGenPaidURLsExpiredError",
    "ImageGenPermanentStorageError",
    "ImageGenRateLimitError",
    "ImageGenServerError",
    "ImageGenStorageError",
    "ImageGenTimeoutError",
    "ImageGenURLExpiredError",
    "ImageGenURLRefusedError",
    "ImageGenValidationError",
    "ImageGenWriteConflictError",
    "error_from_event",
    "error_from_response",
    "error_from_s3",
    "error_from_transport",
    "event_from_error",
    "scrub",
    "scrub_header_value",
    "several_failures",
]

_MAX_MESSAGE_CHARS = 500
# Where a 400 is a refusal of the prompt. Not the bare word "moderation": it is also a request
# field, so an ordinary validation error about it (or a list of allowed fields) would match.
_CONTENT_POLICY_CODES = ("content_policy", "policy_violation", "moderation_blocked", "safety")
_CONTENT_POLICY_PHRASES = (
    "content policy",
    "content_policy",
    "safety system",
    "policy violation",
    "by moderation",
    "moderation system",
)
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "cf-ray")
MAX_HEADER_VALUE_CHARS = 128


class ImageGenError(AirflowException):
    """Base class of every error raised by this provider; retried by Airflow unless a subclass says otherwise."""

    retryable: bool = False
    """The hook retries the call itself, with backoff."""
    permanent: bool = False
    """Retrying cannot help: the operator fails the task with ``AirflowFailException`` (no Airflow retry)."""
    answered: bool = False
    """The API answered the generation call with a 2xx: it was paid, whatever went wrong after."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other constructor arguments than ``args``: rebuild from the message and
        # restore the attributes, so that every error survives pickling (multiprocessing, executors).
        return _rebuild, (type(self), self.message), self.__dict__


def _rebuild(cls: type[ImageGenError], message: str) -> ImageGenError:
    """An instance of ``cls`` with ``message``, whatever arguments its constructor takes."""
    error = cls.__new__(cls)
    ImageGenError.__init__(error, message)
    return error


class ImageGenValidationError(ImageGenError, ValueError):
    """A request parameter is outside the API contract; raised before any network call."""

    permanent = True

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = f"{shown[:60]}... ({len(value) if hasattr(value, '__len__') else '?'} characters)"
        super().__init__(f"Invalid {field}: {shown}; allowed: {allowed}")
        self.field = field
        self.value = value
        self.allowed = allowed


class ImageGenAPIError(ImageGenError):
    """The API answered with an HTTP error status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        request_id: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        suffix = f" (HTTP {status_code}" + (f", request id {request_id}" if request_id else "") + ")"
        super().__init__(message + suffix)
        self.status_code = status_code  # type: ignore[assignment]  # AirflowException types it HTTPStatus
        self.request_id = request_id
        self.code = code
        self.param = param


class ImageGenBadRequestError(ImageGenAPIError):
    """400 or 422: the API rejected the request as invalid."""

    permanent = True


class ImageGenContentPolicyError(ImageGenBadRequestError):
    """The prompt was refused by the API's content moderation."""


class ImageGenAuthenticationError(ImageGenAPIError):
    """401 or 403: the API key is missing, wrong, revoked or not allowed to use this model."""

    permanent = True


class ImageGenNotFoundError(ImageGenAPIError):
    """404 from the generation endpoint: the connection's base URL or endpoint is wrong."""

    permanent = True


class ImageGenRateLimitError(ImageGenAPIError):
    """429: too many requests. ``retry_after`` holds the server's wait in seconds, if it sent one."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ImageGenServerError(ImageGenAPIError):
    """408, 409 or 5xx: a fault on the API's side that may pass."""

    retryable = True


class ImageGenConnectionError(ImageGenError):
    """The API could not be reached, or the connection broke mid-call."""

    retryable = True


class ImageGenTimeoutError(ImageGenConnectionError):
    """A connect, read or total deadline was exceeded.

    A timeout before the request went out is retried, by the hook and by Airflow. One after it
    went out (``request_sent``: a read timeout) is permanent and not retried at all: the API may
    be generating, and billing, still, and a retry would pay again.

    :param message: what timed out.
    :param request_sent: the request was sent before the deadline passed.
    """

    request_sent: bool = False  # the class's answer for instances rebuilt without it

    def __init__(self, message: str, *, request_sent: bool = False) -> None:
        super().__init__(message)
        self.request_sent = request_sent

    @property
    def retryable(self) -> bool:  # type: ignore[override]  # a class attribute elsewhere
        """Retried by the hook only while the request had not gone out."""
        return not self.request_sent

    @property
    def permanent(self) -> bool:  # type: ignore[override]  # a class attribute elsewhere
        """Permanent once the request went out: it may have been billed."""
        return self.request_sent


class ImageGenBadResponseError(ImageGenError):
    """A 2xx answer whose body is not ``{"images": [...]}`` with URL strings or ``{"url": URL}`` objects.

    Permanent: the API answered success, so the call may well have been billed, and a retry would
    pay again for an answer that broke the contract the same way. Counted as a paid call.
    """

    permanent = True
    answered = True


class ImageGenNoImagesError(ImageGenBadResponseError):
    """A 2xx answer with an empty image list, or with fewer images than ``min_images``."""


class ImageGenDownloadError(ImageGenError):
    """An image URL returned by the API could not be fetched (cut short, too slow, connection lost...)."""


class ImageGenURLRefusedError(ImageGenDownloadError):
    """The URL policy refused an image URL or redirect: not https, or a host on an internal address.

    Permanent: the same answer would be refused again, and a retry would pay for it first.
    """

    permanent = True


class ImageGenURLExpiredError(ImageGenDownloadError):
    """The image host answered 403, 404 or 410: the short-lived URL expired or was refused.

    Retried: a later try generates new URLs once, when S3 (not the image host) failed meanwhile.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code  # type: ignore[assignment]  # AirflowException types it HTTPStatus


class ImageGenPaidURLsExpiredError(ImageGenURLExpiredError):
    """The URLs of images this task instance already paid for expired, and it will not pay again.

    Permanent: an earlier try already failed downloading them, or they were paid for twice. Deleting
    the prompt's ``_pending.json`` lets the task generate anew.
    """

    permanent = True


class ImageGenImageVerificationError(ImageGenDownloadError):
    """The downloaded bytes are not the image that was asked for (format, size, content type, end marker).

    Permanent: the API served these bytes for this request; paying for a new generation on every
    retry would not make it serve the right ones.
    """

    permanent = True


class ImageGenStorageError(ImageGenError):
    """S3 failed or lost an upload, or a record; nothing is left under the final key. Retried.

    ``ImageGenStorageError(message, permanent=True)``, the spelling of the versions before
    :class:`ImageGenPermanentStorageError`, builds one of those: whether Airflow retries is the class's
    to say.
    """

    def __new__(cls, *args: Any, permanent: bool = False, **kwargs: Any) -> ImageGenStorageError:
        if permanent and not issubclass(cls, ImageGenPermanentStorageError):
            cls = ImageGenPermanentStorageError
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)


class ImageGenPermanentStorageError(ImageGenStorageError):
    """S3 refused what a retry would ask again: a missing bucket, denied access or credentials, a KMS
    key that is gone, arguments S3 rejects; or a record under the prefix that cannot be read.

    Permanent: the bucket, the permissions, the arguments or the record must be fixed first.
    """

    permanent = True


class ImageGenWriteConflictError(ImageGenStorageError):
    """Another task wrote the same explicit ``s3_key_prefix`` while this one was copying.

    Detected right before the commit (an image changed under this task, or a manifest appeared);
    this try then leaves the objects as they are (they may be the other task's) and writes no
    manifest. Retryable: once the other task is done, a retry reuses or replaces its images.
    """


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import datetime, timezone
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # a field too large for a date, e.g. "0:3000000000"
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def scrub(text: str, secret: str | None) -> str:
    """``text`` without ``secret``, also in the escaped forms a library may print it in (``repr``, bytes)."""
    if not secret:
        return text
    forms = {secret, secret.strip(), repr(secret)[1:-1], repr(secret.encode("utf-8", "backslashreplace"))[2:-1]}
    for form in sorted((form for form in forms if len(form) >= 4), key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def scrub_header_value(value: str | None, secret: str | None = None) -> str | None:
    """A value the API echoed in a header (a request id), safe to log and record: no key, printable, short.

    :param value: the header value, or None.
    :param secret: the API key, removed should the server echo it.
    :return: None when nothing printable is left.
    """
    if value is None:
        return None
    value = scrub(value, secret)
    value = "".join(char for char in value if char.isascii() and char.isprintable()).strip()
    if len(value) > MAX_HEADER_VALUE_CHARS:
        value = value[: MAX_HEADER_VALUE_CHARS - 3] + "..."
    return value or None


def request_id_of(headers: httpx.Headers, secret: str | None = None) -> str | None:
    """The API's request id from the first header that carries one, scrubbed (see :func:`scrub_header_value`)."""
    return scrub_header_value(next((headers[h] for h in _REQUEST_ID_HEADERS if h in headers), None), secret)


def _error_details(response: httpx.Response) -> tuple[str, str | None, str | None]:
    """Message, code and param of an error body, whether it is JSON (of several shapes) or text."""
    text = response.text.strip()
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or error.get("msg") or json.dumps(error)
            code, param = error.get("code") or error.get("type"), error.get("param")
            return str(message), (str(code) if code else None), (str(param) if param else None)
        if isinstance(error, str):
            return error, None, None
    if text:
        return text, None, None
    return response.reason_phrase or "no error message", None, None


def error_from_response(response: httpx.Response, *, secret: str | None = None) -> ImageGenAPIError:
    """Map an HTTP error response from the generation endpoint onto the exception hierarchy.

    :param response: a response with a 4xx/5xx status; its body must have been read.
    :param secret: the API key, scrubbed from the message in case the server echoes it.
    """
    message, code, param = _error_details(response)
    message = scrub(message, secret)
    code = scrub_header_value(code, secret)
    param = scrub_header_value(param, secret)
    message = " ".join(message.split())[:_MAX_MESSAGE_CHARS]
    status = response.status_code
    request_id = request_id_of(response.headers, secret)
    kwargs: dict[str, Any] = {"status_code": status, "request_id": request_id, "code": code, "param": param}
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return ImageGenRateLimitError(f"Rate limited by the image API: {message}", retry_after=retry_after, **kwargs)
    if status in (401, 403):
        return ImageGenAuthenticationError(f"The image API refused the API key: {message}", **kwargs)
    if status == 404:
        return ImageGenNotFoundError(
            f"The image API endpoint was not found; check the connection's Base URL and endpoint: {message}",
            **kwargs,
        )
    if status in (408, 409) or status >= 500:
        return ImageGenServerError(f"The image API failed: {message}", **kwargs)
    if any(marker in (code or "").lower() for marker in _CONTENT_POLICY_CODES) or any(
        phrase in message.lower() for phrase in _CONTENT_POLICY_PHRASES
    ):
        return ImageGenContentPolicyError(f"The prompt was refused by content moderation: {message}", **kwargs)
    return ImageGenBadRequestError(f"The image API rejected the request: {message}", **kwargs)


def error_from_transport(
    error: httpx.HTTPError,
    *,
    secret: str | None = None,
    download: bool = False,
    bytes_read: int | None = None,
    past_deadline: float | None = None,
) -> ImageGenError:
    """An httpx failure as one of ours; ``secret`` is scrubbed should a transport echo it.

    :param error: what httpx raised (connect, read, protocol, timeout or decoding error).
    :param secret: the API key, never shown.
    :param download: the failure happened while fetching an image (an :class:`ImageGenDownloadError`).
    :param bytes_read: image bytes received before it failed (said in the message).
    :param past_deadline: the download's deadline in seconds, when it had passed (the cause, then).
    """
    import httpx

    detail = scrub(f"{type(error).__name__}: {error}", secret)
    if download and past_deadline is not None:
        return ImageGenDownloadError(f"Image download exceeded its {past_deadline:g} s deadline")
    if download and bytes_read is not None:
        return ImageGenDownloadError(f"Image download failed after {bytes_read} bytes: {detail}")
    if download:
        return ImageGenDownloadError(f"Image download failed: {detail}")
    if isinstance(error, httpx.ReadTimeout):
        # the request went out: the API may be generating (and billing) still, and a retry would pay again
        return ImageGenTimeoutError(
            f"Timed out talking to the image API: no answer within the connection's read timeout ({detail}). "
            "The request was sent, so it may have been billed: not retried (raise the connection's timeout "
            "if generations take longer)",
            request_sent=True,
        )
    if isinstance(error, httpx.TimeoutException):
        return ImageGenTimeoutError(f"Timed out talking to the image API: {detail}")
    return ImageGenConnectionError(f"Could not talk to the image API: {detail}")


_PERMANENT_S3_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidBucketName",
        "AccountProblem",
        "KMS.NotFoundException",
        "KMS.DisabledException",
        "403",
        # arguments S3 refuses: a retry sends the same ones
        "InvalidArgument",
        "InvalidStorageClass",
        "InvalidTag",
        "KeyTooLong",
        "InvalidEncryptionAlgorithmError",
        "ParamValidationError",
    }
)
S3_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def s3_error_code(error: BaseException) -> str:
    """The S3 error code of a botocore error (``NoSuchKey``, ``AccessDenied``...); "" if it has none."""
    response = getattr(error, "response", None) or getattr(getattr(error, "last_exception", None), "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def error_from_s3(error: BaseException, bucket: str, key: str, *, action: str = "upload to") -> ImageGenStorageError:
    """An S3 failure as :class:`ImageGenStorageError`, or :class:`ImageGenPermanentStorageError` when
    retrying cannot help (the codes of ``_PERMANENT_S3_CODES``).

    :param error: what boto3 raised.
    :param bucket: the bucket.
    :param key: the object key.
    :param action: what was being done, for the message (``upload to``, ``read of``...).
    """
    code = s3_error_code(error) or ("ParamValidationError" if type(error).__name__ == "ParamValidationError" else "")
    if code == "NoSuchBucket":
        return ImageGenPermanentStorageError(
            f"S3 bucket {bucket!r} does not exist (check s3_bucket and the AWS connection)"
        )
    message = f"S3 {action} s3://{bucket}/{key} failed: {code or type(error).__name__}: {error}"
    if code in _PERMANENT_S3_CODES:
        return ImageGenPermanentStorageError(f"{message} (check the bucket name and the AWS connection's permissions)")
    return ImageGenStorageError(message)


def several_failures(message: str, failures: Iterable[BaseException]) -> ImageGenError:
    """One error for several prompts' failures: permanent only when every one of them is.

    :param message: names every failed prompt.
    :param failures: what each failed prompt raised.
    """
    error = ImageGenError(message)
    error.permanent = all(getattr(failure, "permanent", False) for failure in failures)
    return error


_EVENT_ATTRIBUTES = ("status_code", "request_id", "code", "retry_after", "request_sent")


def event_from_error(error: ImageGenError) -> dict[str, Any]:
    """An error as a JSON-safe trigger event entry that keeps its class, the attributes its permanence
    depends on, and (for a reader of the event) whether it is permanent."""
    entry: dict[str, Any] = {
        "status": "error",
        "error_class": type(error).__name__,
        "message": str(error),
        "permanent": bool(error.permanent),
    }
    for name in _EVENT_ATTRIBUTES:
        value = error.__dict__.get(name)
        if isinstance(value, (str, int, float)):
            entry[name] = value
    return entry


def error_from_event(outcome: dict[str, Any]) -> ImageGenError:
    """Rebuild the error of an event entry as an instance of its original class, whose permanence it
    has again; an unknown class becomes the base class, permanent as the event says."""
    cls = globals().get(str(outcome.get("error_class")))
    message = str(outcome.get("message") or "the trigger reported an error")
    if not (isinstance(cls, type) and issubclass(cls, ImageGenError)):
        error = ImageGenError(message)
        error.permanent = bool(outcome.get("permanent", False))
        return error
    error = _rebuild(cls, message)
    for name in _EVENT_ATTRIBUTES:
        if name in outcome:
            setattr(error, name, outcome[name])
    return error
