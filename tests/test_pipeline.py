"""One prompt's life in a try (``pipeline``), with every part faked in the test: no server, no thread.

``PromptPipeline`` takes its parts as arguments: the hook (API calls), the record store (S3
records), the copier (one URL → one object), the runner (threads and bounds) and the tally. Here
each is a small class that does what its real one promises and records what it was asked, so a
test reads as the protocol: reuse a verified manifest, else copy recorded URLs, else pay once;
record the URLs while copying; commit the manifest last; undo what no manifest will vouch for.

The last section puts the real record store and copier together on moto in-process (``mock_aws``),
with only the hook faked: a re-run pays nothing, and a changed object is not reused.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_imagegen.exceptions import (
    ImageGenAuthenticationError,
    ImageGenBadResponseError,
    ImageGenContentPolicyError,
    ImageGenDownloadError,
    ImageGenError,
    ImageGenImageVerificationError,
    ImageGenNoImagesError,
    ImageGenPaidURLsExpiredError,
    ImageGenRateLimitError,
    ImageGenServerError,
    ImageGenStorageError,
    ImageGenTimeoutError,
    ImageGenURLExpiredError,
    ImageGenWriteConflictError,
    event_from_error,
)
from airflow_provider_imagegen.metrics import TryTally
from airflow_provider_imagegen.models import CopiedImage, ImageGenerationRequest, ImageGenerationResult
from airflow_provider_imagegen.pipeline import PromptPipeline, open_pipeline
from airflow_provider_imagegen.plan import Plan, PromptJob, TaskIdentity
from airflow_provider_imagegen.records import Generation, PendingRecord, request_fingerprint
from airflow_provider_imagegen.version_compat import TaskDeferred
from tests.support import RecordingLog, RecordingStats, image_bytes

BUCKET = "pipeline"
PUBLIC_URL = "https://api.test/v3/gpt-image-2-text-to-image"
TASK = TaskIdentity(dag_id="d", run_id="r", task_id="t", try_number=1)
JOB = PromptJob(0, ImageGenerationRequest(prompt="a lighthouse at dawn", n=2), "imagegen/d/r/t")
URLS = ["https://cdn.test/a.png", "https://cdn.test/b.png"]


def _plan(*jobs: PromptJob, min_images: int = 1) -> Plan:
    jobs = jobs or (JOB,)
    return Plan(jobs=jobs, bucket=BUCKET, batch=len(jobs) > 1, min_images=min_images, task=TASK)


def _image(job: PromptJob, index: int, etag: str = "") -> CopiedImage:
    return CopiedImage(
        index=index,
        bucket=BUCKET,
        key=job.image_key(index),
        content_type="image/png",
        size_bytes=1000 + index,
        sha256=hashlib.sha256(f"{job.prefix}/{index}".encode()).hexdigest(),
        width=1024,
        height=1024,
        prompt_index=job.prompt_index,
        etag=etag,
    )


# -- the fake parts ---------------------------------------------------------------------------------


class FakeHook:
    """Answers ``send`` from a script: a list of URLs, or an error to raise."""

    def __init__(self, *answers: list[str] | BaseException, request_id: str = "req-1", elapsed: float = 1.5) -> None:
        self.answers = list(answers)
        self.sent: list[ImageGenerationRequest] = []
        self.request_id = request_id
        self.elapsed = elapsed
        self.settings = SimpleNamespace(public_url=PUBLIC_URL)
        self.closed = False

    def send(self, request: ImageGenerationRequest) -> ImageGenerationResult:
        self.sent.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return ImageGenerationResult(
            image_urls=list(answer), request=request, elapsed=self.elapsed, request_id=self.request_id
        )

    def close(self) -> None:
        self.closed = True


class FakeStore:
    """The record store's protocol in memory: what an earlier try left, and what this one wrote."""

    def __init__(
        self,
        *,
        reusable: dict[str, list[CopiedImage]] | None = None,
        pending: dict[str, PendingRecord] | None = None,
        commit_error: BaseException | None = None,
    ) -> None:
        self.reusable = reusable or {}
        self.pending_records = pending or {}
        self.commit_error = commit_error
        self.recorded: list[dict[str, Any]] = []
        self.committed: list[tuple[PromptJob, Any, bool]] = []
        self.discarded: list[CopiedImage] = []
        self.events: list[str] = []

    def reuse(self, job: PromptJob) -> list[CopiedImage] | None:
        return self.reusable.get(job.prefix)

    def pending(self, job: PromptJob) -> PendingRecord | None:
        return self.pending_records.get(job.prefix)

    def record_pending(
        self,
        job: PromptJob,
        urls: Any,
        generation: Generation,
        *,
        generations: int = 1,
        download_failed: bool = False,
        try_number: int | None = None,
    ) -> None:
        self.events.append("record")
        self.recorded.append(
            {
                "prefix": job.prefix,
                "urls": list(urls),
                "generation": generation,
                "generations": generations,
                "download_failed": download_failed,
                "try_number": try_number,
            }
        )

    def commit(self, job: PromptJob, manifest: Any, *, shared: bool = False) -> None:
        self.events.append("commit")
        if self.commit_error is not None:
            raise self.commit_error
        self.committed.append((job, manifest, shared))

    def discard(self, images: Any) -> None:
        self.discarded.extend(images)

    def drop_committed(self) -> None:
        self.events.append("drop_committed")


