"""### imagegen_review_and_publish: generate, let a person choose, publish only the chosen images

1. ``generate`` (``@task.imagegen``) lands ``n`` candidate images in S3.
2. ``review`` (``ImageReviewOperator``) asks a person under *Browse → Required Actions*: every image
   is shown (thumbnail, prompt, size, sha256), the reviewer ticks the ones to keep or *Reject all*.
   It waits without holding a worker slot, and returns only the chosen images' XCom entries.
3. ``publish`` (mapped over the chosen images) copies each to ``published/{dag_id}/{run}/`` in the
   same bucket and checks the copy's size and SHA-256 against the reviewed image. *Reject all*
   skips it.

Connections: ``imagegen_default`` (the image API) and ``aws_default`` (S3). Needs Airflow ≥ 3.1.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_imagegen.operators.review import ImageReviewOperator

PUBLISHED_PREFIX = "published"

with DAG(
    dag_id="imagegen_review_and_publish",
    description="Generate candidate images, let a person choose, publish the chosen ones",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "bucket": Param("imagegen-demo", type="string", minLength=3, description="S3 bucket"),
        "theme": Param("a lighthouse at dawn", type="string", description="what to draw"),
        "n": Param(3, type="integer", minimum=1, maximum=10, description="candidate images"),
    },
    tags=["imagegen", "example"],
    doc_md=__doc__,
) as dag:

    @task.imagegen(s3_bucket="{{ params.bucket }}", n="{{ params.n }}", quality="low")
    def generate() -> str:
        return "Poster of {{ params.theme }}, bold flat colours, no text"

    candidates = generate()

    # [START howto_operator_image_review]
    review = ImageReviewOperator(
        task_id="review",
        images=candidates,
        subject="Pick the posters of {{ params.theme }} to publish",
        body="Candidates generated for run `{{ run_id }}`.",
        response_timeout=timedelta(days=1),
    )
    # [END howto_operator_image_review]

    @task(multiple_outputs=False)
    def publish(image: dict[str, Any], dag_run: Any = None, aws_conn_id: str = "aws_default") -> str:
        """Copy one chosen image to ``published/...`` and verify the copy."""
        import hashlib

        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
        safe_run = "".join(c if c.isalnum() or c in "-_." else "-" for c in dag_run.run_id)
        key = f"{PUBLISHED_PREFIX}/{dag_run.dag_id}/{safe_run}/{image['key'].rsplit('/', 1)[-1]}"
        client.copy_object(
            Bucket=image["bucket"],
            Key=key,
            CopySource={"Bucket": image["bucket"], "Key": image["key"]},
            ContentType=image["content_type"],
            MetadataDirective="REPLACE",
            Metadata={"sha256": image["sha256"], "source-key": image["key"]},
        )
        body = client.get_object(Bucket=image["bucket"], Key=key)["Body"]
        digest, size = hashlib.sha256(), 0
        for chunk in body.iter_chunks(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
        if (digest.hexdigest(), size) != (image["sha256"], image["size_bytes"]):
            raise ValueError(f"The copy s3://{image['bucket']}/{key} differs from the reviewed image")
        print(f"published s3://{image['bucket']}/{key} ({size} bytes, sha256 {image['sha256']})")
        return f"s3://{image['bucket']}/{key}"

    publish.expand(image=review.output)
