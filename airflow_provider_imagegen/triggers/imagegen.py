"""ImageGenTrigger: the deferrable wait for the image API, run in the triggerer's event loop.

It holds only the connection id and the validated request bodies (never the key), reads the
connection with the async API, sends each request on the hook's async path with bounded
concurrency, and fires one small JSON event: per prompt either its image URLs or its error,
with the error's class kept so that a permanent error stays permanent on the worker.

Nothing here blocks the triggerer's event loop: the hook's async client is one connection pool
per trigger run, sharing one TLS context per process (built in a worker thread the first time),
the connection comes from ``aget_connection``, and every request is awaited. Cancelling
``run()`` (trigger timeout, triggerer shutdown, the task being killed) cancels the requests in
flight and closes the pool.

Trade-off: the API is synchronous, so a triggerer restart mid-request sends that request again
(and it may be billed twice). The worker-side retry safety (manifest, recorded URLs) still holds.

``ImageGenStartTrigger`` starts a whole task in the triggerer (Airflow 3.3+): the same calls, and
the S3 reads, records and copies in threads of the triggerer, with the worker's code.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from airflow_provider_imagegen.exceptions import ImageGenError, event_from_error

# imported here, not inside run(): an import inside the event loop would block it
from airflow_provider_imagegen.hooks.download import DEFAULT_MAX_IMAGE_BYTES
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
from airflow_provider_imagegen.metrics import TryTally
from airflow_provider_imagegen.models import ImageGenerationRequest
from airflow_provider_imagegen.pipeline import open_pipeline, usable_urls
from airflow_provider_imagegen.plan import TaskIdentity, plan_from
from airflow_provider_imagegen.records import Generation, RecordStore, utcnow_iso
from airflow_provider_imagegen.triggerer_start import CannotStart, render, task_arguments

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from airflow_provider_imagegen.plan import Plan, PromptJob


class ImageGenTrigger(BaseTrigger):
    """Generate images for one or more prompts in the triggerer.

    :param imagegen_conn_id: the ``imagegen`` connection (only its id is serialised).
    :param requests: prompt index → request body (as built by ``ImageGenerationRequest.to_json``).
    :param max_concurrency: requests in flight at once.
    """

    def __init__(
        self,
        imagegen_conn_id: str,
        requests: dict[int, dict[str, Any]] | dict[str, dict[str, Any]],
        max_concurrency: int = 4,
    ) -> None:
        super().__init__()
        self.imagegen_conn_id = imagegen_conn_id
        self.requests = {str(index): dict(body) for index, body in requests.items()}
        self.max_concurrency = max(1, int(max_concurrency))

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and kwargs; the kwargs hold no secret."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "imagegen_conn_id": self.imagegen_conn_id,
                "requests": self.requests,
                "max_concurrency": self.max_concurrency,
            },
        )

    def _hook(self) -> ImageGenHook:
        return ImageGenHook(self.imagegen_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Send every request (bounded), then yield one event with every prompt's outcome."""
        hook = self._hook()
        try:
            results = await self._generate_all(hook)
        finally:
            await hook.aclose()
        yield TriggerEvent({"results": results})

    async def _generate_all(self, hook: ImageGenHook) -> dict[str, dict[str, Any]]:
        unusable = await connection_failure(hook, self.log)
        if unusable is not None:
            return {index: dict(unusable) for index in self.requests}
        gate = asyncio.Semaphore(self.max_concurrency)
        requests, invalid = {}, {}
        for index, body in self.requests.items():
            try:
                requests[index] = ImageGenerationRequest.build(**body)
            except Exception as error:  # a body that is not a valid request: that prompt's error, no call
                invalid[index] = event_from_error(_as_imagegen_error(error))
        outcomes = {**invalid, **await generate_each(hook, requests, gate, self.log)}
        return {index: outcomes[index] for index in self.requests}


async def connection_failure(hook: ImageGenHook, log: Any) -> dict[str, Any] | None:
    """Read the connection once, with the async API, before fanning out; its error as an outcome, or None."""
    try:
        await hook.asettings()
    except Exception as error:
        failed = event_from_error(_as_imagegen_error(error))
        log.error("Connection %r unusable: %s", hook.imagegen_conn_id, failed["message"])
        return failed
    return None


