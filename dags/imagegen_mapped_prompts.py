"""### imagegen_mapped_prompts: one product shot per catalogue row, with dynamic task mapping

``build_prompts`` reads the small product catalogue shipped with this DAG (``data/catalogue.csv``)
and turns each row into a prompt. ``ImageGenToS3Operator.partial(...).expand(prompt=...)`` then
creates one mapped task instance per product; each lands its images under its own prefix,
``imagegen/imagegen_mapped_prompts/{run_id}/generate_product_images/{map_index}/``.

The image API is rate limited: ``max_active_tis_per_dag`` bounds how many products are generated at
once across all runs of this DAG (put the task in a pool, e.g. ``pool="imagegen_api"``, to share one
budget between several DAGs), and Airflow retries back off exponentially. ``collect_results``
gathers every mapped result into ``summary.json`` beside the per-product folders.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task

from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

CATALOGUE = Path(__file__).parent / "data" / "catalogue.csv"
MAX_PARALLEL_REQUESTS = 2

PROMPT_TEMPLATE = (
    "Product photo of a {name} ({sku}) in {colour} {material}, {setting}. "
    "Soft natural light, shallow depth of field, catalogue style, no text."
)


def read_catalogue(path: Path = CATALOGUE) -> list[dict[str, str]]:
    """The catalogue rows as dicts (``sku``, ``name``, ``colour``, ``material``, ``setting``)."""
    import csv

    with path.open(newline="", encoding="utf-8") as handle:
        return [{k: v.strip() for k, v in row.items()} for row in csv.DictReader(handle)]


@task
def build_prompts(params: dict[str, Any] | None = None) -> list[str]:
    """One prompt per catalogue row (the first ``params.limit`` rows when set)."""
    limit = (params or {}).get("limit")
    rows = read_catalogue()
    if limit:
        rows = rows[: int(limit)]
    prompts = [PROMPT_TEMPLATE.format(**row) for row in rows]
    for sku, prompt in zip((row["sku"] for row in rows), prompts, strict=True):
        print(f"{sku}: {prompt}")
    return prompts


@task(multiple_outputs=False)
def collect_results(prompts: list[str], results: list[list[dict[str, Any]]], aws_conn_id: str = "aws_default") -> dict:
    """Gather every mapped task's images (map-index order = prompt order) into ``summary.json``."""
    import json

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    per_product = [list(images) for images in results[:]]  # map-index order; one slice request
    products = [
        {
            "map_index": index,
            "prompt": prompt,
            "images": [image["s3_uri"] for image in images],
            "bytes": sum(image["size_bytes"] for image in images),
        }
        for index, (prompt, images) in enumerate(zip(prompts, per_product, strict=True))
    ]
    all_images = [image for images in per_product for image in images]
    if not all_images:
        raise ValueError("No product images were generated")
    bucket = all_images[0]["bucket"]
    # {task prefix}/{map_index}/00.png → {task prefix}/summary.json
    task_prefix = all_images[0]["key"].rsplit("/", 2)[0]
    summary = {
        "run_id": get_current_context()["run_id"],
        "products": products,
        "image_count": len(all_images),
        "total_bytes": sum(image["size_bytes"] for image in all_images),
    }
    key = f"{task_prefix}/summary.json"
    S3Hook(aws_conn_id=aws_conn_id).load_string(
        json.dumps(summary, indent=2), key=key, bucket_name=bucket, replace=True
    )
    for product in products:
        print(f"[{product['map_index']}] {len(product['images'])} image(s): {', '.join(product['images'])}")
    print(f"{len(all_images)} image(s) from {len(products)} product(s); summary s3://{bucket}/{key}")
    return {"summary": f"s3://{bucket}/{key}", "image_count": len(all_images)}


with DAG(
    dag_id="imagegen_mapped_prompts",
    description="Product shots for every catalogue row: dynamic task mapping over generated prompts",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "bucket": Param("imagegen-demo", type="string", minLength=3, description="destination S3 bucket"),
        "n": Param(1, type="integer", minimum=1, maximum=10, description="images per product"),
        "size": Param("1024x1024", type="string"),
        "limit": Param(None, type=["null", "integer"], minimum=1, description="only the first N products"),
    },
    tags=["imagegen", "example"],
    doc_md=__doc__,
) as dag:
    prompts = build_prompts()
    # [START howto_operator_imagegen_to_s3_mapped]
    product_images = ImageGenToS3Operator.partial(
        task_id="generate_product_images",
        s3_bucket="{{ params.bucket }}",
        n="{{ params.n }}",
        size="{{ params.size }}",
        quality="low",
        map_index_template="{{ task.prompt[:60] }}",  # the UI lists mapped instances by prompt
        max_active_tis_per_dag=MAX_PARALLEL_REQUESTS,  # the API's rate limit, not the workers, is the bottleneck
        retries=3,
        retry_delay=timedelta(seconds=30),
        retry_exponential_backoff=True,
    ).expand(prompt=prompts)
    # [END howto_operator_imagegen_to_s3_mapped]
    collect_results(prompts=prompts, results=product_images.output)
