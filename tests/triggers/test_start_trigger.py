"""Starting a task in the triggerer (Airflow 3.3+), in process: the trigger as the triggerer builds it.

Each test puts the operator in a DAG, serialises and deserialises it as the scheduler and the
triggerer do, builds the trigger from the task's ``start_trigger_args`` (through the trigger
table's encryption and decoding), gives it the task instance and a context, and runs it against
the emulator and the moto server; the worker's part is ``execute_complete`` with the event.
``tests/deployment/test_triggerer_start.py`` runs the same through real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_imagegen.exceptions import ImageGenDownloadError
from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_3_PLUS, AirflowFailException, TaskDeferred
from tests.support import list_keys, make_context, multipart_uploads, object_sha256, read_json
from tests.triggers.starting import (
    START_CLASSPATH,
    copy,
    deserialised,
    in_a_dag,
    start,
    trigger_context,
    trigger_of,
)

if TYPE_CHECKING:
    from collections.abc import Callable

needs_3_3 = pytest.mark.skipif(
    not AIRFLOW_V_3_3_PLUS,
    reason="Airflow 3.1 and 3.2 do not start tasks in the triggerer (the first test checks that they refuse)",
)


@pytest.fixture(autouse=True)
def a_fresh_triggerer(monkeypatch) -> None:
    """Each test is a triggerer of its own: no S3 client shared from an earlier one."""
    from airflow_provider_imagegen.triggers import imagegen

    monkeypatch.setattr(imagegen, "_S3_CLIENTS", {})


@pytest.fixture
def copy_left_to_the_worker(monkeypatch) -> None:
    """The trigger records the URLs but stores nothing (as when its copy fails): the worker copies."""
    from airflow_provider_imagegen.triggers.imagegen import ImageGenStartTrigger

    async def not_here(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(ImageGenStartTrigger, "_copy", not_here)


class Metrics:
    """What the tallies send to Airflow's metrics, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int | float]] = []

    def incr(self, name: str, count: int = 1, tags: Any = None) -> None:
        self.sent.append((name, count))

    def timing(self, name: str, value: float, tags: Any = None) -> None:
        self.sent.append((name, value))

    def counts(self) -> dict[str, int | float]:
        totals: dict[str, int | float] = {}
        for name, value in self.sent:
            if not name.endswith(("generation", "copy_to_s3")):
                totals[name] = totals.get(name, 0) + value
        return totals


@pytest.fixture
def metrics(monkeypatch) -> Metrics:
    from airflow_provider_imagegen import version_compat

    sent = Metrics()
    monkeypatch.setattr(version_compat, "stats_facade", lambda: sent)
    return sent