class FakeCopier:
    """Copies a URL into a "stored" image with an ETag of its own; ``failures`` maps a URL to its error."""

    def __init__(self, failures: dict[str, BaseException] | None = None) -> None:
        self.failures = failures or {}
        self.copied: list[tuple[str, str]] = []

    def copy(self, url: str, key: str, index: int, job: PromptJob) -> CopiedImage:
        if url in self.failures:
            raise self.failures[url]
        self.copied.append((url, key))
        return _image(job, index, etag=f"etag-{index}-{hashlib.md5(url.encode()).hexdigest()[:8]}")


class SequentialRunner:
    """The runner's promises without threads: jobs in order, all-or-nothing copies, background work
    done when it is waited for."""

    def __init__(self) -> None:
        self.generation_turns: list[int | None] = []
        self.copy_slots = 0

    def run(self, jobs: Any, work: Any) -> list[Any]:
        return [result for job in jobs for result in work(job)]

    @contextmanager
    def generation_slot(self, turn: int | None = None) -> Any:
        self.generation_turns.append(turn)
        yield

    @contextmanager
    def copy_slot(self) -> Any:
        self.copy_slots += 1
        yield

    def copy_all(self, count: int, copy: Any, *, undo: Any, progress: Any = None) -> list[Any]:
        done: list[Any] = []
        for index in range(count):
            try:
                done.append(copy(index))
            except BaseException:
                undo(done)
                raise
            if progress is not None:
                progress(len(done), done[-1])
        return done

    def start_in_background(self, function: Any, *args: Any, **kwargs: Any) -> Future[Any]:
        return _WhenWaitedFor(function, *args, **kwargs)


