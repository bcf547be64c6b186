"""ImageGenToS3Operator: rendered values → ``plan`` → ``pipeline`` (records, copier, runner) → XCom, assets."""

from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from airflow.sdk import BaseOperator

from airflow_provider_imagegen.assets import check_asset_events, emit
from airflow_provider_imagegen.exceptions import ImageGenError
from airflow_provider_imagegen.get_provider_info import DEFAULT_CONN_ID
from airflow_provider_imagegen.models import CopiedImage, ImageGenerationRequest
from airflow_provider_imagegen.plan import (
    DEFAULT_MAX_IMAGES,
    PLAN_ARGUMENTS,
    TEMPLATED_ARGUMENTS,
    Plan,
    PromptJob,
    TaskIdentity,
    plan_from,
)
from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_3_PLUS, conf

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from airflow.sdk import Context
    from airflow.sdk.definitions.mappedoperator import OperatorPartial

    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
    from airflow_provider_imagegen.pipeline import PromptPipeline


def default_deferrable() -> bool:
    """``[operators] default_deferrable``: whether a task defers when its DAG does not say."""
    return conf.getboolean("operators", "default_deferrable", fallback=False)


class ImageGenToS3Operator(BaseOperator):
    """Generate images from a templated prompt with GPT Image 2 and store them, verified, in S3.

    Each image is streamed from its URL into ``s3://{s3_bucket}/{prefix}/{index:02d}.{png|jpg}``
    while its sha256, size, format and pixel size are checked; ``{prefix}/manifest.json`` is
    written last. Returns to XCom one small dict per image (``s3_uri``, ``bucket``, ``key``,
    ``index``, ``prompt_index``, ``content_type``, ``size_bytes``, ``sha256``, ``width``, ``height``).

    Retries cost nothing twice (the docs' "Retries and what they cost"): a try reuses the
    verified manifest of an earlier one, or copies the image URLs it recorded, before paying
    again. Permanent errors (validation, auth, content policy, a missing bucket) raise
    ``AirflowFailException`` so that Airflow does not retry them.

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
    :param max_images: spending guard: the most images (prompts x ``n``) one task instance may ask
        for, checked before any call; ``None`` disables it.
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
    :param deferrable: wait for the API in the triggerer instead of holding a worker slot; by
        default ``[operators] default_deferrable``, read when the DAG file is parsed. On Airflow
        3.3+ the task then starts in the triggerer and a worker only copies the images; where it
        cannot (values from an upstream task's XCom, older Airflow), it defers from a worker.
    :param max_image_bytes: the most bytes accepted for one image.
    :param asset_events: ``"task"``: one event per outlet and task instance (an alias resolves to
        ``s3://{bucket}/imagegen/{dag_id}/{task_id}``); ``"image"``: aliases get one asset per image.
    """

    template_fields: Sequence[str] = TEMPLATED_ARGUMENTS
    template_ext: Sequence[str] = (".j2", ".jinja2")
    template_fields_renderers = {"prompt": "md", "prompts": "json", "s3_tags": "json", "s3_extra_args": "json"}
    ui_color = "#f4e8ff"
    can_start_from_trigger: ClassVar[bool] = True
    """Whether a deferrable task of this class may start in the triggerer (its values are all in the DAG file)."""

    def __init__(
        self,
        *,
        s3_bucket: str,
        prompt: str | None = None,
        prompts: list[str] | str | None = None,
        s3_key_prefix: str | None = None,
        n: int | str = ImageGenerationRequest.n,
        size: str = ImageGenerationRequest.size,
        quality: str = ImageGenerationRequest.quality,
        background: str = ImageGenerationRequest.background,
        moderation: str = ImageGenerationRequest.moderation,
        output_format: str = ImageGenerationRequest.output_format,
        output_compression: int | str | None = ImageGenerationRequest.output_compression,
        min_images: int = 1,
        max_images: int | None = DEFAULT_MAX_IMAGES,
        imagegen_conn_id: str = DEFAULT_CONN_ID,
        aws_conn_id: str | None = "aws_default",
        encrypt: bool = False,
        kms_key_id: str | None = None,
        acl_policy: str | None = None,
        s3_tags: dict[str, str] | None = None,
        s3_extra_args: dict[str, Any] | None = None,
        max_concurrency: int = 4,
        upload_concurrency: int = 10,
        fail_fast: bool = False,
        deferrable: bool | None = None,
        max_image_bytes: int | None = None,
        asset_events: str = "task",
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
        self.min_images, self.max_images = min_images, max_images
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
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.max_image_bytes = max_image_bytes
        self.asset_events = check_asset_events(asset_events)
        self._start_refusal: str | None = None
        if self.deferrable:
            self._start_in_triggerer_if_possible()

    def _start_in_triggerer_if_possible(self) -> None:
        """Let the scheduler defer this task at once, in the triggerer (3.3+), unless something needs a worker."""
        from airflow_provider_imagegen import triggerer_start

        self._start_refusal = triggerer_start.refusal(self)
        if self._start_refusal is None:
            self.start_from_trigger = True
            self.start_trigger_args = triggerer_start.start_args(
                {name: getattr(self, name) for name in triggerer_start.TRIGGER_ARGUMENTS}
            )

    @classmethod
    def partial(cls, **kwargs: Any) -> OperatorPartial:
        """``BaseOperator.partial``; its ``.expand()`` starts deferrable map indexes in the triggerer where it can.

        :param kwargs: the arguments every map index shares.
        """
        made: OperatorPartial = super().partial(**kwargs)
        deferrable = kwargs.get("deferrable")
        if deferrable is None:
            deferrable = default_deferrable()
        if not (deferrable and AIRFLOW_V_3_3_PLUS and cls.can_start_from_trigger):
            return made
        from airflow_provider_imagegen.triggerer_start import starting_partial

        return starting_partial(made)

    # -- hooks (built lazily: never at DAG parse time) ------------------------------------------

    @cached_property
    def hook(self) -> ImageGenHook:
        """The image API hook."""
        from airflow_provider_imagegen.hooks.download import DEFAULT_MAX_IMAGE_BYTES
        from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

        return ImageGenHook(self.imagegen_conn_id, max_image_bytes=self.max_image_bytes or DEFAULT_MAX_IMAGE_BYTES)

    @cached_property
    def s3_hook(self) -> Any:
        """The amazon provider's S3Hook, with a connection pool big enough for every copy thread.

        How the copies upload (part size, one part in memory per copy) is the copier's to say
        (``transfer.Copier``): they use this hook's client, not its transfer methods.
        """
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        copies = self.max_concurrency * self.upload_concurrency
        return S3Hook(
            aws_conn_id=self.aws_conn_id, config={"max_pool_connections": max(10, copies + self.max_concurrency)}
        )

    @cached_property
    def s3_client(self) -> Any:
        """One boto3 client, shared by the copy threads (clients are thread-safe, sessions are not)."""
        return self.s3_hook.get_conn()

    # -- the lifecycle of one try, shared by execute and execute_complete ------------------------

    def execute(self, context: Context) -> list[dict[str, Any]]:
        """Render → validate → generate (or reuse a verified earlier try) → copy → manifest → XCom."""
        if self.deferrable:
            self.log.info("Deferring from the worker, not starting in the triggerer: %s", self._why_on_a_worker())
        return self._generate_or_defer(context)

    def _why_on_a_worker(self) -> str:
        if self._start_refusal is not None:
            return self._start_refusal
        if getattr(self, "_BaseOperator__from_mapped", False) and self.has_dag():
            # unmapped on this worker: its values are resolved now; the mapped task says why
            from airflow_provider_imagegen.triggerer_start import mapped_refusal

            mapped: Any = self.dag.get_task(self.task_id)
            if not getattr(mapped, "start_from_trigger", False):
                why = mapped_refusal(
                    type(self),
                    {**getattr(mapped, "partial_kwargs", {}), "dag": self.dag},
                    getattr(mapped, "expand_input", None),
                )
                if why is not None:
                    return why
        return "this run started the task on a worker (dag.test(), `airflow tasks test`, or a cleared deferral)"

    def _generate_or_defer(self, context: Context) -> list[dict[str, Any]]:
        with self._one_try(context, list_records_first=True) as pipeline:
            if not self.deferrable:
                return self._finish(context, pipeline.plan, pipeline.run())
            images, to_generate = pipeline.reuse_all()
            if not to_generate:
                return self._finish(context, pipeline.plan, images)
            from airflow_provider_imagegen.triggers.imagegen import ImageGenTrigger

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

        After a start in the triggerer the event also holds the values it rendered: the plan is
        built from them, so that what was generated and what is stored follow one rendering.

        :param context: the task's context.
        :param event: the trigger's event: ``{"results": {prompt_index: outcome}}``, plus
            ``{"start": {"rendered": {...}}}`` or ``{"start": {"fallback": why}}`` from the start trigger.
        """
        start = event.get("start")
        if isinstance(start, dict):
            if "fallback" in start:
                self.log.info(
                    "Deferring from the worker: the triggerer could not start the task: %s", start["fallback"]
                )
                return self._generate_or_defer(context)
            for name in TEMPLATED_ARGUMENTS:
                if name in start.get("rendered", {}):
                    setattr(self, name, start["rendered"][name])
            if isinstance(start.get("copied"), dict):
                return self._finish_copied(context, start["copied"])
            self.log.info("Started in the triggerer; this worker copies what it generated")
        with self._one_try(context, list_records_first=False) as pipeline:
            return self._finish(context, pipeline.plan, pipeline.resume_all(event))

    def _finish_copied(self, context: Context, copied: dict[str, Any]) -> list[dict[str, Any]]:
        """The triggerer generated and stored every prompt: no S3 client, no copy; the try's figures
        (the cost line, the metrics the trigger kept) are this task's."""
        from airflow_provider_imagegen.metrics import TryTally

        try:
            plan = self.build_plan(context)
        except ImageGenError as error:
            _reraise_for_airflow(error)
        images = [CopiedImage.from_dict(image) for image in copied.get("images", [])]
        tally = TryTally(self.log)
        tally.replay(copied.get("tally") or {})
        self.log.info(
            "Started in the triggerer, which also stored the images: %d image(s) for %d prompt(s), %.1f MB in s3://%s",
            len(images),
            len(plan.jobs),
            sum(image.size_bytes for image in images) / 1e6,
            plan.bucket,
        )
        self.log.info("%s", tally.summary(len(plan.jobs)))
        return self._finish(context, plan, images)

    def build_plan(self, context: Context) -> Plan:
        """Validate the rendered values (before any call) and lay out one job per prompt.

        :param context: the task's context (``ti`` and ``run_id`` give the default prefix).
        """
        return plan_from({name: getattr(self, name) for name in PLAN_ARGUMENTS}, TaskIdentity.from_context(context))

    def build_jobs(self, context: Context) -> list[PromptJob]:
        """The plan's jobs: one validated request and prefix per prompt.

        :param context: the task's context.
        """
        return list(self.build_plan(context).jobs)

    @contextmanager
    def _one_try(self, context: Context, *, list_records_first: bool) -> Iterator[PromptPipeline]:
        """Plan, parts, clean-up; permanent errors leave as ``AirflowFailException`` (no retries).

        The connections are read and the clients built here, in the task's thread, before any
        copy thread starts: connection lookups talk to the task supervisor, and older task SDKs
        (1.2) can hang when two threads do that at once.
        """
        from airflow_provider_imagegen.pipeline import open_pipeline

        try:
            plan = self.build_plan(context)
            _ = self.hook.settings, self.s3_client
            with open_pipeline(
                plan,
                hook=self.hook,
                s3_client=self.s3_client,
                max_concurrency=self.max_concurrency,
                upload_concurrency=self.upload_concurrency,
                fail_fast=self.fail_fast,
                list_records_first=list_records_first,
                log=self.log,
            ) as pipeline:
                yield pipeline
        except ImageGenError as error:
            _reraise_for_airflow(error)

    # -- what Airflow gets ------------------------------------------------------------------------

    def _finish(self, context: Context, plan: Plan, images: list[CopiedImage]) -> list[dict[str, Any]]:
        """Asset events for the outlets (``assets.emit``), then the XCom value."""
        if self.outlets:
            emit(self.outlets, context["outlet_events"], plan, images, mode=self.asset_events)
        self._stored_images = images
        return [image.to_dict() for image in images]

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


def _reraise_for_airflow(error: ImageGenError) -> NoReturn:
    """Raise ``error``, as :class:`AirflowFailException` (caused by it) when it is permanent."""
    if not error.permanent:
        raise error
    from airflow_provider_imagegen.version_compat import AirflowFailException

    failure = AirflowFailException(f"{type(error).__name__}: {error} (not retried: retrying cannot help)")
    raise failure from error
