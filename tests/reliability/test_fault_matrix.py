"""The fault matrix: every fault the API, the network or S3 can produce, through the operator's real execute path.

Each row runs ``ImageGenToS3Operator.execute`` against the emulator and the moto S3 server and
asserts one of two end states:

* SUCCESS: every image in S3, its sha256 equal to the bytes the emulator served, and a manifest
  whose images list is exactly the objects (and the XCom);
* FAILURE: the expected exception class (``AirflowFailException`` for permanent faults, the
  provider's ``ImageGenError`` subclass otherwise) with a message naming the problem, and only the
  expected bookkeeping left under the task's prefix: never a manifest, never an ``NN.png``
  (except the "worker killed" row, where the dead try cannot clean up and no manifest vouches
  for its objects).

In every row: no multipart upload left behind, and exactly the expected number of generation
calls (nothing paid twice). The fault-matrix table in docs/reliability.md is made from ``FAULTS`` at build time.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_provider_imagegen.exceptions import (
    ImageGenAuthenticationError,
    ImageGenBadRequestError,
    ImageGenBadResponseError,
    ImageGenConnectionError,
    ImageGenContentPolicyError,
    ImageGenDownloadError,
    ImageGenError,
    ImageGenImageVerificationError,
    ImageGenNoImagesError,
    ImageGenNotFoundError,
    ImageGenRateLimitError,
    ImageGenServerError,
    ImageGenStorageError,
    ImageGenTimeoutError,
    ImageGenValidationError,
)
from airflow_provider_imagegen.version_compat import AirflowFailException
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

MAX_RETRIES = 2  # the connection's max_retries in every row: 1 call + 2 retries at most
PENDING = "_pending.json"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Fault:
    """One row: how to provoke the fault, and what the user must see afterwards."""

    id: str
    knobs: dict[str, Any] = field(default_factory=dict)  # emulator knobs
    op: dict[str, Any] = field(default_factory=dict)  # operator arguments
    conn: dict[str, Any] = field(default_factory=dict)  # imagegen connection fields / extra
    setup: str | None = None  # a named special set-up (see _special_setup)
    # outcome of the (first) try
    error: type[BaseException] | None = None  # None: success
    cause: type[BaseException] | None = None  # the ImageGenError behind an AirflowFailException
    message: str = ""  # regex the failure message must match
    left: frozenset[str] = frozenset()  # names left under the prefix after the failure
    calls: int = 1  # generation calls paid in all (both tries if ``retry``)
    images: int = 2  # images stored on success
    retry: bool = False  # after the failure, run a second try that must succeed
    min_seconds: float = 0.0  # the row must take at least this long (Retry-After honoured)
    max_seconds: float | None = None  # ... and at most this long (checked last)
    not_cause: type[BaseException] | None = None  # a more specific class the cause must not be


FAULTS = [
    Fault("baseline: no fault", images=2),
    # -- API refusals: permanent, not retried, nothing generated ------------------------------
    Fault(
        "invalid value rejected locally",
        op={"n": 11},
        error=AirflowFailException,
        cause=ImageGenValidationError,
        message=r"Invalid n",
        calls=0,
    ),
    pytest.param(
        Fault(
            "400 validation from the API",
            setup="api_rejects_request",
            error=AirflowFailException,
            cause=ImageGenBadRequestError,
            not_cause=ImageGenContentPolicyError,
            message=r"rejected the request: unknown parameter 'surprise_field'.*HTTP 400.*not retried",
        ),
    ),
    Fault(
        "400 content policy",
        op={"prompt": "something forbidden at night"},
        error=AirflowFailException,
        cause=ImageGenContentPolicyError,
        message=r"content moderation.*HTTP 400",
    ),
    Fault(
        "401 wrong API key",
        conn={"password": "not-the-key"},
        error=AirflowFailException,
        cause=ImageGenAuthenticationError,
        message=r"refused the API key.*HTTP 401",
    ),
    Fault(
        "403 key not allowed (e.g. revoked or without access to the model)",
        knobs={"server_errors": 1, "server_error_status": 403},
        error=AirflowFailException,
        cause=ImageGenAuthenticationError,
        message=r"refused the API key.*HTTP 403",
    ),
    Fault(
        "404 wrong endpoint",
        conn={"extra": {"endpoint": "/v3/no-such-model"}},
        error=AirflowFailException,
        cause=ImageGenNotFoundError,
        message=r"endpoint was not found.*HTTP 404",
    ),
    # -- transient API faults: retried inside the call with backoff ---------------------------
    Fault(
        "429 with Retry-After, then success", knobs={"rate_limit_burst": 1, "retry_after": 1}, calls=2, min_seconds=1.0
    ),
    Fault("429 without Retry-After, then success", knobs={"rate_limit_burst": 2}, calls=3),
    Fault(
        "429 exhausted",
        knobs={"rate_limit_burst": 100},
        error=ImageGenRateLimitError,
        message=r"HTTP 429",
        calls=1 + MAX_RETRIES,
    ),
    Fault("500, then success", knobs={"server_errors": 2, "server_error_status": 500}, calls=3),
    Fault("502, then success", knobs={"server_errors": 1, "server_error_status": 502}, calls=2),
    Fault("503, then success", knobs={"server_errors": 2, "server_error_status": 503}, calls=3),
    Fault(
        "503 exhausted",
        knobs={"server_errors": 100, "server_error_status": 503},
        error=ImageGenServerError,
        message=r"HTTP 503",
        calls=1 + MAX_RETRIES,
    ),
    Fault(
        "read timeout (the request was sent: maybe billed, so not retried)",
        knobs={"latency": 1.0},
        conn={"extra": {"timeout": 0.2}},
        error=AirflowFailException,
        cause=ImageGenTimeoutError,
        message=r"Timed out talking to the image API.*may have been billed: not retried",
        calls=1,
    ),
    Fault(
        "connection reset by the server mid-request",
        setup="resetting_server",
        error=ImageGenConnectionError,
        message=r"Could not talk to the image API",
        calls=0,
    ),
    Fault(
        "connection refused",
        setup="closed_port",
        error=ImageGenConnectionError,
        message=r"Could not talk to the image API.*ConnectError",
        calls=0,
    ),
    # -- 2xx answers that are not what the contract says --------------------------------------
    Fault(
        "malformed JSON",
        knobs={"response_mode": "malformed_json"},
        error=AirflowFailException,
        cause=ImageGenBadResponseError,
        message=r"body that is not JSON",
    ),
    Fault(
        "2xx without images",
        knobs={"response_mode": "no_images_key"},
        error=AirflowFailException,
        cause=ImageGenBadResponseError,
        message=r"without an 'images' list",
    ),
    Fault(
        "2xx with empty images",
        knobs={"response_mode": "empty_images"},
        error=AirflowFailException,
        cause=ImageGenNoImagesError,
        message=r"No images returned",
    ),
    # the contract's example answer is {"images": [{}]}: objects carrying their URL in "url" are fine ...
    Fault("images as objects carrying their URL", knobs={"response_mode": "objects"}, images=2),
    Fault(  # ... any other object is not, and is paid once whatever the retries
        "images as objects without a URL",
        knobs={"response_mode": "objects_without_url"},
        conn={"extra": {"max_retries": 3}},
        error=AirflowFailException,
        cause=ImageGenBadResponseError,
        message=r"images\[0\] is an object \(dict\) with keys \{b64_json: str, revised_prompt: str\} and no 'url'",
    ),
    # an answer cannot make more work than was asked: the first n distinct URLs are kept
    Fault("more image URLs than asked", knobs={"response_mode": "extra_images"}, images=2),
    Fault("every image URL repeated", knobs={"response_mode": "repeated_images"}, images=2),
    Fault("fewer images than asked, enough", knobs={"max_images": 1}, op={"n": 3, "min_images": 1}, images=1),
    Fault(
        "fewer images than asked, too few",
        knobs={"max_images": 1},
        op={"n": 3, "min_images": 3},
        error=AirflowFailException,
        cause=ImageGenNoImagesError,
        message=r"returned 1 of 3 requested image\(s\), fewer than min_images=3",
    ),
    # -- image downloads: the generation is paid, its URLs are kept for the next try -----------
    Fault(
        "image URL expired",
        knobs={"url_ttl": 0.3, "download_latency": 0.6},
        op={"upload_concurrency": 1},
        error=ImageGenDownloadError,
        message=r"404",
        left=frozenset({PENDING}),
    ),
    pytest.param(
        Fault(
            "slow body past the download deadline",
            knobs={"slow_body_seconds": 3.0},
            setup="download_deadline",
            error=ImageGenDownloadError,
            message=r"exceeded its 0.5 s deadline",
            left=frozenset({PENDING}),
            max_seconds=1.5,
        ),
    ),
    Fault(
        "truncated body",
        knobs={"truncate_bodies": True},
        error=ImageGenDownloadError,
        message=r"peer closed connection without sending complete message body|cut short",
        left=frozenset({PENDING}),
    ),
    Fault(  # a close-delimited answer (no Content-Length, no chunked framing) that ends early
        "truncated body without Content-Length",
        setup="truncated_without_length",
        error=ImageGenDownloadError,
        message=r"cut short: \d+ bytes without the png IEND chunk at the end",
        left=frozenset({PENDING}),
    ),
    Fault(
        "wrong content type",
        knobs={"image_content_type": "text/html"},
        error=AirflowFailException,
        cause=ImageGenImageVerificationError,
        message=r"text/html",
        left=frozenset({PENDING}),
    ),
    Fault(
        "bytes not in the asked format",
        knobs={"wrong_format": True},
        error=AirflowFailException,
        cause=ImageGenImageVerificationError,
        message=r"png was asked",
        left=frozenset({PENDING}),
    ),
    Fault(
        "wrong pixel size",
        knobs={"wrong_dimensions": True},
        error=AirflowFailException,
        cause=ImageGenImageVerificationError,
        message=r"1024x1024 was asked",
        left=frozenset({PENDING}),
    ),
    # -- S3 ---------------------------------------------------------------------------------------
    Fault(
        "S3 bucket missing",
        setup="missing_bucket",
        error=AirflowFailException,
        cause=ImageGenStorageError,
        message=r"S3 bucket .* does not exist",
        calls=0,
    ),
    Fault(
        "transient S3 error on upload, then a new try",
        setup="s3_upload_error",
        error=ImageGenStorageError,
        message=r"S3 upload to s3://.*/00\.png failed: InternalError",
        left=frozenset({PENDING}),
        retry=True,
    ),
    Fault(
        "S3 fails mid-way through a multipart upload (4K image), then a new try",
        knobs={"noise": True},
        op={"size": "3840x2160", "n": 1},
        setup="s3_part_error",
        error=ImageGenStorageError,
        message=r"InternalError",
        left=frozenset({PENDING}),
        images=1,
        retry=True,
    ),
    Fault(
        "S3 access denied on upload",
        setup="s3_upload_denied",
        error=AirflowFailException,
        cause=ImageGenStorageError,
        message=r"AccessDenied.*check the bucket name and the AWS connection's permissions",
        left=frozenset({PENDING}),
    ),
    pytest.param(
        Fault(
            "transient S3 error writing the manifest",
            setup="s3_manifest_error",
            error=ImageGenStorageError,
            message=r"S3 write to s3://.*/manifest\.json failed: InternalError",
            left=frozenset({PENDING}),
        ),
    ),
    Fault(  # and the next try copies the recorded URLs again without paying
        "transient S3 error writing the manifest, then a new try",
        setup="s3_manifest_error",
        error=ImageGenStorageError,
        message=r"S3 write to s3://.*/manifest\.json failed: InternalError",
        left=frozenset({PENDING}),
        retry=True,
    ),
    Fault(  # the new try aborts it at the end (the row checks that no multipart upload is left)
        "multipart upload left open by a worker killed mid-upload, then a new try",
        setup="open_upload_left",
    ),
    Fault(
        "worker killed between upload and manifest, then a new try",
        setup="kill_before_manifest",
        error=SystemExit,
        message=r"worker killed",
        left=frozenset({PENDING, "00.png", "01.png"}),
        retry=True,
    ),
]


class FailingS3:
    """The shared boto3 client, except that image uploads or the manifest write fail with ``code``."""

    def __init__(self, client: Any, *, uploads: bool, manifest: bool, code: str) -> None:
        self._client, self._uploads, self._manifest, self._code = client, uploads, manifest, code

    def _fail(self, operation: str) -> None:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": self._code, "Message": "injected by the fault matrix"}}, operation)

    def upload_fileobj(self, *args: Any, **kwargs: Any) -> Any:
        if self._uploads:
            self._fail("PutObject")
        return self._client.upload_fileobj(*args, **kwargs)

    def put_object(self, **kwargs: Any) -> Any:
        key = kwargs.get("Key", "")
        if (self._manifest and key.endswith("/" + MANIFEST)) or (self._uploads and not key.endswith(".json")):
            self._fail("PutObject")
        return self._client.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _prepare_operator(row: Fault, op: Any) -> None:
    """Row set-ups that replace one of the operator's clients."""
    if row.setup == "download_deadline":
        from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

        op.__dict__["hook"] = ImageGenHook(op.imagegen_conn_id, download_deadline=0.5)
    elif row.setup == "s3_part_error":
        _fail_second_part_once(op.s3_client)
    elif row.setup == "s3_upload_error":
        op.__dict__["s3_client"] = FailingS3(op.s3_client, uploads=True, manifest=False, code="InternalError")
    elif row.setup == "s3_upload_denied":
        op.__dict__["s3_client"] = FailingS3(op.s3_client, uploads=True, manifest=False, code="AccessDenied")
    elif row.setup == "s3_manifest_error":
        op.__dict__["s3_client"] = FailingS3(op.s3_client, uploads=False, manifest=True, code="InternalError")