@pytest.fixture
def in_dag(make_op) -> Callable[..., Any]:
    """``make_op`` inside a DAG (deferrable by default), so that it can be serialised."""

    def build(dag_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("deferrable", True)
        with in_a_dag(**(dag_kwargs or {})):
            return make_op(**kwargs)

    return build


# -- where a task starts ----------------------------------------------------------------------------


def test_a_deferrable_task_starts_in_the_triggerer_only_from_airflow_3_3(in_dag) -> None:
    op = in_dag()

    assert op.start_from_trigger is AIRFLOW_V_3_3_PLUS
    if not AIRFLOW_V_3_3_PLUS:
        assert op.start_trigger_args is None
        assert "starts tasks on workers only (3.3 can start them in the triggerer)" in op._why_on_a_worker()


def test_a_task_that_does_not_defer_never_starts_in_the_triggerer(in_dag) -> None:
    assert in_dag(deferrable=False).start_from_trigger is False


@needs_3_3
def test_values_from_an_upstream_xcom_keep_the_task_on_a_worker(make_op, aws_conn, s3_bucket) -> None:
    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

    with in_a_dag():
        upstream = make_op(task_id="upstream", deferrable=False)
        from_xcom = make_op(task_id="from_xcom", prompt=upstream.output, deferrable=True)
        mapped_xcom = ImageGenToS3Operator.partial(task_id="mapped_xcom", s3_bucket=s3_bucket, deferrable=True).expand(
            prompt=upstream.output
        )
        two_args = ImageGenToS3Operator.partial(task_id="two_args", s3_bucket=s3_bucket, deferrable=True).expand(
            prompt=["a", "b"], size=["1024x1024", "auto"]
        )
        literal = ImageGenToS3Operator.partial(task_id="literal", s3_bucket=s3_bucket, deferrable=True).expand(
            prompt=["a", "b"]
        )
        kwargs_list = ImageGenToS3Operator.partial(
            task_id="kwargs", s3_bucket=s3_bucket, deferrable=True
        ).expand_kwargs([{"prompt": "a"}, {"prompt": "b", "n": 2}])
        not_deferrable = ImageGenToS3Operator.partial(task_id="plain", s3_bucket=s3_bucket).expand(prompt=["a"])

    assert from_xcom.start_from_trigger is False
    assert from_xcom._why_on_a_worker() == "`prompt` comes from an upstream task's XCom, which only a worker resolves"
    assert mapped_xcom.start_from_trigger is False
    assert two_args.start_from_trigger is False
    assert not_deferrable.start_from_trigger is False
    # on the worker, unmapped with its values resolved, a map index still says why it is there
    assert mapped_xcom.unmap({"params": {}, "prompt": "resolved"})._why_on_a_worker() == (
        "the task is mapped over an upstream task's XCom, which only a worker resolves"
    )
    assert two_args.unmap({"params": {}, "prompt": "a", "size": "auto"})._why_on_a_worker() == (
        "the task is mapped over more than one argument"
    )
    assert (
        literal.unmap({"params": {}, "prompt": "a"})
        ._why_on_a_worker()
        .startswith("this run started the task on a worker")
    )
    for mapped in (literal, kwargs_list):
        assert mapped.start_from_trigger is True
        serialised = deserialised(mapped)
        assert serialised.start_from_trigger is True
        assert trigger_of(serialised).arguments["s3_bucket"] == s3_bucket


@needs_3_3
def test_the_decorator_never_starts_in_the_triggerer(imagegen_conn, aws_conn, s3_bucket) -> None:
    from airflow.sdk import task

    import airflow_provider_imagegen.decorators  # noqa: F401  (registers @task.imagegen)

    with in_a_dag():

        @task.imagegen(s3_bucket=s3_bucket, deferrable=True)
        def banner() -> str:
            return "a lighthouse"

        made = banner()

    assert made.operator.start_from_trigger is False


@needs_3_3
def test_the_trigger_kwargs_hold_the_dag_file_values_and_no_secret(in_dag, emulator) -> None:
    op = in_dag(prompt="banner for {{ ds }}", s3_tags={"team": "{{ params.team }}"})
    trigger = trigger_of(deserialised(op))

    assert trigger.arguments["prompt"] == "banner for {{ ds }}"
    assert trigger.arguments["s3_tags"] == {"team": "{{ params.team }}"}
    assert trigger.arguments["imagegen_conn_id"] == op.imagegen_conn_id
    assert trigger.serialize() == (START_CLASSPATH, {"arguments": trigger.arguments})
    assert emulator.api_key not in json.dumps(trigger.serialize(), default=str)
    assert emulator.api_key not in json.dumps(op.start_trigger_args.trigger_kwargs, default=str)


# -- what the trigger does ------------------------------------------------------------------------


@needs_3_3
def test_the_trigger_renders_generates_and_stores_and_the_worker_only_finishes(
    in_dag, emulator, s3, s3_bucket, task_logs, metrics
) -> None:
    op = in_dag(prompt="banner for {{ ds }}, {{ params.theme }}", n=2)

    event = start(op, params={"theme": "a lighthouse"})

    assert event["start"]["rendered"]["prompt"] == "banner for 2026-12-05, a lighthouse"
    outcome = event["results"]["0"]
    assert outcome["status"] == "success"
    assert len(outcome["image_urls"]) == 2
    calls = emulator.state.generation_calls()
    assert [call.body["prompt"] for call in calls] == ["banner for 2026-12-05, a lighthouse"]
    stored = event["start"]["copied"]["images"]
    keys = list_keys(s3, s3_bucket)
    assert sorted(image["key"] for image in stored) == sorted(key for key in keys if key.endswith(".png"))
    assert len(stored) == 2, "the trigger stored both images before it fired"
    assert [key for key in keys if key.endswith("/manifest.json")], "and committed them"
    assert not [key for key in keys if key.endswith("/_pending.json")], "the record goes once the manifest is in"
    assert metrics.sent == [], "the trigger keeps its metrics for the task"

    worker = in_dag(prompt="something the worker would render otherwise", n=2, real_s3_client=True)
    xcom = copy(worker, event)

    assert xcom == stored
    assert "s3_client" not in worker.__dict__, "no S3 client on the worker"
    assert "s3_hook" not in worker.__dict__
    assert len(emulator.state.generation_calls()) == 1
    manifest = read_json(s3, s3_bucket, xcom[0]["key"].rsplit("/", 1)[0] + "/manifest.json")
    assert manifest["prompt"] == "banner for 2026-12-05, a lighthouse", "the plan follows the trigger's rendering"
    assert manifest["generated_at"] == outcome["generated_at"], "when the trigger's call answered"
    assert [object_sha256(s3, s3_bucket, image["key"]) for image in xcom] == [image["sha256"] for image in xcom]
    assert metrics.counts() == {
        "imagegen.generation_calls.success": 1,
        "imagegen.images_stored": 2,
        "imagegen.bytes_stored": sum(image["size_bytes"] for image in xcom),
    }, "sent once, by the task"
    logs = task_logs()
    assert "Started in the triggerer: 1 prompt(s), 1 to generate, 0 left to the worker" in logs
    assert "Started in the triggerer, which also stored the images: 2 image(s) for 1 prompt(s)" in logs
    assert logs.count("Cost of this try: 1 paid generation call(s)") == 1
    assert "images requested 2, received 2, stored 2" in logs
    assert emulator.api_key not in logs + json.dumps(event) + json.dumps(xcom)


@needs_3_3
def test_when_the_triggerer_cannot_copy_the_worker_copies_the_recorded_urls(
    in_dag, emulator, s3, s3_bucket, task_logs, metrics
) -> None:
    op = in_dag(n=2)
    emulator.configure(truncate_bodies=True)  # the image host cuts the downloads short, for the trigger only

    event = start(op)

    emulator.configure(truncate_bodies=False)
    assert "copied" not in event["start"]
    assert not [key for key in list_keys(s3, s3_bucket) if key.endswith((".png", "manifest.json"))]
    assert "Cannot copy the images from the triggerer" in task_logs()
    pending = [key for key in list_keys(s3, s3_bucket) if key.endswith("/_pending.json")]
    assert read_json(s3, s3_bucket, pending[0])["image_urls"] == event["results"]["0"]["image_urls"]

    xcom = copy(op, event)

    assert len(xcom) == 2
    assert len(emulator.state.generation_calls()) == 1, "the worker copies the recorded URLs: no second call"
    assert [object_sha256(s3, s3_bucket, image["key"]) for image in xcom] == [image["sha256"] for image in xcom]
    assert metrics.counts()["imagegen.generation_calls.success"] == 1
    assert metrics.counts()["imagegen.images_stored"] == 2
    logs = task_logs()
    assert "Started in the triggerer; this worker copies what it generated" in logs
    assert logs.count("Cost of this try: 1 paid generation call(s)") == 1


@needs_3_3
@pytest.mark.parametrize(
    ("knobs", "kwargs", "message", "permanent"),
    [
        ({"wrong_format": True}, {}, "png was asked", True),
        ({"wrong_dimensions": True, "noise": True}, {"size": "3840x2160"}, "3840x2160 was asked", True),
        ({"image_content_type": "text/html"}, {}, "text/html", True),
        ({"noise": True}, {"size": "3840x2160", "max_image_bytes": 1_000_000}, "above the cap", False),
    ],
    ids=["jpeg-for-png", "wrong-size-multipart", "html", "over-the-byte-cap"],
)
def test_a_hostile_image_host_gets_nothing_into_s3_from_the_triggerer(
    in_dag, emulator, s3, s3_bucket, task_logs, knobs, kwargs, message, permanent
) -> None:
    from airflow_provider_imagegen.exceptions import ImageGenError

    emulator.configure(**knobs)
    op = in_dag(**kwargs)

    event = start(op)

    assert "copied" not in event["start"], "the triggerer stored what the host lied about"
    assert [key for key in list_keys(s3, s3_bucket) if not key.endswith("/_pending.json")] == []
    assert multipart_uploads(s3, s3_bucket) == [], "an upload left open in the triggerer"
    assert "Cannot copy the images from the triggerer" in task_logs()
    with pytest.raises((AirflowFailException, ImageGenError), match=message) as failed:
        copy(op, event)  # the worker meets the same bytes
    # as on a worker: bytes served for this request fail at once; a body over the cap is retried (copy only)
    assert isinstance(failed.value, AirflowFailException) is permanent
    assert [key for key in list_keys(s3, s3_bucket) if not key.endswith("/_pending.json")] == []
    assert multipart_uploads(s3, s3_bucket) == []
    assert len(emulator.state.generation_calls()) == 1


@needs_3_3
def test_the_triggers_of_one_triggerer_share_one_s3_client_per_connection(
    in_dag, emulator, aws_conn, monkeypatch
) -> None:
    from airflow_provider_imagegen.triggers import imagegen

    for _ in range(3):
        op = in_dag()
        assert len(copy(op, start(op))) == 1

    assert len(imagegen._S3_CLIENTS) == 1, "built once, used by three triggers"
    first = next(iter(imagegen._S3_CLIENTS.values()))
    assert "a-rotated-secret-key" not in repr(imagegen._S3_CLIENTS)

    rotated = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])
    rotated["password"] = "a-rotated-secret-key"  # the admin rotates the key: a client of its own
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(rotated))
    op = in_dag()
    assert len(copy(op, start(op))) == 1
    assert len(imagegen._S3_CLIENTS) == 2
    assert first in imagegen._S3_CLIENTS.values()