async def generate_each(
    hook: ImageGenHook,
    requests: dict[str, ImageGenerationRequest],
    gate: asyncio.Semaphore,
    log: Any,
    *,
    then: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Send each request through ``gate``; every prompt's outcome: its image URLs, or its error (class kept).

    :param hook: the image API hook (its connection already read).
    :param requests: prompt index → request.
    :param gate: bounds the requests in flight.
    :param log: the trigger's logger.
    :param then: awaited with each successful outcome as soon as its call returns (outside the gate).
    """

    async def one(index: str) -> dict[str, Any]:
        async with gate:
            try:
                result = await hook.asend(requests[index])
            except Exception as error:
                outcome = event_from_error(_as_imagegen_error(error))
                log.warning("Prompt %s failed: %s: %s", index, outcome["error_class"], outcome["message"])
                return outcome
        log.info(
            "Prompt %s: %d image URL(s) in %.1f s (%d attempt(s))",
            index,
            len(result.image_urls),
            result.elapsed,
            result.attempts,
        )
        outcome = {
            "status": "success",
            "generated_at": utcnow_iso(),
            "image_urls": result.image_urls,
            "elapsed": round(result.elapsed, 3),
            "attempts": result.attempts,
            "request_id": result.request_id,
        }
        if then is not None:
            await then(index, outcome)
        return outcome

    indexes = list(requests)
    outcomes = await asyncio.gather(*(one(index) for index in indexes))
    return dict(zip(indexes, outcomes, strict=True))


_GATES: weakref.WeakValueDictionary[tuple[int, str, str, str, str], asyncio.Semaphore] = weakref.WeakValueDictionary()
"""One gate per task and run (its map indexes share it) and event loop: ``max_concurrency`` calls at
once. Weak: a gate goes when no trigger of its task holds it, so a long-lived triggerer keeps none."""

COPIES_AT_ONCE = 8
"""Tasks a triggerer copies to S3 at once (each as a worker would: ``max_concurrency`` prompts,
``upload_concurrency`` images each, one part in memory per image); the others wait their turn."""

_COPIES: list[ThreadPoolExecutor] = []  # the triggerer's copy threads, started with its first copy
_S3_CLIENTS: dict[tuple[str, str], Any] = {}
_S3_CLIENTS_LOCK = threading.Lock()
_S3_CLIENTS_KEPT = 16
_S3_POOL = 64  # the shared client's connections: every copy thread of every task copying at once


def shared_s3_client(aws_conn_id: str | None) -> Any:
    """One boto3 S3 client per AWS connection for the whole triggerer (blocking: call it in a thread).

    Building a client costs about 0.2 s of CPU (botocore reads the S3 model); boto3 clients are
    thread-safe, so every trigger of the process shares one. The key is the connection as it is
    now (a digest of its values, kept in memory only): an edited connection gets a new client.

    :param aws_conn_id: the AWS connection id (None: boto3's own credential chain).
    """
    hook = S3Hook(aws_conn_id=aws_conn_id, config={"max_pool_connections": _S3_POOL})
    wrapper = hook.conn_config
    values = {item.name: getattr(wrapper, item.name, None) for item in fields(wrapper)}
    values.pop("botocore_config", None)  # ours, the same for every trigger
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=repr).encode()).hexdigest()
    key = (str(aws_conn_id), digest)
    with _S3_CLIENTS_LOCK:
        client = _S3_CLIENTS.get(key)
        if client is None:
            if len(_S3_CLIENTS) >= _S3_CLIENTS_KEPT:
                _S3_CLIENTS.clear()
            client = _S3_CLIENTS[key] = hook.get_conn()
    return client


def _copy_threads() -> ThreadPoolExecutor:
    with _S3_CLIENTS_LOCK:
        if not _COPIES:
            _COPIES.append(ThreadPoolExecutor(max_workers=COPIES_AT_ONCE, thread_name_prefix="imagegen-trigger-copy"))
        return _COPIES[0]


class ImageGenStartTrigger(BaseTrigger):
    """Start an ``ImageGenToS3Operator`` task in the triggerer, so that a worker only finishes it (Airflow 3.3+).

    The scheduler creates it with the operator's arguments as written in the DAG file
    (``triggerer_start.start_args``); the triggerer gives it the task instance and its context.
    It then does what ``execute()`` does: renders the templated arguments, builds the plan (the
    same validation, before any call), leaves to the worker every prompt an earlier try stored or
    paid for (reading S3 in threads, never in the event loop), generates the others (the task's
    map indexes share ``max_concurrency`` calls at once) and records each one's URLs in S3 as its
    call returns: a triggerer restart after that pays nothing again. When every prompt was
    generated, it copies and commits them with the worker's pipeline in one of the triggerer's
    copy threads (``COPIES_AT_ONCE`` tasks at once, one S3 client per AWS connection for the
    whole triggerer); a copy that fails is left to the worker.

    The event holds the rendered values (the worker builds its plan from them: one rendering
    decides), each generated prompt's URLs or error, and after a copy the stored images and the
    try's figures (the worker sends the metrics and logs the cost line). When it cannot start the
    task (a value it cannot render, a mapped value it cannot read), its event hands the task back
    to a worker, which defers it the classic way (``ImageGenTrigger``).

    :param arguments: the operator's arguments (``triggerer_start.TRIGGER_ARGUMENTS``), unrendered;
        connection ids, never a secret.
    """

    template_ext: Sequence[str] = (".j2", ".jinja2")  # the operator's: these values name template files

    def __init__(self, arguments: dict[str, Any]) -> None:
        super().__init__()
        self.arguments = dict(arguments)
        self._context: Any = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and kwargs; the kwargs hold no secret."""
        return f"{type(self).__module__}.{type(self).__qualname__}", {"arguments": self.arguments}

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Keep the task's context: ``run()`` renders the operator's values with it.

        The triggerer's own rendering would use a bare environment (no template files, undefined
        names rendered as nothing), unlike a worker's.

        :param context: the task instance's template context.
        :param jinja_env: unused.
        """
        self._context = context

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Start the task; one event: the rendered values and every generated prompt's outcome."""
        try:
            event = await self._start()
        except CannotStart as why:
            self.log.warning("Handing the task back to a worker, which defers it from there: %s", why)
            event = {"start": {"fallback": str(why)}}
        yield TriggerEvent(event)

    async def _start(self) -> dict[str, Any]:
        ti: Any = self.task_instance
        task = getattr(ti, "task", None)
        if self._context is None or task is None:
            raise CannotStart("the triggerer gave the trigger no task context")
        map_index = getattr(ti, "map_index", -1)
        values = task_arguments(self.arguments, task, map_index)
        # rendering may read template files and the context's lazy values (supervisor calls): asgiref's thread
        native = getattr(task, "render_template_as_native_obj", None)  # the task's own choice, else the DAG's
        if native is None:
            native = bool(getattr(getattr(task, "dag", None), "render_template_as_native_obj", False))
        self.render_template_as_native_obj = native  # what Templater.render_template reads
        rendered = await sync_to_async(render)(self, values, self._context, _searchpath(task), native=native)
        values.update(rendered)
        started: dict[str, Any] = {"start": {"rendered": rendered}, "results": {}}
        identity = TaskIdentity(
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=-1 if map_index is None else map_index,
            try_number=getattr(ti, "try_number", None),
        )
        try:
            plan = plan_from(values, identity)
        except ImageGenError as error:
            self.log.error("Started in the triggerer; the task's values are not valid, the worker fails it: %s", error)
            return started
        store = await self._record_store(plan, values)
        left = await self._left_by_earlier_tries(plan, store)
        to_generate = [job for job in plan.jobs if job.prompt_index not in left]
        self.log.info(
            "Started in the triggerer: %d prompt(s), %d to generate, %d left to the worker (an earlier try's)",
            len(plan.jobs),
            len(to_generate),
            len(left),
        )
        if not to_generate:
            return started
        hook = ImageGenHook(
            values["imagegen_conn_id"], max_image_bytes=values["max_image_bytes"] or DEFAULT_MAX_IMAGE_BYTES
        )
        try:
            unusable = await connection_failure(hook, self.log)
            if unusable is not None:
                results = {str(job.prompt_index): dict(unusable) for job in to_generate}
            else:
                gate = _task_gate(identity, values["imagegen_conn_id"], int(values["max_concurrency"]))
                jobs = {str(job.prompt_index): job for job in to_generate}
                requests = {index: job.request for index, job in jobs.items()}

                async def record(index: str, outcome: dict[str, Any]) -> None:
                    if store is not None:
                        await self._record_urls(plan, jobs[index], outcome, store)

                results = await generate_each(hook, requests, gate, self.log, then=record)
            started["results"] = results
            copies_here = not left and {"upload_concurrency", "fail_fast"} <= values.keys()
            succeeded = all(outcome.get("status") == "success" for outcome in results.values())
            if store is not None and copies_here and succeeded:
                copied = await self._copy(plan, values, hook, store, started)
                if copied is not None:
                    started["start"]["copied"] = copied
        finally:
            await hook.aclose()
        return started

    async def _record_store(self, plan: Plan, values: dict[str, Any]) -> RecordStore | None:
        """The S3 records of the plan's bucket; None when the S3 connection cannot be used here."""
        try:
            # the connection read talks to the supervisor: asgiref's thread, as every sync read in a trigger
            client = await sync_to_async(shared_s3_client)(values["aws_conn_id"])
        except Exception as error:
            self.log.warning("Cannot reach S3 from the triggerer (%s); the worker reads the records", error)
            return None
        return RecordStore(client, plan.bucket, upload_args=plan.upload_args, log=self.log)

    async def _copy(
        self, plan: Plan, values: dict[str, Any], hook: ImageGenHook, store: RecordStore, event: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Copy and commit every prompt here, as the worker would (the same pipeline, in a copy thread).

        The worker is then left with XCom, asset events and the cost line: no S3 client to build,
        no image to move. Anything that goes wrong leaves the copy to the worker, which starts it
        again from the recorded URLs (no new API call).

        :returns: the stored images and the try's tally (its metrics kept for the worker to send), or None.
        """
        tally = TryTally(self.log, send=False)

        def copy() -> list[Any]:
            with open_pipeline(
                plan,
                hook=hook,
                s3_client=store.s3_client,
                max_concurrency=int(values["max_concurrency"]),
                upload_concurrency=int(values["upload_concurrency"]),
                fail_fast=bool(values["fail_fast"]),
                list_records_first=False,
                log=self.log,
                tally=tally,
            ) as pipeline:
                return pipeline.resume_all(event)

        try:
            # with the trigger's context: the triggerer routes the copy's log lines to the task's trigger log by it
            run_here = contextvars.copy_context().run
            images = await asyncio.get_running_loop().run_in_executor(_copy_threads(), run_here, copy)
        except Exception as error:
            self.log.warning("Cannot copy the images from the triggerer (%s); the worker copies them", error)
            return None
        return {"images": [image.to_dict() for image in images], "tally": tally.export()}

    async def _left_by_earlier_tries(self, plan: Plan, store: RecordStore | None) -> set[int]:
        """The prompts an earlier try stored or paid for (the worker reuses or copies them); all when unknown."""
        every = {job.prompt_index for job in plan.jobs}
        if store is None:
            return every

        def look() -> set[int]:
            store.list_records(plan.list_prefix, nested=plan.batch)
            return {
                job.prompt_index for job in plan.jobs if store.reuse(job) is not None or store.pending(job) is not None
            }

        try:
            return await asyncio.to_thread(look)
        except Exception as error:
            self.log.warning("Cannot read what earlier tries left (%s); the worker reads it and generates", error)
            return every

    async def _record_urls(self, plan: Plan, job: PromptJob, outcome: dict[str, Any], store: RecordStore) -> None:
        """Record a generated prompt's URLs in S3 as soon as its call returns, before the event: a
        restarted trigger then pays nothing again for it."""

        def record() -> None:
            try:
                urls = usable_urls(outcome["image_urls"], job.request.n, plan.min_images)
            except ImageGenError:
                return  # too few images: the worker fails the prompt (permanently), nothing to reuse
            generation = Generation(
                generated_at=outcome.get("generated_at") or utcnow_iso(),
                generation_seconds=outcome.get("elapsed"),
                request_id=outcome.get("request_id"),
            )
            store.record_pending(job, urls, generation, try_number=plan.task.try_number)
            outcome["recorded"] = True  # the worker need not write it again

        try:
            await asyncio.to_thread(record)
        except Exception as error:
            self.log.warning(
                "Prompt %d: cannot record the generated URLs yet (%s); the worker records them", job.prompt_index, error
            )


def _searchpath(task: Any) -> list[str]:
    """Where the task's template files are: its DAG file's folder, then the DAG's ``template_searchpath``."""
    dag = getattr(task, "dag", None)
    fileloc = getattr(dag, "fileloc", None)
    paths = [os.path.dirname(fileloc)] if isinstance(fileloc, str) and fileloc else []
    extra = getattr(dag, "template_searchpath", None) or []
    return paths + ([extra] if isinstance(extra, str) else list(extra))


def _task_gate(task: TaskIdentity, conn_id: str, limit: int) -> asyncio.Semaphore:
    key = (id(asyncio.get_running_loop()), task.dag_id, task.run_id, task.task_id, conn_id)
    gate = _GATES.get(key)
    if gate is None:
        gate = _GATES[key] = asyncio.Semaphore(max(1, limit))
    return gate


def _as_imagegen_error(error: Exception) -> ImageGenError:
    """Our errors as they are; anything else (a missing connection, a bug) as a retryable base error."""
    if isinstance(error, ImageGenError):
        return error
    return ImageGenError(f"{type(error).__name__}: {error}")