def _id(row: Any) -> str:
    return (row.values[0] if hasattr(row, "values") else row).id


def _special_setup(row: Fault, *, monkeypatch, until_retry, set_imagegen_conn, request=None) -> dict[str, Any]:
    """Apply a row's special set-up (``until_retry`` patches end before the second try); returns operator arguments."""
    if row.setup == "api_rejects_request":
        # A request the hook accepts but the API does not: the contract moved under us.
        from airflow_provider_imagegen.models import ImageGenerationRequest

        real = ImageGenerationRequest.to_json
        monkeypatch.setattr(ImageGenerationRequest, "to_json", lambda self: {**real(self), "surprise_field": 1})
    elif row.setup == "closed_port":
        import socket

        with socket.socket() as sock:  # bind, then close: nothing listens on that port
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        set_imagegen_conn(host=f"http://127.0.0.1:{port}", extra={"max_retries": MAX_RETRIES})
    elif row.setup == "resetting_server":
        port = _start_resetting_server(connections=1 + MAX_RETRIES)
        set_imagegen_conn(host=f"http://127.0.0.1:{port}", extra={"max_retries": MAX_RETRIES})
    elif row.setup == "missing_bucket":
        return {"s3_bucket": "imagegen-no-such-bucket", "real_s3_client": True}
    elif row.setup == "open_upload_left":
        s3, bucket = request.getfixturevalue("s3"), request.getfixturevalue("s3_bucket")
        s3.create_multipart_upload(Bucket=bucket, Key=f"{PREFIX}/00.png")
        s3.upload_part(
            Bucket=bucket,
            Key=f"{PREFIX}/00.png",
            UploadId=multipart_uploads(s3, bucket)[0]["UploadId"],
            PartNumber=1,
            Body=b"\0" * (5 * 1024 * 1024),
        )
    elif row.setup == "truncated_without_length":
        emulator = request.getfixturevalue("emulator")
        proxy = _start_truncating_proxy(emulator)
        request.addfinalizer(lambda: proxy.__exit__(None, None, None))
        monkeypatch.setattr(emulator.state, "base_url", proxy.url)  # image URLs on the API's (proxied) origin
        set_imagegen_conn(host=proxy.url, extra={"max_retries": MAX_RETRIES})
    elif row.setup == "kill_before_manifest":
        from airflow_provider_imagegen.records import RecordStore

        def killed(*args: Any, **kwargs: Any) -> None:
            raise SystemExit("worker killed")

        until_retry.setattr(RecordStore, "commit", killed)
    return {}