class _WhenWaitedFor(Future):
    """Background work that runs only once it is waited for: as late as a real thread may finish it."""

    def __init__(self, function: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._call: Any = (function, args, kwargs)

    def _run(self) -> None:
        if self._call is not None:
            function, args, kwargs = self._call
            self._call = None
            try:
                self.set_result(function(*args, **kwargs))
            except BaseException as error:
                self.set_exception(error)

    def result(self, timeout: float | None = None) -> Any:
        self._run()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._run()
        return super().exception(timeout)


def _pipeline(
    hook: FakeHook | None = None,
    store: FakeStore | None = None,
    copier: FakeCopier | None = None,
    plan: Plan | None = None,
) -> tuple[PromptPipeline, SimpleNamespace]:
    log = RecordingLog()
    tally = TryTally(log)
    tally._stats = RecordingStats()
    parts = SimpleNamespace(
        hook=hook or FakeHook(URLS),
        store=store or FakeStore(),
        copier=copier or FakeCopier(),
        runner=SequentialRunner(),
        log=log,
        tally=tally,
    )
    pipeline = PromptPipeline(
        plan=plan or _plan(),
        hook=parts.hook,
        store=parts.store,
        copier=parts.copier,
        runner=parts.runner,
        log=log,
        tally=tally,
    )
    return pipeline, parts


def _pending(urls: list[str] = URLS, **fields: Any) -> PendingRecord:
    return PendingRecord(
        image_urls=tuple(urls),
        request_fingerprint=request_fingerprint(JOB.request),
        generation=Generation(generated_at="2026-01-01T00:00:00.000+00:00", generation_seconds=2.5, request_id="req-0"),
        **fields,
    )


# -- reuse before paying ---------------------------------------------------------------------------


def test_a_rerun_with_a_complete_manifest_makes_no_api_call():
    stored = [_image(JOB, 0, "e0"), _image(JOB, 1, "e1")]
    pipeline, parts = _pipeline(store=FakeStore(reusable={JOB.prefix: stored}))
    assert pipeline.run() == stored
    assert parts.hook.sent == []
    assert parts.copier.copied == []
    assert parts.store.recorded == []
    assert parts.store.committed == []
    figures = parts.tally.figures
    assert (figures.generation_calls, figures.images_reused, figures.images_stored) == (0, 2, 0)
    assert "0 paid generation call(s)" in parts.tally.summary(1)


def test_recorded_urls_are_copied_without_a_new_call():
    pending = _pending()
    pipeline, parts = _pipeline(store=FakeStore(pending={JOB.prefix: pending}))
    images = pipeline.run()
    assert parts.hook.sent == []
    assert parts.copier.copied == [(URLS[0], JOB.image_key(0)), (URLS[1], JOB.image_key(1))]
    assert parts.store.recorded == []  # the record is the earlier try's
    ((job, manifest, shared),) = parts.store.committed
    assert job == JOB
    assert not shared
    assert manifest.generation == pending.generation  # what the paid call said of itself, kept
    assert list(manifest.images) == images
    assert manifest.cost["generation_calls"] == 1
    assert parts.tally.figures.generation_calls == 0  # paid by the earlier try


def test_reuse_all_says_which_prompts_are_left_to_generate():
    other = PromptJob(1, ImageGenerationRequest(prompt="a harbour", n=1), "imagegen/d/r/t/001")
    stored = [_image(JOB, 0)]
    pipeline, parts = _pipeline(store=FakeStore(reusable={JOB.prefix: stored}), plan=_plan(JOB, other))
    assert pipeline.reuse_all() == ([], [other])
    assert parts.hook.sent == []

    pipeline, parts = _pipeline(store=FakeStore(reusable={JOB.prefix: stored}), plan=_plan(JOB))
    assert pipeline.reuse_all() == (stored, [])


# -- a generation, recorded and committed ----------------------------------------------------------


def test_a_generation_is_recorded_then_copied_then_committed_with_its_etags():
    pipeline, parts = _pipeline(hook=FakeHook(URLS, request_id="req-42", elapsed=3.25))
    images = pipeline.run()
    assert len(parts.hook.sent) == 1
    assert parts.hook.sent[0] == JOB.request
    assert parts.runner.generation_turns == [JOB.prompt_index]
    assert parts.store.events == ["record", "commit"]  # the manifest only once the URLs are recorded

    (record,) = parts.store.recorded
    assert (record["urls"], record["generations"], record["download_failed"]) == (URLS, 1, False)
    assert record["generation"].request_id == "req-42"
    assert record["generation"].generation_seconds == 3.25

    ((_, manifest, _),) = parts.store.committed
    assert manifest.generation == record["generation"]  # the same generation in both records
    assert list(manifest.images) == images
    etags = [image.etag for image in images]
    assert all(etags)
    assert etags == [image.etag for image in manifest.images]
    assert manifest.to_json()["stored_etags"] == {image.key: image.etag for image in images}
    assert manifest.to_json()["api_request_id"] == "req-42"
    assert manifest.endpoint == PUBLIC_URL
    assert manifest.task == TASK.record(0)
    assert manifest.cost == {
        "generation_calls": 1,
        "images_requested": 2,
        "images_received": 2,
        "images_stored": 2,
        "bytes_stored": sum(image.size_bytes for image in images),
        "api_seconds": 3.25,
    }
    figures = parts.tally.figures
    assert (figures.generation_calls, figures.images_stored, figures.images_received) == (1, 2, 2)


def test_duplicate_and_surplus_urls_make_no_extra_work():
    pipeline, parts = _pipeline(hook=FakeHook([URLS[0], URLS[0], URLS[1], "https://cdn.test/c.png"]))
    assert len(pipeline.run()) == 2
    assert [url for url, _ in parts.copier.copied] == URLS
    assert parts.store.recorded[0]["urls"] == URLS


def test_fewer_images_than_min_images_is_permanent_and_paid():
    pipeline, parts = _pipeline(hook=FakeHook(URLS[:1]), plan=_plan(min_images=2))
    with pytest.raises(ImageGenNoImagesError) as caught:
        pipeline.run()
    assert caught.value.permanent
    assert parts.copier.copied == []
    assert parts.tally.figures.generation_calls == 1


# -- errors: what is retried, what is recorded, what is undone --------------------------------------

# the documented tree (exceptions.py): whether Airflow may retry each error the API call can end in
API_ERRORS = [
    pytest.param(ImageGenContentPolicyError("refused", status_code=400), True, id="content-policy"),
    pytest.param(ImageGenAuthenticationError("bad key", status_code=401), True, id="auth"),
    pytest.param(ImageGenBadResponseError("not JSON"), True, id="bad-2xx"),
    pytest.param(ImageGenTimeoutError("read timed out", request_sent=True), True, id="read-timeout"),
    pytest.param(ImageGenTimeoutError("connect timed out"), False, id="connect-timeout"),
    pytest.param(ImageGenRateLimitError("slow down", status_code=429), False, id="429"),
    pytest.param(ImageGenServerError("oops", status_code=503), False, id="503"),
]


@pytest.mark.parametrize(("error", "permanent"), API_ERRORS)
def test_a_failed_call_is_raised_as_it_is_once_and_nothing_is_recorded(error, permanent):
    pipeline, parts = _pipeline(hook=FakeHook(error, URLS))
    with pytest.raises(type(error)) as caught:
        pipeline.run()
    assert caught.value is error
    assert caught.value.permanent is permanent
    if permanent:
        assert not caught.value.retryable
    assert len(parts.hook.sent) == 1  # the pipeline never calls again: retries are the hook's and Airflow's
    assert parts.store.recorded == []
    assert parts.copier.copied == []
    figures = parts.tally.figures
    paid = isinstance(error, ImageGenBadResponseError)  # a 2xx was answered: billed all the same
    assert (figures.generation_calls, figures.failed_calls) == ((1, 0) if paid else (0, 1))


def test_a_permanent_download_failure_undoes_the_copies_and_keeps_the_record():
    refused = ImageGenImageVerificationError("Image is 100x100 pixels, but 1024x1024 was asked for")
    pipeline, parts = _pipeline(copier=FakeCopier({URLS[1]: refused}))
    with pytest.raises(ImageGenImageVerificationError) as caught:
        pipeline.run()
    assert caught.value.permanent
    assert [image.key for image in parts.store.discarded] == [JOB.image_key(0)]  # the copy that succeeded
    assert parts.store.committed == []
    assert [record["download_failed"] for record in parts.store.recorded] == [False]  # not a host failure


def test_a_failed_download_from_the_image_host_is_remembered_with_the_urls():
    cut = ImageGenDownloadError("Image download failed after 10 bytes")
    pipeline, parts = _pipeline(copier=FakeCopier({URLS[0]: cut}))
    with pytest.raises(ImageGenDownloadError):
        pipeline.run()
    assert not cut.permanent
    assert [(r["urls"], r["download_failed"]) for r in parts.store.recorded] == [(URLS, False), (URLS, True)]
    assert parts.store.discarded == []
    assert parts.store.committed == []


def test_a_failed_commit_removes_the_copied_images():
    failure = ImageGenStorageError("S3 write to manifest failed: SlowDown")
    pipeline, parts = _pipeline(store=FakeStore(commit_error=failure))
    with pytest.raises(ImageGenStorageError):
        pipeline.run()
    assert [image.key for image in parts.store.discarded] == [JOB.image_key(0), JOB.image_key(1)]


def test_a_write_conflict_leaves_the_objects_to_the_other_writer():
    conflict = ImageGenWriteConflictError("Another writer committed first")
    pipeline, parts = _pipeline(store=FakeStore(commit_error=conflict))
    with pytest.raises(ImageGenWriteConflictError):
        pipeline.run()
    assert parts.store.discarded == []


def test_expired_recorded_urls_are_generated_again_once():
    expired = ImageGenURLExpiredError("HTTP 403", status_code=403)
    new_urls = ["https://cdn.test/new-a.png", "https://cdn.test/new-b.png"]
    store = FakeStore(pending={JOB.prefix: _pending()})
    pipeline, parts = _pipeline(hook=FakeHook(new_urls), store=store, copier=FakeCopier({URLS[0]: expired}))
    images = pipeline.run()
    assert len(parts.hook.sent) == 1
    assert [url for url, _ in parts.copier.copied] == new_urls
    assert [(r["urls"], r["generations"]) for r in store.recorded] == [(new_urls, 2)]  # the second paid generation
    assert len(images) == 2


@pytest.mark.parametrize("earlier", [{"download_failed": True}, {"generations": 2}])
def test_expired_urls_already_paid_for_are_not_paid_again(earlier):
    expired = ImageGenURLExpiredError("HTTP 410", status_code=410)
    store = FakeStore(pending={JOB.prefix: _pending(**earlier)})
    pipeline, parts = _pipeline(store=store, copier=FakeCopier({URLS[0]: expired}))
    with pytest.raises(ImageGenPaidURLsExpiredError) as caught:
        pipeline.run()
    assert caught.value.permanent
    assert parts.hook.sent == []
    assert "_pending.json" in str(caught.value)


# -- after the trigger -------------------------------------------------------------------------------


def test_resume_stores_what_the_trigger_generated():
    event = {"results": {"0": {"status": "success", "image_urls": URLS, "elapsed": 4.0, "request_id": "req-t"}}}
    pipeline, parts = _pipeline()
    images = pipeline.resume_all(event)
    assert parts.hook.sent == []  # the trigger made the call
    assert len(images) == 2
    ((_, manifest, _),) = parts.store.committed
    assert manifest.generation.request_id == "req-t"
    assert parts.store.recorded[0]["generation"] == manifest.generation


def test_resume_raises_the_triggers_error_with_its_class_and_permanence():
    error = ImageGenContentPolicyError("refused", status_code=400)
    pipeline, parts = _pipeline()
    with pytest.raises(ImageGenContentPolicyError) as caught:
        pipeline.resume_all({"results": {"0": event_from_error(error)}})
    assert caught.value.permanent
    assert parts.tally.figures.failed_calls == 1


def test_resume_of_a_prompt_done_before_deferring_reuses_it():
    stored = [_image(JOB, 0)]
    pipeline, parts = _pipeline(store=FakeStore(reusable={JOB.prefix: stored}))
    assert pipeline.resume_all({"results": {}}) == stored
    assert parts.tally._stats.sent == []  # counted before the deferral

    pipeline, _ = _pipeline()
    with pytest.raises(ImageGenError, match="no result from the trigger"):
        pipeline.resume_all({"results": {}})


# -- the try's frame: deferral recognised by type ---------------------------------------------------


class _Deferred(TaskDeferred):
    """A deferral of another name: recognised by its type, not its name."""


@pytest.mark.parametrize(
    ("raised", "summary"),
    [
        (None, True),
        (ValueError("boom"), True),
        (TaskDeferred(trigger=None, method_name="execute_complete"), False),
        (_Deferred(trigger=None, method_name="execute_complete"), False),
    ],
)
def test_open_pipeline_cleans_up_and_logs_the_cost_unless_the_try_defers(raised, summary):
    hook, log = FakeHook(), RecordingLog()
    with (
        pytest.raises(type(raised)) if raised else _no_error(),
        open_pipeline(
            _plan(),
            hook=hook,
            s3_client=object(),  # never called: nothing listed, nothing committed
            max_concurrency=1,
            upload_concurrency=1,
            fail_fast=False,
            list_records_first=False,
            log=log,
        ) as pipeline,
    ):
        assert isinstance(pipeline, PromptPipeline)
        if raised is not None:
            raise raised
    assert hook.closed
    assert ("Cost of this try" in log.text()) is summary


@contextmanager
def _no_error():
    yield


# -- the real record store and copier, on moto in-process --------------------------------------------


class _ImageStream:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.content_type = "image/png"

    def iter_bytes(self) -> Any:
        yield from (self.data[i : i + 4096] for i in range(0, len(self.data), 4096))


class ServingHook(FakeHook):
    """A fake hook whose URLs serve real PNGs of the asked size (one per URL, distinct bytes)."""

    @contextmanager
    def open_image(self, url: str) -> Any:
        shade = int(hashlib.sha256(url.encode()).hexdigest()[:2], 16)
        data = image_bytes("png", (1024, 1024))
        yield _ImageStream(data[:-12] + _text_chunk(shade) + data[-12:])


def _text_chunk(value: int) -> bytes:
    import struct
    import zlib

    payload = b"shade\x00" + str(value).encode()
    return struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", zlib.crc32(b"tEXt" + payload))


@pytest.fixture
def s3():
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _real_run(s3, hook: FakeHook) -> tuple[list[CopiedImage], TryTally]:
    log = RecordingLog()
    with open_pipeline(
        _plan(),
        hook=hook,
        s3_client=s3,
        max_concurrency=1,
        upload_concurrency=2,
        fail_fast=False,
        list_records_first=True,
        log=log,
    ) as pipeline:
        pipeline.tally._stats = RecordingStats()
        return pipeline.run(), pipeline.tally


def test_with_the_real_store_and_copier_a_rerun_pays_nothing_and_the_etags_are_s3s(s3):
    import json

    first, _ = _real_run(s3, ServingHook(URLS))
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{JOB.prefix}/manifest.json")["Body"].read())
    heads = {image.key: s3.head_object(Bucket=BUCKET, Key=image.key)["ETag"].strip('"') for image in first}
    assert manifest["stored_etags"] == heads
    assert [image.etag for image in first] == [heads[image.key] for image in first]

    hook = ServingHook()  # no answer scripted: a call would fail the test
    again, tally = _real_run(s3, hook)
    assert hook.sent == []
    assert [image.to_dict() for image in again] == [image.to_dict() for image in first]
    assert tally.figures.images_reused == 2


def test_with_the_real_store_an_object_changed_since_is_not_reused(s3):
    first, _ = _real_run(s3, ServingHook(URLS))
    s3.put_object(Bucket=BUCKET, Key=first[1].key, Body=b"someone else's bytes")

    hook = ServingHook(["https://cdn.test/c.png", "https://cdn.test/d.png"])
    again, _ = _real_run(s3, hook)
    assert len(hook.sent) == 1  # the manifest no longer vouched for its objects: generated again
    assert again[1].sha256 != first[1].sha256