@needs_3_3
def test_a_rerun_of_a_finished_task_makes_no_call(in_dag, emulator) -> None:
    op = in_dag(n=2)
    first = copy(op, start(op))

    event = start(op, try_number=2)

    assert event["results"] == {}, "nothing to generate: the worker reuses the verified manifest"
    assert copy(op, event, try_number=2) == first
    assert len(emulator.state.generation_calls()) == 1


@needs_3_3
def test_urls_recorded_before_a_triggerer_restart_are_not_paid_again(
    in_dag, emulator, s3, s3_bucket, task_logs, copy_left_to_the_worker
) -> None:
    op = in_dag(n=2)
    start(op)  # the triggerer dies after the record, before its copy and its event

    event = start(op)  # the restarted triggerer runs the trigger again

    assert event["results"] == {}
    xcom = copy(op, event)
    assert len(xcom) == 2
    assert len(emulator.state.generation_calls()) == 1
    logs = task_logs()
    assert "copying the 2 image(s) this try's trigger generated before the triggerer restarted" in logs
    assert "Cost of this try: 1 paid generation call(s)" in logs, "the call this try paid is counted once"


@needs_3_3
def test_a_try_that_failed_after_the_trigger_pays_nothing_again(
    in_dag, emulator, s3, s3_bucket, task_logs, copy_left_to_the_worker
) -> None:
    op = in_dag(n=1)
    event = start(op)
    emulator.configure(truncate_bodies=True)
    with pytest.raises(ImageGenDownloadError) as failed:
        copy(op, event)  # the copy fails on the worker: the task is retried
    assert not failed.value.permanent
    emulator.configure(truncate_bodies=False)

    retry = start(op, try_number=2)

    assert retry["results"] == {}
    assert len(copy(op, retry, try_number=2)) == 1
    assert len(emulator.state.generation_calls()) == 1
    assert "Cost of this try: 0 paid generation call(s)" in task_logs(), "try 1 paid, not try 2"


