"""ImageGenToS3Operator: templated prompt(s) → GPT Image 2 → verified S3 objects → manifest → XCom."""

from __future__ import annotations

import threading
from concurrent.futures import ALL_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator, conf

from airflow_provider_imagegen.exceptions import (
    ImageGenDownloadError,
    ImageGenError,
    ImageGenValidationError,
)
from airflow_provider_imagegen.models import ImageGenerationRequest, ImageGenerationResult

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from airflow.sdk import Context

    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
    from airflow_provider_imagegen.transfer import CopiedImage

_PART_SIZE = 5 * 1024 * 1024  # the smallest part S3 accepts: the least memory per copy


@dataclass(frozen=True)
class PromptJob:
    """One prompt of a task: its validated request and where its images go."""

    prompt_index: int
    request: ImageGenerationRequest
    prefix: str


class ImageGenToS3Operator(BaseOperator):
    """Generate images from a templated prompt with GPT Image 2 and store them, verified, in S3.

    Each image is streamed from its URL into ``s3://{s3_bucket}/{prefix}/{index:02d}.{png|jpg}``
    while its sha256, size, format and pixel size are checked; ``{prefix}/manifest.json`` is
    written last. Returns to XCom one small dict per image (``s3_uri``, ``bucket``, ``key``,
    ``index``, ``prompt_index``, ``content_type``, ``size_bytes``, ``sha256``, ``width``, ``height``).

    Retries cost nothing twice: a new try of the same task instance whose manifest matches the
    request and whose objects still verify makes no API call and returns the same XCom; a try
    that failed after generating left the image URLs in ``{prefix}/_pending.json``, which the
    next try copies before paying for new images. A failed copy deletes the objects it stored, a
    stale manifest is removed before its objects are replaced, and a missing bucket fails the
    task before anything is generated. Permanent errors (validation, auth, content policy, a
    missing bucket) raise ``AirflowFailException`` so that Airflow does not retry them.

    :param prompt: the text prompt, or the name of a ``.j2``/``.jinja2`` template file (templated).
    :param prompts: several prompts, an alternative to ``prompt``; each gets ``{prefix}/{i:03d}/``
        (templated).
    :param s3_bucket: destination bucket (templated).
    :param s3_key_prefix: destination prefix; default ``imagegen/{dag_id}/{run_id}/{task_id}``,
        plus ``/{map_index}`` for mapped tasks (templated).
    :param n: images per prompt, 1 to 10 (templated).
    :param size: pixel size or ``auto`` (templated).
    :param quality: ``low``, ``medium`` or ``high`` (templated).
    :param background: ``opaque`` or ``auto`` (templated).
    :param moderation: ``low`` or ``auto`` (templated).
    :param output_format: ``png`` or ``jpeg`` (templated).
    :param output_compression: 0 to 100, jpeg only (templated).
    :param min_images: fewest images per prompt that count as success (the API may return fewer
        than ``n``); fewer fails the task.
    :param imagegen_conn_id: the ``imagegen`` connection.
    :param aws_conn_id: the AWS connection for S3.
    :param encrypt: server-side encryption with S3-managed keys (AES256).
    :param kms_key_id: server-side encryption with this KMS key (templated).
    :param acl_policy: a canned ACL for the objects, e.g. ``bucket-owner-full-control``.
    :param s3_tags: object tags (templated).
    :param s3_extra_args: further ``PutObject``/``upload_fileobj`` ExtraArgs, e.g. ``StorageClass`` (templated).
    :param max_concurrency: prompts generated at once (batch mode); as many more may be copying
        to S3 meanwhile.
    :param upload_concurrency: images of one prompt copied to S3 at once.
    :param fail_fast: batch mode: stop at the first failed prompt; otherwise finish the others
        and then fail, naming every failed prompt.
    :param deferrable: wait for the API in the triggerer instead of holding a worker slot.
    :param max_image_bytes: the most bytes accepted for one image.
    """

    template_fields: Sequence[str] = (
        "prompt",
        "prompts",
        "s3_bucket",
        "s3_key_prefix",
        "n",
        "size",
        "quality",
        "background",
        "moderation",
        "output_format",
        "output_compression",
        "kms_key_id",
        "s3_tags",
        "s3_extra_args",
    )
    template_ext: Sequence[str] = (".j2", ".jinja2")
    template_fields_renderers = {"prompt": "md", "prompts": "json", "s3_tags": "json", "s3_extra_args": "json"}
    ui_color = "#f4e8ff"

    # per try, set by _prepare(): what earlier tries left, and the prompts committed by this one
    _records: dict[str, frozenset[str]] | None
    _committed: list[str]  # prefixes whose pending record this try can drop
    _committed_lock: threading.Lock
    _generation_slots: threading.BoundedSemaphore
    _landing_slots: threading.BoundedSemaphore
    _stopping: threading.Event
    _recorder: ThreadPoolExecutor

    def __init__(
        self,
        *,
        s3_bucket: str,
        prompt: str | None = None,
        prompts: list[str] | str | None = None,
        s3_key_prefix: str | None = None,
        n: int | str = 1,
        size: str = "1024x1024",
        quality: str = "medium",
        background: str = "auto",
        moderation: str = "auto",
        output_format: str = "png",
        output_compression: int | str | None = None,
        min_images: int = 1,
        imagegen_conn_id: str = "imagegen_default",
        aws_conn_id: str | None = "aws_default",
        encrypt: bool = False,
        kms_key_id: str | None = None,
        acl_policy: str | None = None,
        s3_tags: dict[str, str] | None = None,
        s3_extra_args: dict[str, Any] | None = None,
        max_concurrency: int = 4,
        upload_concurrency: int = 10,
        fail_fast: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_image_bytes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (prompt is None) == (prompts is None):
            raise ValueError("ImageGenToS3Operator takes exactly one of `prompt` and `prompts`")
        if max_concurrency < 1 or upload_concurrency < 1:
            raise ValueError("max_concurrency and upload_concurrency must be at least 1")
        self.prompt = prompt
        self.prompts = prompts
        self.s3_bucket = s3_bucket
        self.s3_key_prefix = s3_key_prefix
        self.n = n
        self.size = size
        self.quality = quality
        self.background = background
        self.moderation = moderation
        self.output_format = output_format
        self.output_compression = output_compression
        self.min_images = min_images
        self.imagegen_conn_id = imagegen_conn_id
        self.aws_conn_id = aws_conn_id
        self.encrypt = encrypt
        self.kms_key_id = kms_key_id
        self.acl_policy = acl_policy
        self.s3_tags = s3_tags
        self.s3_extra_args = s3_extra_args
        self.max_concurrency = max_concurrency
        self.upload_concurrency = upload_concurrency
        self.fail_fast = fail_fast
        self.deferrable = deferrable
        self.max_image_bytes = max_image_bytes

    # -- hooks (built lazily: never at DAG parse time) ------------------------------------------

    @cached_property
    def hook(self) -> ImageGenHook:
        """The image API hook."""
        from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

        if self.max_image_bytes:
            return ImageGenHook(self.imagegen_conn_id, max_image_bytes=self.max_image_bytes)
        return ImageGenHook(self.imagegen_conn_id)

    @cached_property
    def s3_hook(self) -> Any:
        """The amazon provider's S3Hook, tuned for streaming many images at once in little memory.

        One part of 5 MiB in memory per copy (no read-ahead threads: the copies themselves run in
        parallel), and a connection pool big enough for every copy thread.
        """
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        copies = self.max_concurrency * self.upload_concurrency
        return S3Hook(
            aws_conn_id=self.aws_conn_id,
            transfer_config_args={
                "multipart_threshold": _PART_SIZE,
                "multipart_chunksize": _PART_SIZE,
                "use_threads": False,
            },
            config={"max_pool_connections": max(10, copies + self.max_concurrency)},
        )

    @cached_property
    def s3_client(self) -> Any:
        """One boto3 client, shared by the copy threads (clients are thread-safe, sessions are not)."""
        return self.s3_hook.get_conn()

    # -- execute ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> list[dict[str, Any]]:
        """Render → validate → generate (or reuse a verified earlier try) → copy → manifest → XCom."""
        try:
            jobs = self.build_jobs(context)
            self._prepare()
            self._records = self._earlier_records(jobs)
        except ImageGenError as error:
            _reraise_for_airflow(error)
        try:
            if self.deferrable:
                return self._defer_or_finish(context, jobs)
            images = self._run_jobs(jobs, lambda job: self._produce(job, context))
            return self._finish(context, jobs, images)
        finally:
            self._drop_pending()
            self._close()

    def build_jobs(self, context: Context) -> list[PromptJob]:
        """Validate the rendered values (before any call) and lay out one job per prompt.

        :param context: the task's context (``ti`` and ``run_id`` give the default prefix).
        """
        prompts = self._rendered_prompts()
        params = {
            "n": _as_int("n", self.n),
            "size": self.size,
            "quality": self.quality,
            "background": self.background,
            "moderation": self.moderation,
            "output_format": self.output_format,
            "output_compression": _as_int("output_compression", self.output_compression),
        }
        requests = [ImageGenerationRequest(prompt=prompt, **params) for prompt in prompts]
        self._check_min_images(requests[0].n)
        self._check_bucket_name()
        self._check_extra_args()
        prefix = self._prefix(context)
        if self.prompts is None:
            return [PromptJob(0, requests[0], prefix)]
        return [PromptJob(i, request, f"{prefix}/{i:03d}") for i, request in enumerate(requests)]

    def _check_min_images(self, n: int) -> None:
        min_images = self.min_images
        if isinstance(min_images, bool) or not isinstance(min_images, int) or not 1 <= min_images <= n:
            raise ImageGenValidationError("min_images", min_images, f"an integer from 1 to n ({n})")

    def _check_bucket_name(self) -> None:
        bucket = self.s3_bucket
        if not isinstance(bucket, str) or not bucket.strip() or bucket != bucket.strip():
            raise ImageGenValidationError("s3_bucket", bucket, "a bucket name")
        if "/" in bucket or bucket.startswith("s3:"):
            raise ImageGenValidationError(
                "s3_bucket", bucket, "a bare bucket name (no s3:// and no key; use s3_key_prefix for the key)"
            )

    def _check_extra_args(self) -> None:
        """Refuse ExtraArgs S3 would reject after the images were paid for, and checksums (ours to set)."""
        extra = self.s3_extra_args
        if extra is None:
            return
        from boto3.s3.transfer import S3Transfer

        allowed = sorted(
            name for name in S3Transfer.ALLOWED_UPLOAD_ARGS if not name.startswith(("Checksum", "Mpu"))
        )
        if not isinstance(extra, dict):
            raise ImageGenValidationError("s3_extra_args", extra, "a dict of S3 upload arguments")
        unknown = sorted(str(key) for key in extra if key not in allowed)
        if unknown:
            raise ImageGenValidationError(
                "s3_extra_args", unknown, "keys among " + ", ".join(allowed) + " (checksums are set by the operator)"
            )

    def _prefix(self, context: Context) -> str:
        """The user's prefix (slashes trimmed) or the default one; ``/{map_index}`` for mapped tasks."""
        from airflow_provider_imagegen.manifest import default_prefix

        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        if map_index is None:
            map_index = -1
        if self.s3_key_prefix is not None and not isinstance(self.s3_key_prefix, str):
            raise ImageGenValidationError("s3_key_prefix", self.s3_key_prefix, "a string")
        prefix = (self.s3_key_prefix or "").strip().strip("/")
        if not prefix:
            return default_prefix(ti.dag_id, context["run_id"], ti.task_id, map_index)
        return f"{prefix}/{map_index}" if map_index >= 0 else prefix

    def _rendered_prompts(self) -> list[str]:
        if self.prompts is None:
            return [self.prompt]  # type: ignore[list-item]  # validated by ImageGenerationRequest
        prompts: Any = self.prompts
        if isinstance(prompts, str):  # e.g. a list rendered by Jinja as a string
            prompts = _parse_list(prompts)
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ImageGenValidationError("prompts", prompts, "a non-empty list of prompt strings")
        return list(prompts)

    def _prepare(self) -> None:
        """Read the connections and build the clients in this thread, before any copy thread starts.

        Connection lookups talk to the task supervisor, and older task SDKs (1.2) can hang when
        two threads do that at once.
        """
        _ = self.hook.settings, self.s3_client, self._upload_args
        self._records = None
        self._committed = []
        self._committed_lock = threading.Lock()
        # one prompt's copy overlaps the next prompt's API call: up to max_concurrency of each
        self._generation_slots = threading.BoundedSemaphore(self.max_concurrency)
        self._landing_slots = threading.BoundedSemaphore(self.max_concurrency)
        self._stopping = threading.Event()  # fail_fast: a prompt failed, start no more API calls
        # writes the pending records alongside the copies; one pool per try, not a thread per prompt
        self._recorder = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="imagegen-record")

    def _earlier_records(self, jobs: list[PromptJob]) -> dict[str, frozenset[str]] | None:
        """The records earlier tries left under each prompt's prefix, in one LIST for the whole task.

        None when listing is denied: each prompt then reads its records directly.
        """
        from airflow_provider_imagegen.manifest import records_by_prefix, records_present

        if self.prompts is None:
            present = records_present(self.s3_client, self.s3_bucket, jobs[0].prefix)
            return None if present is None else {jobs[0].prefix: present}
        return records_by_prefix(self.s3_client, self.s3_bucket, jobs[0].prefix.rpartition("/")[0])

    def _commit(self, job: PromptJob) -> None:
        """Note that ``job`` has its manifest, so its pending record (if any) can go."""
        with self._committed_lock:
            self._committed.append(job.prefix)

    def _drop_pending(self) -> None:
        """Delete the pending records of the prompts committed in this try, together."""
        from airflow_provider_imagegen.manifest import delete_pending

        prefixes = getattr(self, "_committed", [])
        if not prefixes:
            return
        try:
            delete_pending(self.s3_client, self.s3_bucket, prefixes)
        except ImageGenError as error:  # the manifests beside them take precedence: harmless
            self.log.warning("Could not delete the pending record(s) of committed prompts: %s", error)
        prefixes.clear()

    def _close(self) -> None:
        if "_recorder" in self.__dict__:
            self._recorder.shutdown(wait=True)
        if "hook" in self.__dict__:
            self.hook.close()

    def _run_jobs(self, jobs: list[PromptJob], work: Callable[[PromptJob], list[CopiedImage]]) -> list[CopiedImage]:
        """Run ``work`` for every job with bounded concurrency; results in prompt order.

        Twice ``max_concurrency`` threads, so that while some prompts are copied others already
        wait for the API; the generation and landing slots keep each stage within its bound.
        """
        if len(jobs) == 1:
            return self._fail_clearly(jobs, {jobs[0].prompt_index: _capture(work, jobs[0])})
        outcomes: dict[int, list[CopiedImage] | BaseException] = {}

        def run(job: PromptJob) -> list[CopiedImage]:
            try:
                return work(job)
            except BaseException:
                if self.fail_fast:
                    self._stopping.set()
                raise

        with ThreadPoolExecutor(max_workers=min(2 * self.max_concurrency, len(jobs))) as pool:
            futures: dict[Future[list[CopiedImage]], PromptJob] = {pool.submit(run, job): job for job in jobs}
            _done, pending = wait(futures, return_when=FIRST_EXCEPTION if self.fail_fast else ALL_COMPLETED)
            for future in pending:
                future.cancel()
            for future, job in futures.items():
                if future.cancelled() or isinstance(future.exception(), _NotStarted):
                    continue
                error = future.exception()
                outcomes[job.prompt_index] = error if error is not None else future.result()
        return self._fail_clearly(jobs, outcomes)

    def _fail_clearly(
        self, jobs: list[PromptJob], outcomes: dict[int, list[CopiedImage] | BaseException]
    ) -> list[CopiedImage]:
        failures = {i: o for i, o in outcomes.items() if isinstance(o, BaseException)}
        if not failures and len(outcomes) == len(jobs):
            return [image for job in jobs for image in outcomes[job.prompt_index]]  # type: ignore[union-attr]
        if len(jobs) == 1:
            raise _for_airflow(failures[jobs[0].prompt_index])
        lines = [f"prompt {i}: {type(e).__name__}: {e}" for i, e in sorted(failures.items())]
        skipped = len(jobs) - len(outcomes)
        summary = f"{len(failures)} of {len(jobs)} prompts failed" + (
            f" ({skipped} not started: fail_fast)" if skipped else ""
        )
        self.log.error("%s:\n%s", summary, "\n".join(lines))
        permanent = all(getattr(e, "permanent", False) for e in failures.values())
        raise _for_airflow(ImageGenError(f"{summary}: " + "; ".join(lines)), permanent=permanent)

    def _produce(self, job: PromptJob, context: Context) -> list[CopiedImage]:
        """One prompt: reuse a verified earlier result, else copy recorded URLs, else generate."""
        images = self._reuse(job, context)
        if images is not None:
            return images
        result = self._generate(job)
        return self._land_generated(job, result, context)

    def _reuse(self, job: PromptJob, context: Context) -> list[CopiedImage] | None:
        """What an earlier try left: its verified images, or its recorded URLs copied now; else None."""
        from airflow_provider_imagegen.manifest import MANIFEST_NAME, PENDING_NAME

        present = None if self._records is None else self._records.get(job.prefix, frozenset())
        if present is None or MANIFEST_NAME in present:
            images = self._already_done(job)
            if images is not None:
                if present is None or PENDING_NAME in present:  # left by a try killed before cleaning up
                    self._commit(job)
                return images
        pending = self._pending(job) if present is None or PENDING_NAME in present else None
        if pending is None:
            return None
        self.log.info(
            "Prompt %d: copying the %d image(s) an earlier try generated (no new API call)",
            job.prompt_index,
            len(pending["image_urls"]),
        )
        try:
            return self._land(job, pending["image_urls"], context, pending)
        except ImageGenDownloadError as error:
            self.log.warning(
                "Prompt %d: the image URLs recorded by an earlier try are no longer usable (%s); generating again",
                job.prompt_index,
                error,
            )
        return None

    def _already_done(self, job: PromptJob) -> list[CopiedImage] | None:
        """The verified images of an earlier try's manifest; a manifest that no longer holds is removed."""
        from airflow_provider_imagegen.manifest import delete_manifest, load_manifest, verified_images

        manifest = load_manifest(self.s3_client, self.s3_bucket, job.prefix)
        if manifest is None:
            return None
        images = verified_images(self.s3_client, manifest, self.s3_bucket, job.prefix, job.request)
        if images is None:
            # its objects are about to be overwritten: it must not vouch for them meanwhile
            self.log.warning(
                "Prompt %d: s3://%s/%s/manifest.json from an earlier run does not match this request "
                "or its objects changed; producing the images again",
                job.prompt_index,
                self.s3_bucket,
                job.prefix,
            )
            delete_manifest(self.s3_client, self.s3_bucket, job.prefix)
            return None
        self.log.info(
            "Prompt %d: s3://%s/%s already holds %d verified image(s) from an earlier try; no API call",
            job.prompt_index,
            self.s3_bucket,
            job.prefix,
            len(images),
        )
        return images

    def _pending(self, job: PromptJob) -> dict[str, Any] | None:
        from airflow_provider_imagegen.manifest import load_pending

        return load_pending(self.s3_client, self.s3_bucket, job.prefix, job.request)

    def _generate(self, job: PromptJob) -> ImageGenerationResult:
        from airflow_provider_imagegen.hooks._client import prompt_digest

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
        with self._generation_slots:
            if self._stopping.is_set():
                raise _NotStarted
            try:
                result = self.hook.send(request)
            except BaseException:
                if self.fail_fast:  # before the slot is released: the next prompt must not pay
                    self._stopping.set()
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

    def _land_generated(self, job: PromptJob, result: ImageGenerationResult, context: Context) -> list[CopiedImage]:
        """Check the count, record the URLs (so a retry does not pay again), then copy them.

        The record is written while the copy starts, not before it: the manifest (the commit
        point) waits for it, and a failed copy returns only once the record is stored.
        """
        from airflow_provider_imagegen.manifest import save_pending_urls, utcnow_iso

        self._check_count(job, len(result.image_urls))
        info = {
            "generated_at": utcnow_iso(),
            "generation_seconds": round(result.elapsed, 3),
            "request_id": result.request_id,
        }
        recorded = self._recorder.submit(
            save_pending_urls,
            self.s3_client,
            self.s3_bucket,
            job.prefix,
            result.image_urls,
            self._upload_args,
            job.request,
            **info,
        )
        try:
            return self._land(job, result.image_urls, context, info, recorded)
        finally:
            wait([recorded])

    def _check_count(self, job: PromptJob, received: int) -> None:
        asked = job.request.n
        if received < self.min_images:
            raise ImageGenError(
                f"Prompt {job.prompt_index}: the API returned {received} of {asked} requested image(s), "
                f"fewer than min_images={self.min_images}"
            )
        if received < asked:
            self.log.warning(
                "Prompt %d: the API returned %d of %d requested image(s) (min_images=%d); continuing",
                job.prompt_index,
                received,
                asked,
                self.min_images,
            )

    def _land(
        self,
        job: PromptJob,
        urls: list[str],
        context: Context,
        info: dict[str, Any],
        recorded: Future[None] | None = None,
    ) -> list[CopiedImage]:
        """Copy every URL to S3 (bounded concurrency), then write the manifest: the commit point.

        :param recorded: the write of the pending record, which must succeed before the commit.
        """
        with self._landing_slots:
            return self._land_now(job, urls, context, info, recorded)

    def _land_now(
        self,
        job: PromptJob,
        urls: list[str],
        context: Context,
        info: dict[str, Any],
        recorded: Future[None] | None,
    ) -> list[CopiedImage]:
        import time

        from airflow_provider_imagegen.hooks._client import prompt_digest
        from airflow_provider_imagegen.manifest import build_manifest, write_manifest

        started = time.monotonic()
        images = self._copy_all(job, urls, context)
        manifest = build_manifest(
            request=job.request,
            images=images,
            prompt_sha256=prompt_digest(job.request.prompt),
            endpoint=_public_url(self.hook.settings.url),
            task=self._task_record(context, job),
            generated_at=info.get("generated_at") or "",
            generation_seconds=info.get("generation_seconds"),
            request_id=info.get("request_id"),
        )
        try:
            if recorded is not None:
                recorded.result()
            write_manifest(self.s3_client, self.s3_bucket, job.prefix, manifest, self._upload_args)
        except Exception:
            self._discard(images)  # no manifest vouches for them: leave no image under a final key
            raise
        self._commit(job)
        total = sum(image.size_bytes for image in images)
        self.log.info(
            "Prompt %d: %d image(s), %.1f MB, copied and verified in %.1f s; manifest s3://%s/%s/manifest.json",
            job.prompt_index,
            len(images),
            total / 1e6,
            time.monotonic() - started,
            self.s3_bucket,
            job.prefix,
        )
        return images

    def _copy_all(self, job: PromptJob, urls: list[str], context: Context) -> list[CopiedImage]:
        """Stream every URL into its key, ``upload_concurrency`` at a time; all or nothing.

        On the first failure the copies not yet started are cancelled and the objects this call
        already stored are deleted, so a failed try leaves no image under a final key.
        """
        from airflow_provider_imagegen.hooks._client import prompt_digest
        from airflow_provider_imagegen.manifest import image_key
        from airflow_provider_imagegen.transfer import copy_image_to_s3

        request, lock, done = job.request, threading.Lock(), [0]
        metadata = {
            **self._task_metadata(context),
            "prompt-sha256": prompt_digest(request.prompt),
            "size": request.size,
            "quality": request.quality,
        }
        transfer_config = self.s3_hook.transfer_config

        def copy(index: int) -> CopiedImage:
            image = copy_image_to_s3(
                self.hook,
                self.s3_client,
                urls[index],
                request=request,
                bucket=self.s3_bucket,
                key=image_key(job.prefix, index, request.file_extension),
                index=index,
                prompt_index=job.prompt_index,
                extra_args=self._upload_args,
                metadata=metadata,
                transfer_config=transfer_config,
            )
            with lock:
                done[0] += 1
                count = done[0]
            self.log.info(
                "Prompt %d: %d/%d uploaded %s, %.1f MB",
                job.prompt_index,
                count,
                len(urls),
                image.s3_uri,
                image.size_bytes / 1e6,
            )
            return image

        if len(urls) == 1:  # nothing to overlap: no thread
            return [copy(0)]
        with ThreadPoolExecutor(max_workers=min(self.upload_concurrency, len(urls))) as pool:
            futures = [pool.submit(copy, index) for index in range(len(urls))]
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                future.cancel()
        failed = [f for f in futures if not f.cancelled() and f.exception() is not None]
        if not failed:
            return [future.result() for future in futures]
        stored = [f.result() for f in futures if not f.cancelled() and f.exception() is None]
        self._discard(stored)
        raise failed[0].exception()  # type: ignore[misc]

    def _discard(self, images: list[CopiedImage]) -> None:
        """Best effort: delete the objects of a failed copy (no manifest will vouch for them)."""
        for image in images:
            try:
                self.s3_client.delete_object(Bucket=image.bucket, Key=image.key)
            except Exception as error:  # the original failure matters more
                self.log.warning("Could not delete %s after a failed copy: %s", image.s3_uri, error)

    @cached_property
    def _upload_args(self) -> dict[str, Any]:
        args: dict[str, Any] = dict(self.s3_extra_args or {})
        if self.kms_key_id:
            args.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=self.kms_key_id)
        elif self.encrypt:
            args["ServerSideEncryption"] = "AES256"
        if self.acl_policy:
            args["ACL"] = self.acl_policy
        if self.s3_tags:
            from urllib.parse import urlencode

            args["Tagging"] = urlencode(self.s3_tags)
        return args

    @staticmethod
    def _task_metadata(context: Context) -> dict[str, str]:
        ti = context["ti"]
        return {
            "dag-id": _metadata_value(ti.dag_id),
            "run-id": _metadata_value(context["run_id"]),
            "task-id": _metadata_value(ti.task_id),
        }

    @staticmethod
    def _task_record(context: Context, job: PromptJob) -> dict[str, Any]:
        ti = context["ti"]
        return {
            "dag_id": ti.dag_id,
            "run_id": context["run_id"],
            "task_id": ti.task_id,
            "map_index": getattr(ti, "map_index", -1),
            "try_number": getattr(ti, "try_number", None),
            "prompt_index": job.prompt_index,
        }

    def _finish(self, context: Context, jobs: list[PromptJob], images: list[CopiedImage]) -> list[dict[str, Any]]:
        """Asset events for AssetAlias outlets, then the XCom value."""
        self._emit_asset_events(context, jobs, images)
        self._stored_images = images
        total = sum(image.size_bytes for image in images)
        self.log.info(
            "Stored %d image(s) for %d prompt(s), %.1f MB in s3://%s",
            len(images),
            len(jobs),
            total / 1e6,
            self.s3_bucket,
        )
        return [image.to_dict() for image in images]

    def _emit_asset_events(self, context: Context, jobs: list[PromptJob], images: list[CopiedImage]) -> None:
        from airflow.sdk import Asset, AssetAlias

        aliases = [outlet for outlet in self.outlets if isinstance(outlet, AssetAlias)]
        if not aliases:
            return
        from airflow_provider_imagegen.hooks._client import prompt_digest

        digests = {job.prompt_index: prompt_digest(job.request.prompt) for job in jobs}
        for alias in aliases:
            for image in images:
                context["outlet_events"][alias].add(
                    Asset(image.s3_uri),
                    extra={
                        "sha256": image.sha256,
                        "size_bytes": image.size_bytes,
                        "width": image.width,
                        "height": image.height,
                        "content_type": image.content_type,
                        "prompt_sha256": digests[image.prompt_index],
                    },
                )

    # -- deferrable -------------------------------------------------------------------------------

    def _defer_or_finish(self, context: Context, jobs: list[PromptJob]) -> list[dict[str, Any]]:
        """Finish what an earlier try left; hand the generation of the rest to the triggerer."""
        from airflow_provider_imagegen.triggers.imagegen import ImageGenTrigger

        ready: dict[int, list[CopiedImage]] = {}
        to_generate = []
        for job in jobs:
            try:
                images = self._reuse(job, context)
            except ImageGenError as error:
                _reraise_for_airflow(error)
            if images is None:
                to_generate.append(job)
            else:
                ready[job.prompt_index] = images
        if not to_generate:
            return self._finish(context, jobs, [image for job in jobs for image in ready[job.prompt_index]])
        self.defer(
            trigger=ImageGenTrigger(
                imagegen_conn_id=self.imagegen_conn_id,
                requests={job.prompt_index: job.request.to_json() for job in to_generate},
                max_concurrency=self.max_concurrency,
            ),
            method_name="execute_complete",
            timeout=self.execution_timeout,
        )
        raise AssertionError("defer() raises")  # pragma: no cover

    def execute_complete(self, context: Context, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Resume after the trigger: copy what it generated; rebuild its errors with their class.

        :param context: the task's context.
        :param event: the trigger's event: ``{"results": {prompt_index: outcome}}``.
        """
        from airflow_provider_imagegen.triggers.imagegen import error_from_event

        try:
            jobs = self.build_jobs(context)
            self._prepare()
        except ImageGenError as error:
            _reraise_for_airflow(error)
        results = {int(k): v for k, v in (event.get("results") or {}).items()}

        def work(job: PromptJob) -> list[CopiedImage]:
            outcome = results.get(job.prompt_index)
            if outcome is None:  # done before deferring
                images = self._already_done(job)
                if images is None:
                    raise ImageGenError(f"Prompt {job.prompt_index}: no result from the trigger")
                return images
            if outcome.get("status") != "success":
                raise error_from_event(outcome)
            result = ImageGenerationResult(
                image_urls=list(outcome["image_urls"]),
                request=job.request,
                elapsed=float(outcome.get("elapsed", 0.0)),
                attempts=int(outcome.get("attempts", 1)),
                request_id=outcome.get("request_id"),
            )
            return self._land_generated(job, result, context)

        try:
            images = self._run_jobs(jobs, work)
            return self._finish(context, jobs, images)
        finally:
            self._drop_pending()
            self._close()

    # -- lineage ----------------------------------------------------------------------------------

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the S3 objects written (the openlineage provider stays optional)."""
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        images: list[CopiedImage] = getattr(self, "_stored_images", [])
        outputs = [Dataset(namespace=f"s3://{image.bucket}", name=image.key) for image in images]
        return OperatorLineage(outputs=outputs)


class _NotStarted(Exception):
    """A prompt skipped by ``fail_fast`` after another one failed (reported as "not started")."""


def _as_int(name: str, value: Any) -> Any:
    """Template rendering yields strings: ``"3"`` → 3; anything else is left for validation to judge."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return value


def _parse_list(text: str) -> Any:
    """A list rendered as text: JSON (``["a", "b"]``) or a Python literal (``['a', 'b']``)."""
    import ast
    import json

    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    raise ImageGenValidationError("prompts", text, "a list of prompt strings")


def _metadata_value(value: Any) -> str:
    """S3 metadata is printable ASCII: keep such text as is, percent-encode anything else."""
    from urllib.parse import quote

    return "".join(char if 32 <= ord(char) < 127 else quote(char) for char in str(value))


def _public_url(url: str) -> str:
    """A URL without credentials, query or fragment (what the manifest may record)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _preview(prompt: str, limit: int = 60) -> str:
    flat = " ".join(prompt.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _capture(work: Callable[[PromptJob], list[CopiedImage]], job: PromptJob) -> list[CopiedImage] | BaseException:
    try:
        return work(job)
    except Exception as error:
        return error


def _reraise_for_airflow(error: ImageGenError) -> NoReturn:
    """Raise ``error``, as :class:`AirflowFailException` (caused by it) when it is permanent."""
    failure = _for_airflow(error)
    if failure is error:
        raise error
    raise failure from error


def _for_airflow(error: BaseException, *, permanent: bool | None = None) -> BaseException:
    """Permanent errors (auth, validation, content policy...) fail the task without Airflow retries."""
    from airflow.sdk.exceptions import AirflowFailException

    if permanent is None:
        permanent = bool(getattr(error, "permanent", False))
    if permanent and not isinstance(error, AirflowFailException):
        failure = AirflowFailException(f"{type(error).__name__}: {error} (not retried: retrying cannot help)")
        failure.__cause__ = error
        return failure
    return error
