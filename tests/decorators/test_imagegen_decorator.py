"""``@task.imagegen`` for real: ``dags/imagegen_taskflow.py`` under ``dag.test()``, the emulator and moto S3.

One run covers the three forms (a returned ``str``, a returned ``list``, ``.expand()``) and the
templating of the returned prompt; a second run, with ``[operators] default_deferrable`` on, covers
the deferral (the API call made by ``ImageGenTrigger``) and that the function is not called again
when the task resumes. Definition-time checks need no run.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
import pytest
from e2e.support import LOGICAL_DATE, load_dag, task_states, verify_images, xcom_values

DAG_ID = "imagegen_taskflow"
RUN_ID = f"manual__{LOGICAL_DATE.isoformat()}"
SAFE_RUN_ID = "manual__2026-03-14T00-00-00-00-00"
"""The run id as the operator writes it in S3 keys (README, "S3 layout")."""
THEME = "a red kite over the dunes"
PRODUCTS = ["a ceramic teapot", "a walnut desk lamp"]


def test_task_imagegen_resolves_through_provider_info():
    """``task.imagegen`` is found by the task SDK's provider manager: only the provider needs to be installed."""
    from airflow.sdk import task

    from airflow_provider_imagegen.decorators.imagegen import imagegen_task

    assert task.imagegen is imagegen_task


def test_definition_accepts_operator_arguments_and_refuses_prompt():
    from airflow.sdk import DAG, task

    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

    with DAG("imagegen_decorator_definition", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):

        @task.imagegen(
            s3_bucket="b",
            n=3,
            size="1536x1024",
            quality="high",
            aws_conn_id="aws_x",
            deferrable=True,
            retries=4,
            retry_delay=timedelta(seconds=5),
            max_concurrency=2,
            s3_tags={"team": "content"},
        )
        def banner(topic: str) -> str:
            return f"a banner about {topic}"

        op = banner("tea").operator

        @task.imagegen(s3_bucket="b", prompt="nope")
        def wrong() -> str:
            return "x"

        with pytest.raises(TypeError, match="does not take `prompt`"):
            wrong()

    assert isinstance(op, ImageGenToS3Operator)
    assert (op.s3_bucket, op.n, op.size, op.quality, op.aws_conn_id) == ("b", 3, "1536x1024", "high", "aws_x")
    assert (op.deferrable, op.retries, op.max_concurrency, op.s3_tags) == (True, 4, 2, {"team": "content"})
    assert op.op_args == ("tea",)
    assert {"prompt", "prompts", "s3_bucket", "op_args", "op_kwargs"} <= set(op.template_fields)
    assert op.custom_operator_name == "@task.imagegen"


@pytest.mark.parametrize(
    ("returned", "message"),
    [(42, "not int"), ("  ", "empty prompt"), ([], "non-empty list"), (["ok", 3], "non-empty list")],
)
def test_a_returned_value_that_is_no_prompt_is_refused(returned, message):
    from airflow.sdk import DAG, task

    with DAG("imagegen_decorator_wrong_return", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):

        @task.imagegen(s3_bucket="b")
        def bad() -> str:
            return returned

        op = bad().operator
    with pytest.raises(TypeError, match=message):
        op._set_prompts(returned)


@pytest.mark.e2e
@pytest.mark.usefixtures("imagegen_conn", "aws_conn")
def test_str_list_and_expand_forms_with_templated_prompts(run_dag, emulator, s3_server, s3_bucket):
    dag_run = run_dag(DAG_ID, {"bucket": s3_bucket, "theme": THEME, "n": 2})

    assert dag_run.state == "success", task_states(dag_run)
    # -- str: one prompt, rendered as a template ({{ ds }}, {{ params.theme }}) ----------------------
    banner = xcom_values(dag_run, "daily_banner")[-1]
    prefix = f"imagegen/{DAG_ID}/{SAFE_RUN_ID}/daily_banner"
    assert [image["key"] for image in banner] == [f"{prefix}/{i:02d}.png" for i in range(2)]
    manifests = verify_images(s3_server, emulator, banner)
    assert manifests[prefix]["prompt"] == f"Banner for 2026-03-14: {THEME}, in a watercolour style, no text"
    assert all((image["width"], image["height"]) == (1536, 1024) for image in banner)

    # -- list: batch mode, one folder per prompt, prompt_index in order ----------------------------
    variants = xcom_values(dag_run, "seasonal_variants")[-1]
    prefix = f"imagegen/{DAG_ID}/{SAFE_RUN_ID}/seasonal_variants"
    assert [(image["prompt_index"], image["key"]) for image in variants] == [
        (0, f"{prefix}/000/00.png"),
        (1, f"{prefix}/001/00.png"),
    ]
    manifests = verify_images(s3_server, emulator, variants)
    assert [manifests[f"{prefix}/{i:03d}"]["prompt"] for i in range(2)] == [f"{THEME} in spring", f"{THEME} in autumn"]

    # -- .expand(): one mapped task instance per product, each under its own prefix -----------------
    shots = xcom_values(dag_run, "product_shot")
    assert sorted(shots) == [0, 1]
    task_prefix = f"imagegen/{DAG_ID}/{SAFE_RUN_ID}/product_shot"
    manifests = verify_images(s3_server, emulator, [image for images in shots.values() for image in images])
    for map_index, product in enumerate(PRODUCTS):
        assert [image["key"] for image in shots[map_index]] == [f"{task_prefix}/{map_index}/00.png"]
        assert manifests[f"{task_prefix}/{map_index}"]["prompt"].startswith(f"Catalogue photo of {product} ")

    # -- the XCom flows downstream like the operator's ------------------------------------------------
    assert xcom_values(dag_run, "summarise")[-1] == {"banner": 2, "variants": 2, "shots": 2}
    assert len(emulator.state.generation_calls()) == 1 + 2 + 2