@needs_3_3
def test_invalid_values_are_refused_before_any_call(in_dag, emulator) -> None:
    op = in_dag(n="{{ params.n }}")

    event = start(op, params={"n": 11})

    assert event == {"start": {"rendered": event["start"]["rendered"]}, "results": {}}
    assert emulator.state.generation_calls() == []
    with pytest.raises(AirflowFailException, match="n"):
        copy(op, event)


@needs_3_3
def test_a_permanent_api_error_fails_the_task_without_retries(in_dag, emulator) -> None:
    op = in_dag(prompt="something forbidden")

    event = start(op)

    assert event["results"]["0"]["error_class"] == "ImageGenContentPolicyError"
    with pytest.raises(AirflowFailException, match="ImageGenContentPolicyError"):
        copy(op, event)
    assert len(emulator.state.generation_calls()) == 1


@needs_3_3
def test_what_the_triggerer_cannot_render_goes_back_to_a_worker(in_dag, emulator, task_logs) -> None:
    op = in_dag(dag_kwargs={"user_defined_macros": {"mood": lambda: "calm"}}, prompt="a {{ mood() }} sea")

    event = start(op)

    assert set(event) == {"start"}
    assert "the triggerer cannot render `prompt` (UndefinedError" in event["start"]["fallback"]
    assert emulator.state.generation_calls() == []
    op.render_template_fields(make_context() | {"mood": lambda: "calm"})
    with pytest.raises(TaskDeferred) as deferred:
        copy(op, event)
    assert type(deferred.value.trigger).__name__ == "ImageGenTrigger"
    assert "Deferring from the worker: the triggerer could not start the task:" in task_logs()


