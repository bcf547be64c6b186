"""DAGs of the start-in-the-triggerer deployment test (``tests/deployment/test_triggerer_start.py``); not examples.

Every ``ImageGenToS3Operator`` here is deferrable. On Airflow 3.3+ a task whose values are all in
this file (``literal*``) starts in the triggerer; one whose prompt comes from an upstream task's
XCom (``from_xcom*``) defers from a worker. On older Airflow every one of them defers from a worker.

* ``imagegen_start_paths``: three literal mapped prompts, and two mapped over an upstream XCom; both
  with an asset outlet. And a prompt made with a DAG macro, which the triggerer cannot render (it
  does not have the DAG's ``user_defined_macros``): on 3.3 the start trigger hands it back to a worker.
* ``imagegen_start_permanent``: a blocked word and an invalid rendered ``n``, on each path; ``retries=2``.
* ``imagegen_start_retry``: one prompt on each path, one after the other, ``retries=2``: the test cuts
  each try 1's downloads short.
* ``imagegen_start_restart``: one prompt on each path, one after the other: the test kills the triggerer.

The bucket comes from the run's conf (``params.bucket``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, Param, task

from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

LITERAL_PROMPTS = [f"a glass lighthouse on a cliff, variant {index}" for index in range(3)]
XCOM_PROMPTS = [f"a copper kettle on a stove, variant {index}" for index in range(2)]
MACRO_PROMPT = "{{ subject }} on a map table"
MACRO_SUBJECT = "a brass compass"
LITERAL_ASSET = "s3://imagegen-start-test/literal"
XCOM_ASSET = "s3://imagegen-start-test/from-xcom"
FORBIDDEN_LITERAL = "a forbidden door in a garden wall"
FORBIDDEN_XCOM = "a forbidden staircase in a tower"
INVALID_LITERAL = "a paper crane on a desk"
INVALID_XCOM = "a paper crane on a shelf"
INVALID_N = 11
RETRY_LITERAL = "a wooden sailboat at anchor"
RETRY_XCOM = "a wooden sailboat under sail"
RESTART_LITERAL = "a red tram in the snow"
RESTART_XCOM = "a red tram in the rain"
LITERAL_MAX_CONCURRENCY = 2

DEFAULTS: dict[str, Any] = {
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "schedule": None,
    "catchup": False,
    "tags": ["imagegen", "test"],
}
BUCKET = {"bucket": Param("imagegen-start", type="string")}
COMMON: dict[str, Any] = {"s3_bucket": "{{ params.bucket }}", "quality": "low", "deferrable": True}
RETRIES: dict[str, Any] = {"retries": 2, "retry_delay": timedelta(seconds=1)}


@task
def echo(value: Any) -> Any:
    """``value``, through XCom: what a task mapped over it (or given it) gets from upstream."""
    return value


with DAG(dag_id="imagegen_start_paths", params=BUCKET, user_defined_macros={"subject": MACRO_SUBJECT}, **DEFAULTS):
    ImageGenToS3Operator.partial(
        task_id="literal", outlets=[Asset(LITERAL_ASSET)], max_concurrency=LITERAL_MAX_CONCURRENCY, **COMMON
    ).expand(prompt=LITERAL_PROMPTS)
    ImageGenToS3Operator.partial(task_id="from_xcom", outlets=[Asset(XCOM_ASSET)], **COMMON).expand(
        prompt=echo.override(task_id="xcom_prompts")(XCOM_PROMPTS)
    )
    ImageGenToS3Operator(task_id="macro", prompt=MACRO_PROMPT, **COMMON)

with DAG(dag_id="imagegen_start_permanent", params={**BUCKET, "n": INVALID_N}, **DEFAULTS):
    ImageGenToS3Operator(task_id="forbidden_literal", prompt=FORBIDDEN_LITERAL, **RETRIES, **COMMON)
    forbidden_prompt: Any = echo.override(task_id="forbidden_prompt")(FORBIDDEN_XCOM)
    ImageGenToS3Operator(task_id="forbidden_xcom", prompt=forbidden_prompt, **RETRIES, **COMMON)
    ImageGenToS3Operator(task_id="invalid_literal", prompt=INVALID_LITERAL, n="{{ params.n }}", **RETRIES, **COMMON)
    invalid_prompt: Any = echo.override(task_id="invalid_prompt")(INVALID_XCOM)
    ImageGenToS3Operator(task_id="invalid_xcom", prompt=invalid_prompt, n="{{ params.n }}", **RETRIES, **COMMON)

with DAG(dag_id="imagegen_start_retry", params=BUCKET, **DEFAULTS):
    literal = ImageGenToS3Operator(task_id="literal", prompt=RETRY_LITERAL, **RETRIES, **COMMON)
    retry_prompt: Any = echo.override(task_id="retry_prompt")(RETRY_XCOM)
    literal >> retry_prompt  # the fallback starts once the literal task is done: the test cuts one try at a time
    ImageGenToS3Operator(task_id="from_xcom", prompt=retry_prompt, **RETRIES, **COMMON)

with DAG(dag_id="imagegen_start_restart", params=BUCKET, **DEFAULTS):
    literal = ImageGenToS3Operator(task_id="literal", prompt=RESTART_LITERAL, **COMMON)
    restart_prompt: Any = echo.override(task_id="restart_prompt")(RESTART_XCOM)
    literal >> restart_prompt  # the fallback starts once the literal task is done: one triggerer kill at a time
    ImageGenToS3Operator(task_id="from_xcom", prompt=restart_prompt, **COMMON)