def _settle(emulator: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while emulator.state.in_flight_generations and time.monotonic() < deadline:
        time.sleep(0.02)


def _names_under_prefix(s3: Any, bucket: str) -> set[str]:
    keys = list_keys(s3, bucket)
    assert all(key.startswith(PREFIX + "/") for key in keys), keys  # nothing outside the task's prefix
    return {key[len(PREFIX) + 1 :] for key in keys}


def _assert_success(xcom: list[dict[str, Any]], row: Fault, *, s3: Any, bucket: str, emulator: Any) -> None:
    assert len(xcom) == row.images
    served = served_sha256s(emulator)
    issued = set(emulator.state.sha256_by_url().values())
    for index, item in enumerate(xcom):
        assert item["key"] == f"{PREFIX}/{index:02d}.png"
        assert object_sha256(s3, bucket, item["key"]) == item["sha256"]  # S3 holds exactly ...
        assert item["sha256"] in served <= issued  # ... the bytes the emulator served
    manifest = read_json(s3, bucket, f"{PREFIX}/{MANIFEST}")
    assert manifest["images"] == xcom  # the manifest tells the truth, no more, no less
    assert (manifest["requested_images"], manifest["received_images"]) == (row.op.get("n", 2), row.images)
    assert _names_under_prefix(s3, bucket) == {MANIFEST} | {f"{i:02d}.png" for i in range(row.images)}


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("row", FAULTS, ids=[_id(row) for row in FAULTS])
def test_fault_matrix(row: Fault, make_op, set_imagegen_conn, emulator, s3, s3_bucket, monkeypatch, request):
    set_imagegen_conn(
        extra={"max_retries": MAX_RETRIES, **row.conn.get("extra", {})},
        **{k: v for k, v in row.conn.items() if k != "extra"},
    )
    op_kwargs: dict[str, Any] = {"n": 2, **row.op}
    until_retry = pytest.MonkeyPatch()
    request.addfinalizer(until_retry.undo)
    op_kwargs.update(
        _special_setup(
            row, monkeypatch=monkeypatch, until_retry=until_retry, set_imagegen_conn=set_imagegen_conn, request=request
        )
    )
    bucket = op_kwargs.get("s3_bucket", s3_bucket)
    emulator.configure(**row.knobs)
    op = make_op(**op_kwargs)
    _prepare_operator(row, op)

    started = time.monotonic()
    elapsed = 0.0
    if row.error is None:
        xcom = op.execute(make_context())
        assert time.monotonic() - started >= row.min_seconds
        _assert_success(xcom, row, s3=s3, bucket=bucket, emulator=emulator)
    else:
        with pytest.raises(row.error) as info:
            op.execute(make_context())
        elapsed = time.monotonic() - started
        failure = info.value
        assert re.search(row.message, str(failure)), str(failure)
        assert emulator.api_key not in str(failure)
        assert "not-the-key" not in str(failure)
        if row.cause is not None:  # permanent: Airflow will not retry, the cause keeps its class
            assert isinstance(failure.__cause__, row.cause), repr(failure.__cause__)
            assert row.not_cause is None or not isinstance(failure.__cause__, row.not_cause), repr(failure.__cause__)
        elif isinstance(failure, ImageGenError):  # transient: Airflow's retries may help
            assert not isinstance(failure, AirflowFailException)
            assert not getattr(failure, "permanent", False)
        if row.setup == "missing_bucket":
            assert bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
        else:
            # only bookkeeping is left: no manifest, and no image under a final key (bar a killed worker)
            assert _names_under_prefix(s3, bucket) == set(row.left)
            assert multipart_uploads(s3, bucket) == []

    if row.retry:
        until_retry.undo()  # the worker comes back: the real write_manifest, a fresh operator and clients
        xcom = make_op(**{"n": 2, **row.op}).execute(make_context(try_number=2))
        _assert_success(xcom, row, s3=s3, bucket=bucket, emulator=emulator)

    _settle(emulator)  # calls the client gave up on are recorded when the emulator finishes them
    assert generations(emulator) == row.calls  # nothing paid twice
    if row.setup != "missing_bucket":
        assert multipart_uploads(s3, bucket) == []
    if row.max_seconds is not None:
        assert elapsed <= row.max_seconds, f"the failure took {elapsed:.1f} s"


def _start_truncating_proxy(emulator: Any) -> Any:
    """The API's origin behind a proxy that answers each image download with half its bytes, closed early.

    No ``Content-Length`` and no chunked framing: the connection's close ends the body, so the
    HTTP client cannot tell that bytes are missing (the emulator's own ``truncate_bodies`` knob
    declares the full length, which the client does check). The emulator's image URLs are set to
    point at the proxy: the API's own origin.
    """
    from tests.storage.proxy import Exchange, LoopbackProxy

    def cut(answer: Exchange) -> None:
        if answer.method == "GET" and answer.status == 200 and answer.path.startswith("/images/"):
            answer.body = answer.body[: len(answer.body) // 2]
            answer.close_delimited = True

    return LoopbackProxy(emulator.base_url.removeprefix("http://"), on_response=cut).__enter__()


def _start_resetting_server(connections: int) -> int:
    """A loopback server that reads each request and answers with a TCP reset (bounded, self-stopping)."""
    import socket
    import struct
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(connections)
    listener.settimeout(20)

    def serve() -> None:
        with listener:
            for _ in range(connections):
                try:
                    conn, _addr = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    # linger 0: close() sends RST instead of FIN, as a crashing proxy would
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def _fail_second_part_once(client: Any) -> None:
    """Make the second UploadPart of the next multipart upload fail with a 500, once.

    A real mid-upload fault: boto3 has already sent a part when it happens, so the upload must
    be aborted (the row checks that no multipart upload is left) and nothing may appear.
    """
    from botocore.exceptions import ClientError

    parts = [0]

    def before_send(**kwargs: Any) -> None:
        parts[0] += 1
        if parts[0] == 2:
            client.meta.events.unregister("before-send.s3.UploadPart", before_send)
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected mid-upload"}}, "UploadPart")

    client.meta.events.register("before-send.s3.UploadPart", before_send)