@pytest.mark.e2e
@pytest.mark.usefixtures("imagegen_conn", "aws_conn")
def test_deferrable_mode_runs_the_api_call_in_the_trigger(run_dag, emulator, s3_server, s3_bucket, monkeypatch, capfd):
    from airflow_provider_imagegen.triggers.imagegen import ImageGenTrigger

    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    dag = load_dag(DAG_ID)  # default_deferrable is read when the DAG file is parsed
    assert dag.get_task("daily_banner").deferrable is True
    assert dag.get_task("seasonal_variants").deferrable is True
    trigger_requests = []
    original_run = ImageGenTrigger.run

    def recording_run(self):
        trigger_requests.append(self.serialize()[1]["requests"])
        return original_run(self)

    monkeypatch.setattr(ImageGenTrigger, "run", recording_run)
    when = LOGICAL_DATE + timedelta(days=1)

    dag_run = run_dag(DAG_ID, {"bucket": s3_bucket, "theme": THEME, "n": 1}, when=when)

    assert dag_run.state == "success", task_states(dag_run)
    expected_prompt = f"Banner for 2026-03-15: {THEME}, in a watercolour style, no text"
    sent = [request["prompt"] for requests in trigger_requests for request in requests.values()]
    assert len(trigger_requests) == 4, "every generating task instance should have deferred once"
    assert sorted(sent) == sorted(
        [expected_prompt, f"{THEME} in spring", f"{THEME} in autumn"]
        + [f"Catalogue photo of {p} on a plain background, soft light" for p in PRODUCTS]
    )
    banner = xcom_values(dag_run, "daily_banner")[-1]
    manifests = verify_images(s3_server, emulator, banner)
    assert [m["prompt"] for m in manifests.values()] == [expected_prompt]  # the resumed task kept the prompt
    assert len(xcom_values(dag_run, "seasonal_variants")[-1]) == 2
    assert sorted(xcom_values(dag_run, "product_shot")) == [0, 1]
    # dag.test() drops a deferral's kwargs (Airflow 3.3), so here the function runs again on resume;
    # test_deferral_carries_the_rendered_prompts covers the path of a real deployment.
    assert capfd.readouterr().out.count("daily_banner: building the prompt") == 2
    assert len(emulator.state.generation_calls()) == 5


def test_deferral_carries_the_rendered_prompts_to_the_resumed_task():
    """What a real deployment does: the deferral's kwargs come back to ``resume_execution``; no second call."""
    from airflow.sdk import DAG, task

    from airflow_provider_imagegen.version_compat import TaskDeferred

    calls = []
    with DAG("imagegen_decorator_carry", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):

        @task.imagegen(s3_bucket="b")
        def variants() -> list[str]:
            calls.append(1)
            return ["a", "b"]

        op = variants().operator
    op._set_prompts(["rendered {{ x }} one", "two"])
    with pytest.raises(TaskDeferred) as deferred:
        op.defer(trigger=object(), method_name="execute_complete", kwargs={"other": 1})
    carried = deferred.value.kwargs
    assert carried == {"other": 1, "imagegen_prompt": None, "imagegen_prompts": ["rendered {{ x }} one", "two"]}

    op.prompt, op.prompts = "placeholder", None
    seen = {}

    def execute_complete(context, event, other):
        seen.update(prompt=op.prompt, prompts=op.prompts, event=event, other=other)
        return "done"

    op.execute_complete = execute_complete
    assert op.resume_execution("execute_complete", {**carried, "event": {"results": {}}}, context={}) == "done"
    assert seen == {"prompt": None, "prompts": ["rendered {{ x }} one", "two"], "event": {"results": {}}, "other": 1}
    assert calls == [], "the function must not run again when the prompts came back"
