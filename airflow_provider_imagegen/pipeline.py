"""One prompt's life in a try: reuse what an earlier try left, else generate; record, copy, commit.

The order is the retry-safety protocol: a verified manifest is reused as it is; URLs an earlier
try recorded are copied without a new API call; otherwise the API is called, the URLs are
recorded (``_pending.json``, written while the copy starts), every image is copied and verified,
and the manifest is written last, only once the record is stored. Anything that fails after a
copy removes what it copied, so no image stays under a final key without a manifest.

The parts are passed in: the hook (API calls and downloads), the record store (S3 records),
the copier (one URL → one object) and the runner (threads and bounds).
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.exceptions import (
    ImageGenDownloadError,
    ImageGenError,
    ImageGenNoImagesError,
    ImageGenPaidURLsExpiredError,
    ImageGenURLExpiredError,
    ImageGenWriteConflictError,
    error_from_event,
)
from airflow_provider_imagegen.metrics import TryTally, prompt_cost
from airflow_provider_imagegen.models import ImageGenerationResult, prompt_digest
from airflow_provider_imagegen.records import Generation, Manifest, RecordStore, utcnow_iso
from airflow_provider_imagegen.runner import Runner
from airflow_provider_imagegen.transfer import Copier
from airflow_provider_imagegen.version_compat import TaskDeferred

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
    from airflow_provider_imagegen.models import CopiedImage
    from airflow_provider_imagegen.plan import Plan, PromptJob
    from airflow_provider_imagegen.task_log import TaskLog


MAX_GENERATIONS = 2
"""Paid generations per prompt and task instance: the first, and one more only when its URLs
expired while S3 (not the image host) was failing. Anything else is paid once."""


@contextmanager
def open_pipeline(
    plan: Plan,
    *,
    hook: ImageGenHook,
    s3_client: Any,
    max_concurrency: int,
    upload_concurrency: int,
    fail_fast: bool,
    list_records_first: bool,
    log: TaskLog,
    tally: TryTally | None = None,
) -> Iterator[PromptPipeline]:
    """The parts of one try, assembled; on the way out the committed prompts' pending records go,
    the hook's HTTP client is closed and the try's cost summary is logged (not when it defers:
    the try goes on after the trigger).

    :param plan: what this try does.
    :param hook: the image API hook (its connection already read).
    :param s3_client: a boto3 S3 client.
    :param max_concurrency: prompts generating at once, and prompts copying at once.
    :param upload_concurrency: images of one prompt copied at once.
    :param fail_fast: stop at the first failed prompt.
    :param list_records_first: list what earlier tries left first (one LIST); else each record is read
        directly.
    :param log: the task's logger.
    :param tally: counts what the try costs; without one, a tally that sends its metrics and
        logs the summary line at the end. A tally passed in is the caller's to summarise.
    """
    store = RecordStore(s3_client, plan.bucket, upload_args=plan.upload_args, log=log)
    if list_records_first:
        store.list_records(plan.list_prefix, nested=plan.batch)
    copier = Copier(
        hook,
        s3_client,
        plan.bucket,
        upload_args=plan.upload_args,
        metadata=plan.object_metadata,
    )
    runner = Runner(
        max_concurrency=max_concurrency, upload_concurrency=upload_concurrency, fail_fast=fail_fast, log=log
    )
    summarise = tally is None
    tally = tally or TryTally(log)
    deferring = False
    with runner:
        try:
            yield PromptPipeline(plan=plan, hook=hook, store=store, copier=copier, runner=runner, log=log, tally=tally)
        except TaskDeferred:
            deferring = True
            raise
        finally:
            store.drop_committed()
            hook.close()
            if summarise and not deferring:
                log.info("%s", tally.summary(len(plan.jobs)))


class PromptPipeline:
    """The protocol for every prompt of one plan.

    :param plan: what this try does.
    :param hook: the image API hook.
    :param store: the retry-safety records.
    :param copier: copies one URL into one verified object.
    :param runner: threads and bounds.
    :param log: the task's logger.
    :param tally: what the try costs (summary line and metrics).
    """

    def __init__(
        self,
        *,
        plan: Plan,
        hook: ImageGenHook,
        store: RecordStore,
        copier: Copier,
        runner: Runner,
        log: TaskLog,
        tally: TryTally | None = None,
    ) -> None:
        self.tally = tally or TryTally(log)
        self._paid: dict[str, int] = {}  # prefix → generations paid by earlier tries (expired URLs regenerate)
        self.plan = plan
        self.hook = hook
        self.store = store
        self.copier = copier
        self.runner = runner
        self.log = log

    def run(self) -> list[CopiedImage]:
        """Every prompt of the plan, bounded and in prompt order (the worker-side mode)."""
        images = self.runner.run(self.plan.jobs, self.images_for)
        self._log_stored(images)
        return images

    def reuse_all(self) -> tuple[list[CopiedImage], list[PromptJob]]:
        """Before deferring: what earlier tries left, one prompt after the other.

        :returns: the images of every prompt when all were ready, and the prompts still to generate.
        """
        ready = {job.prompt_index: self.reuse_earlier_try(job) for job in self.plan.jobs}
        to_generate = [job for job in self.plan.jobs if ready[job.prompt_index] is None]
        if to_generate:
            return [], to_generate
        images = [image for job in self.plan.jobs for image in ready[job.prompt_index] or []]
        self._log_stored(images)
        return images, []

    def resume_all(self, event: dict[str, Any]) -> list[CopiedImage]:
        """After the trigger: every prompt, bounded and in prompt order.

        :param event: the trigger's event, ``{"results": {prompt_index: outcome}}``; with ``"start"``
            when the task started in the triggerer, whose prompts without an outcome are the worker's
            to reuse, copy or (when the trigger could not read S3) generate.
        """
        results = {int(k): v for k, v in (event.get("results") or {}).items()}
        started_in_triggerer = "start" in event

        def resume(job: PromptJob) -> list[CopiedImage]:
            outcome = results.get(job.prompt_index)
            if outcome is None and started_in_triggerer:
                return self.images_for(job)
            return self.resume(job, outcome)

        images = self.runner.run(self.plan.jobs, resume)
        self._log_stored(images)
        return images

    def _log_stored(self, images: list[CopiedImage]) -> None:
        """The try's one line on what S3 now holds for the plan."""
        self.log.info(
            "Stored %d image(s) for %d prompt(s), %.1f MB in s3://%s",
            len(images),
            len(self.plan.jobs),
            sum(image.size_bytes for image in images) / 1e6,
            self.plan.bucket,
        )

    def images_for(self, job: PromptJob) -> list[CopiedImage]:
        """One prompt's stored images: reuse a verified earlier result, else copy recorded URLs, else generate."""
        images = self.reuse_earlier_try(job)
        if images is not None:
            return images
        return self.store_generated(job, self.generate(job))

    def reuse_earlier_try(self, job: PromptJob) -> list[CopiedImage] | None:
        """What an earlier try left: its verified images, or its recorded URLs copied now; else None."""
        images = self.store.reuse(job)
        if images is not None:
            self.tally.reused(images)
            return images
        pending = self.store.pending(job)
        if pending is None:
            return None
        if pending.try_number is not None and pending.try_number == self.plan.task.try_number:
            # this try's own call, made by its trigger before the triggerer restarted: paid in this try
            self.tally.generated(
                requested=job.request.n,
                received=len(pending.image_urls),
                seconds=pending.generation.generation_seconds or 0.0,
            )
            made_by = "this try's trigger generated before the triggerer restarted"
        else:
            made_by = "an earlier try generated"
        self.log.info(
            "Prompt %d: copying the %d image(s) %s (no new API call)",
            job.prompt_index,
            len(pending.image_urls),
            made_by,
        )
        try:
            return self._copy_and_commit(job, pending.image_urls, pending.generation, received=len(pending.image_urls))
        except ImageGenURLExpiredError as error:
            if pending.download_failed or pending.generations >= MAX_GENERATIONS:
                raise self._not_paying_again(job, error) from error
            self.log.warning(
                "Prompt %d: the image URLs recorded by an earlier try expired (%s); generating again, once",
                job.prompt_index,
                error,
            )
            self._paid[job.prefix] = pending.generations
            return None
        except ImageGenDownloadError as error:
            if not error.permanent:  # the image host failed, not S3: a later expiry must not pay again
                self.store.record_pending(
                    job,
                    pending.image_urls,
                    pending.generation,
                    generations=pending.generations,
                    download_failed=True,
                    try_number=pending.try_number,
                )
            raise

    def _not_paying_again(self, job: PromptJob, error: ImageGenDownloadError) -> ImageGenPaidURLsExpiredError:
        return ImageGenPaidURLsExpiredError(
            f"Prompt {job.prompt_index}: the images this task instance paid for can no longer be downloaded "
            f"({error}), and an earlier try already failed on them or paid twice: not paying again. Delete "
            f"s3://{self.plan.bucket}/{job.prefix}/_pending.json to generate anew."
        )

    def generate(self, job: PromptJob) -> ImageGenerationResult:
        """Call the API for ``job`` within a generation slot."""
        request = job.request
        self.log.info(
            "Prompt %d: generating %d %s %s image(s), quality %s (prompt sha256 %s…, %r)",
            job.prompt_index,
            request.n,
            request.size,
            request.output_format,
            request.quality,
            prompt_digest(request.prompt)[:12],
            _preview(request.prompt),
        )
        with self.runner.generation_slot(turn=job.prompt_index):
            started = time.monotonic()
            try:
                result = self.hook.send(request)
            except ImageGenError as error:
                self.tally.failed(error, time.monotonic() - started)
                raise
        self.log.info(
            "Prompt %d: the API returned %d of %d image(s) in %.1f s (%d attempt(s))",
            job.prompt_index,
            len(result.image_urls),
            request.n,
            result.elapsed,
            result.attempts,
        )
        return result

    def resume(self, job: PromptJob, outcome: dict[str, Any] | None) -> list[CopiedImage]:
        """One prompt after the trigger: store what it generated, or raise the error it reported.

        :param job: the prompt.
        :param outcome: the trigger's entry for it; None when it was done before deferring.
        """
        if outcome is None:
            images = self.store.reuse(job)
            if images is None:
                raise ImageGenError(f"Prompt {job.prompt_index}: no result from the trigger")
            self.tally.reused(images, send=False)  # sent before deferring
            return images
        if outcome.get("status") != "success":
            error = error_from_event(outcome)
            self.tally.failed(error)
            raise error
        result = ImageGenerationResult(
            image_urls=list(outcome["image_urls"]),
            request=job.request,
            elapsed=float(outcome.get("elapsed", 0.0)),
            attempts=int(outcome.get("attempts", 1)),
            request_id=outcome.get("request_id"),
        )
        return self.store_generated(
            job, result, generated_at=outcome.get("generated_at"), recorded=bool(outcome.get("recorded"))
        )

    def store_generated(
        self, job: PromptJob, result: ImageGenerationResult, *, generated_at: str | None = None, recorded: bool = False
    ) -> list[CopiedImage]:
        """Check the count, record the URLs (so a retry does not pay again), then copy them.

        The record is written while the copy starts, not before it: the manifest (the commit
        point) waits for it, and a failed copy returns only once the record is stored.

        :param job: the prompt.
        :param result: what the API answered.
        :param generated_at: when it answered, if not now (a trigger's call).
        :param recorded: the trigger already recorded these URLs: no second write.
        """
        self.tally.generated(requested=job.request.n, received=len(result.image_urls), seconds=result.elapsed)
        urls = self._usable_urls(job, result.image_urls)
        generation = Generation(
            generated_at=generated_at or utcnow_iso(),
            generation_seconds=round(result.elapsed, 3),
            request_id=result.request_id,
        )
        paid = self._paid.pop(job.prefix, 0) + 1
        written: Future[Any]
        if recorded:
            written = Future()
            written.set_result(None)
        else:
            written = self.runner.start_in_background(
                self.store.record_pending, job, urls, generation, generations=paid, try_number=self.plan.task.try_number
            )
        try:
            return self._copy_and_commit(job, urls, generation, written, received=len(result.image_urls))
        except ImageGenDownloadError as error:
            if not error.permanent:  # the image host failed, not S3: a later expiry must not pay again
                written.exception()
                self.store.record_pending(
                    job, urls, generation, generations=paid, download_failed=True, try_number=self.plan.task.try_number
                )
            raise
        finally:
            written.exception()  # waits for the write, whatever happened to the copy

    def _copy_and_commit(
        self,
        job: PromptJob,
        urls: Sequence[str],
        generation: Generation,
        recorded: Future[Any] | None = None,
        *,
        received: int,
    ) -> list[CopiedImage]:
        """Copy every URL (all or nothing), then write the manifest: the commit point."""
        with self.runner.copy_slot():
            started = time.monotonic()

            def progress(done: int, image: CopiedImage) -> None:
                self.log.info(
                    "Prompt %d: %d/%d uploaded %s, %.1f MB",
                    job.prompt_index,
                    done,
                    len(urls),
                    image.s3_uri,
                    image.size_bytes / 1e6,
                )

            images = self.runner.copy_all(
                len(urls),
                lambda index: self.copier.copy(urls[index], job.image_key(index), index, job),
                undo=self.store.discard,
                progress=progress,
            )
            manifest = Manifest.build(
                request=job.request,
                images=images,
                endpoint=self.hook.settings.public_url,
                task=self.plan.task.record(job.prompt_index),
                generation=generation,
                cost=prompt_cost(
                    calls=1,
                    requested=job.request.n,
                    received=received,
                    images=images,
                    seconds=generation.generation_seconds,
                ),
            )
            try:
                if recorded is not None:
                    recorded.result()
                self.store.commit(job, manifest, shared=self.plan.shared_prefix)
            except ImageGenWriteConflictError:
                raise  # the objects at these keys may be the other writer's now: leave them
            except Exception:
                self.store.discard(images)  # no manifest vouches for them: leave no image under a final key
                raise
            self.tally.stored(images, time.monotonic() - started)
        self.log.info(
            "Prompt %d: %d image(s), %.1f MB, copied and verified in %.1f s; manifest s3://%s/%s/manifest.json",
            job.prompt_index,
            len(images),
            sum(image.size_bytes for image in images) / 1e6,
            time.monotonic() - started,
            self.plan.bucket,
            job.prefix,
        )
        return images

    def _usable_urls(self, job: PromptJob, urls: Sequence[str]) -> list[str]:
        """:func:`usable_urls`, saying in the log what was left out or is missing."""
        asked, min_images = job.request.n, self.plan.min_images
        kept = usable_urls(urls, asked, min_images, prompt_index=job.prompt_index)
        if len(kept) < len(urls):
            self.log.warning(
                "Prompt %d: the API returned %d image URL(s) for n=%d (%d distinct); keeping the first %d distinct",
                job.prompt_index,
                len(urls),
                asked,
                len(set(urls)),
                len(kept),
            )
        if len(kept) < asked:
            self.log.warning(
                "Prompt %d: the API returned %d of %d requested image(s) (min_images=%d); continuing",
                job.prompt_index,
                len(kept),
                asked,
                min_images,
            )
        return kept


def usable_urls(urls: Sequence[str], asked: int, min_images: int, *, prompt_index: int = 0) -> list[str]:
    """The first ``asked`` distinct URLs of an answer; an answer cannot make more work than was asked.

    Fewer than ``min_images`` is permanent (:class:`ImageGenNoImagesError`): the call was paid, and
    the next one may be no better.

    :param urls: the answer's image URLs.
    :param asked: the request's ``n``.
    :param min_images: fewest images that count as success.
    :param prompt_index: the prompt, for the error message.
    """
    kept = list(dict.fromkeys(urls))[:asked]
    if len(kept) < min_images:
        raise ImageGenNoImagesError(
            f"Prompt {prompt_index}: the API returned {len(kept)} of {asked} requested image(s), "
            f"fewer than min_images={min_images}"
        )
    return kept


def _preview(prompt: str, limit: int = 60) -> str:
    flat = " ".join(prompt.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
