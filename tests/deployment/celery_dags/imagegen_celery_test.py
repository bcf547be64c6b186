"""DAGs of the Celery deployment test (``tests/deployment/test_celery_deployment.py``); not examples.

* ``imagegen_celery_mapped``: twelve mapped prompts, one small image each.
* ``imagegen_celery_deferrable``: six mapped prompts in deferrable mode.
* ``imagegen_celery_worker_lost``: one large 4K image with Airflow retries, for the killed worker.

The bucket comes from the run's conf (``params.bucket``).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

MAPPED_PROMPTS = [f"a paper boat on a pond, variant {index}" for index in range(12)]
DEFERRABLE_PROMPTS = [f"a lantern in the fog, variant {index}" for index in range(6)]
DEFAULTS = {
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "schedule": None,
    "catchup": False,
    "params": {"bucket": Param("imagegen-celery", type="string")},
    "tags": ["imagegen", "test"],
}

with DAG(dag_id="imagegen_celery_mapped", **DEFAULTS):
    ImageGenToS3Operator.partial(
        task_id="generate", s3_bucket="{{ params.bucket }}", quality="low", deferrable=False
    ).expand(prompt=MAPPED_PROMPTS)

with DAG(dag_id="imagegen_celery_deferrable", **DEFAULTS):
    ImageGenToS3Operator.partial(
        # all six at once: on Airflow 3.3 they start in the triggerer and share max_concurrency
        task_id="generate",
        s3_bucket="{{ params.bucket }}",
        quality="low",
        deferrable=True,
        max_concurrency=6,
    ).expand(prompt=DEFERRABLE_PROMPTS)

with DAG(dag_id="imagegen_celery_worker_lost", **DEFAULTS):
    ImageGenToS3Operator(
        task_id="generate",
        prompt="a harbour at night, every window lit",
        s3_bucket="{{ params.bucket }}",
        size="3840x2160",
        quality="low",
        deferrable=False,
        retries=2,
        retry_delay=timedelta(seconds=1),
    )
