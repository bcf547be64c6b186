"""### imagegen_taskflow: the provider's ``@task.imagegen`` decorator in a TaskFlow DAG

Three forms of the same decorator, each a plain Python function that returns what to draw:

* ``daily_banner`` returns one prompt (a ``str``). What it returns is rendered with Jinja like the
  operator's ``prompt``, so ``{{ ds }}`` and ``{{ params.theme }}`` become the run's values.
* ``seasonal_variants`` returns a list of prompts: batch mode, one folder per prompt under the
  task's prefix (``{prefix}/000/``, ``{prefix}/001/``...).
* ``product_shot`` is expanded over the products (``.expand(product=...)``): one mapped task
  instance per product, each under ``{prefix}/{map_index}/``.

Each task returns the operator's XCom (one small dict per image), which ``summarise`` receives.
Connections: ``imagegen_default`` (the image API) and ``aws_default`` (S3). Deferrable mode follows
``[operators] default_deferrable``, read when the DAG file is parsed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

PRODUCTS = ["a ceramic teapot", "a walnut desk lamp"]

with DAG(
    dag_id="imagegen_taskflow",
    description="@task.imagegen: one prompt, a batch of prompts, and .expand() over products",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "bucket": Param("imagegen-demo", type="string", minLength=3, description="destination S3 bucket"),
        "theme": Param("a lighthouse at dawn", type="string", description="the banner's subject"),
        "n": Param(1, type="integer", minimum=1, maximum=10, description="images per prompt"),
    },
    tags=["imagegen", "example"],
    doc_md=__doc__,
) as dag:
    # [START howto_decorator_imagegen]
    @task.imagegen(s3_bucket="{{ params.bucket }}", n="{{ params.n }}", size="1536x1024", quality="low")
    def daily_banner(style: str) -> str:
        """The returned prompt is a template: ``ds`` and ``params`` are rendered before generating."""
        print(f"daily_banner: building the prompt in the {style} style")
        return "Banner for {{ ds }}: {{ params.theme }}, " + f"in a {style} style, no text"

    @task.imagegen(s3_bucket="{{ params.bucket }}", quality="low")
    def seasonal_variants() -> list[str]:
        """A list of prompts is batch mode: every prompt in one task."""
        return [f"{{{{ params.theme }}}} in {season}" for season in ("spring", "autumn")]

    @task.imagegen(s3_bucket="{{ params.bucket }}", quality="low", retries=2, retry_delay=timedelta(seconds=10))
    def product_shot(product: str) -> str:
        return f"Catalogue photo of {product} on a plain background, soft light"

    @task(multiple_outputs=False)
    def summarise(banner: list[dict[str, Any]], variants: list[dict[str, Any]], shots: Any) -> dict[str, int]:
        counts = {"banner": len(banner), "variants": len(variants), "shots": sum(len(images) for images in shots)}
        print(f"images stored: {counts}")
        return counts

    banner = daily_banner(style="watercolour")
    variants = seasonal_variants()
    shots = product_shot.expand(product=PRODUCTS)
    # [END howto_decorator_imagegen]
    summarise(banner, variants, shots)