@needs_3_3
def test_template_files_are_read_from_the_dag_folder(in_dag, tmp_path, emulator) -> None:
    (tmp_path / "banner.j2").write_text("a banner for {{ ds }}")
    op = in_dag(prompt="banner.j2")
    op.dag.fileloc = str(tmp_path / "dag.py")

    event = start(op)

    assert event["start"]["rendered"]["prompt"] == "a banner for 2026-12-05"
    assert [call.body["prompt"] for call in emulator.state.generation_calls()] == ["a banner for 2026-12-05"]


@needs_3_3
def test_map_indexes_read_their_own_value_and_share_max_concurrency(make_op, emulator, s3_bucket, s3) -> None:
    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

    with in_a_dag():
        make_op(task_id="anchor")  # the fixtures' connections
        mapped = ImageGenToS3Operator.partial(
            task_id="generate", s3_bucket=s3_bucket, deferrable=True, max_concurrency=2
        ).expand(prompt=["p0 {{ ds }}", "p1", "p2", "p3"])
    emulator.configure(latency=0.4)
    serialised = deserialised(mapped)

    async def all_four() -> list[Any]:
        async def one(index: int) -> Any:
            trigger = trigger_of(serialised)
            ctx = trigger_context(serialised, map_index=index)
            trigger.task_instance = ctx["ti"]
            trigger.render_template_fields(context=ctx)
            return [event async for event in trigger.run()].pop().payload

        return await asyncio.gather(*(one(index) for index in range(4)))

    events = asyncio.run(all_four())

    assert [event["start"]["rendered"]["prompt"] for event in events] == ["p0 2026-12-05", "p1", "p2", "p3"]
    assert emulator.stats()["max_in_flight_generations"] == 2
    manifests = sorted(key for key in list_keys(s3, s3_bucket) if key.endswith("/manifest.json"))
    assert [key.split("/")[-2] for key in manifests] == ["0", "1", "2", "3"], "each map index under its own prefix"
    assert [len(event["start"]["copied"]["images"]) for event in events] == [1, 1, 1, 1]


@needs_3_3
def test_s3_is_read_and_written_off_the_event_loop(in_dag, monkeypatch) -> None:
    from airflow_provider_imagegen.records import RecordStore
    from airflow_provider_imagegen.transfer import Copier

    threads: list[str] = []
    copies: list[str] = []
    real_list, real_copy = RecordStore.list_records, Copier.copy

    def spy(self: Any, prefix: str, *, nested: bool) -> None:
        threads.append(threading.current_thread().name)
        real_list(self, prefix, nested=nested)

    def copy_spy(self: Any, *args: Any) -> Any:
        copies.append(threading.current_thread().name)
        return real_copy(self, *args)

    monkeypatch.setattr(RecordStore, "list_records", spy)
    monkeypatch.setattr(Copier, "copy", copy_spy)
    op = in_dag(n=2)

    event = start(op)

    assert len(event["start"]["copied"]["images"]) == 2
    assert threads
    assert threads[0] != threading.main_thread().name
    assert len(copies) == 2
    assert threading.main_thread().name not in copies, "the copies run in threads, not in the event loop"


@needs_3_3
def test_jinja_options_the_triggerer_lacks_keep_the_task_on_a_worker(in_dag, s3_bucket) -> None:
    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

    options = {"jinja_environment_kwargs": {"variable_start_string": "[[", "variable_end_string": "]]"}}
    op = in_dag(dag_kwargs=options, prompt="banner for [[ ds ]]")
    with in_a_dag(**options):
        mapped = ImageGenToS3Operator.partial(task_id="m", s3_bucket=s3_bucket, deferrable=True).expand(prompt=["a"])

    assert op.start_from_trigger is False
    assert mapped.start_from_trigger is False
    assert "jinja_environment_kwargs" in op._why_on_a_worker()


@needs_3_3
def test_a_native_rendering_dag_renders_natively_in_the_triggerer(in_dag, emulator) -> None:
    op = in_dag(dag_kwargs={"render_template_as_native_obj": True}, prompt=None, prompts="{{ params.prompts }}")

    event = start(op, params={"prompts": ["a", "b"]})

    assert event["start"]["rendered"]["prompts"] == ["a", "b"]
    assert sorted(call.body["prompt"] for call in emulator.state.generation_calls()) == ["a", "b"]


@needs_3_3
def test_a_triggerer_without_s3_leaves_the_prompts_to_the_worker(in_dag, emulator, monkeypatch, task_logs) -> None:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    def unreachable(self: Any) -> Any:
        raise RuntimeError("no AWS connection in this triggerer")

    op = in_dag(n=1)
    with monkeypatch.context() as patch:
        patch.setattr(S3Hook, "get_conn", unreachable)
        event = start(op)

    assert event["results"] == {}, "without the records it cannot know what was paid: no call"
    assert emulator.state.generation_calls() == []
    assert "Cannot reach S3 from the triggerer (no AWS connection in this triggerer)" in task_logs()
    assert len(copy(op, event)) == 1
    assert len(emulator.state.generation_calls()) == 1, "the worker generates it, once"


@needs_3_3
def test_each_prompt_is_recorded_as_its_call_returns_so_a_restart_repays_only_calls_in_flight(
    in_dag, emulator, s3, s3_bucket
) -> None:
    op = in_dag(prompt=None, prompts=["first prompt", "second prompt"], max_concurrency=1)
    emulator.configure(latency=0.6)
    serialised = deserialised(op)

    async def killed_after_the_first_record() -> None:
        trigger = trigger_of(serialised)
        ctx = trigger_context(serialised)
        trigger.task_instance = ctx["ti"]
        trigger.render_template_fields(context=ctx)
        running = asyncio.ensure_future(trigger.run().__anext__())
        while not any(key.endswith("000/_pending.json") for key in list_keys(s3, s3_bucket)):
            assert not running.done(), "the trigger fired before the first record was seen"
            await asyncio.sleep(0.02)
        assert emulator.state.in_flight_generations == 1, "recorded while the second call is still in flight"
        running.cancel()  # the triggerer dies while the second call is in flight
        with contextlib.suppress(asyncio.CancelledError):
            await running

    asyncio.run(killed_after_the_first_record())
    deadline = time.monotonic() + 10
    while emulator.state.in_flight_generations:  # the cancelled call ends in this test, not in the next one
        assert time.monotonic() < deadline, "the cancelled call never ended"
        time.sleep(0.02)
    emulator.configure(latency=0.0)
    event = start(op)  # the restarted triggerer

    assert set(event["results"]) == {"1"}, "the first prompt is the worker's to copy, not to pay again"
    prompts = [call.body["prompt"] for call in emulator.state.generation_calls()]
    assert prompts.count("first prompt") == 1
    assert len(copy(op, event)) == 2
