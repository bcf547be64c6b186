"""### imagegen_daily_content: a daily banner pipeline

Every day this DAG renders the prompt template ``prompts/daily_banner.j2`` with the run's date
(``{{ ds }}``) and its params, generates ``n`` images with GPT Image 2 through
``ImageGenToS3Operator`` and lands them, verified, in S3. Downstream tasks consume the operator's
XCom (one small dict per image):

* ``make_thumbnail`` (mapped, one task instance per image) reads one image at a time from S3 and
  writes a PNG thumbnail to ``{prefix}/thumbnails/{index:02d}.png``;
* ``publish_gallery`` writes ``{prefix}/gallery.html``: every image of the run with its prompt,
  linked with relative paths so that the page also works when the folder is copied locally.

Each run of the generation task makes one asset event through ``AssetAlias("imagegen_images")``
(on the task's stable asset ``s3://{bucket}/imagegen/imagegen_daily_content/generate_images``; its
``extra`` lists the stored images), which schedules the ``imagegen_asset_consumer`` DAG.

Connections: ``imagegen_default`` (the image API) and ``aws_default`` (S3). Deferrable mode follows
``[operators] default_deferrable`` (e.g. ``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE=True``), read when
the DAG file is parsed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, AssetAlias, Param, get_current_context, task

# [START howto_operator_imagegen_to_s3_import]
from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

# [END howto_operator_imagegen_to_s3_import]

IMAGES_ALIAS = "imagegen_images"
THUMBNAIL_BOX = (320, 320)
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
SIZES = [
    "1024x1024",
    "1536x1024",
    "1024x1536",
    "2048x1152",
    "2048x2048",
    "3840x2160",
    "auto",
]


def _parent(key: str) -> str:
    """The folder part of an S3 key (``a/b/00.png`` → ``a/b``)."""
    return key.rsplit("/", 1)[0] if "/" in key else ""


def _stem(key: str) -> str:
    """The file name of an S3 key without its extension (``a/b/00.png`` → ``00``)."""
    return key.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def thumbnail_key(image_key: str) -> str:
    """Where the thumbnail of an image goes: ``{prefix}/thumbnails/{stem}.png``."""
    parent = _parent(image_key)
    name = f"thumbnails/{_stem(image_key)}.png"
    return f"{parent}/{name}" if parent else name


@task(multiple_outputs=False, map_index_template="{{ thumbnail_of }}")
def make_thumbnail(image: dict[str, Any], aws_conn_id: str = "aws_default") -> dict[str, Any]:
    """Read one generated image from S3 (spooled, never all images at once) and store its thumbnail."""
    import io
    import tempfile

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from PIL import Image

    get_current_context()["thumbnail_of"] = image["key"]  # type: ignore[typeddict-unknown-key]
    client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
        client.download_fileobj(image["bucket"], image["key"], spool)
        spool.seek(0)
        with Image.open(spool) as picture:
            picture.draft("RGB", THUMBNAIL_BOX)  # JPEG: decode at reduced scale
            picture.thumbnail(THUMBNAIL_BOX)
            width, height = picture.size
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG", optimize=True)
    key = thumbnail_key(image["key"])
    client.put_object(Bucket=image["bucket"], Key=key, Body=buffer.getvalue(), ContentType="image/png")
    return {
        "source_key": image["key"],
        "bucket": image["bucket"],
        "key": key,
        "s3_uri": f"s3://{image['bucket']}/{key}",
        "width": width,
        "height": height,
    }


def _relative(key: str, folder: str) -> str:
    """``key`` relative to ``folder`` (both S3 keys), for links inside the gallery page."""
    import posixpath

    return posixpath.relpath(key, folder or ".")


def _load_manifests(client: Any, bucket: str, folders: list[str]) -> dict[str, dict[str, Any]]:
    """The ``manifest.json`` of each image folder (prompt, request parameters, timings)."""
    import json

    manifests = {}
    for folder in folders:
        body = client.get_object(Bucket=bucket, Key=f"{folder}/manifest.json")["Body"].read()
        manifests[folder] = json.loads(body)
    return manifests


def render_gallery(
    title: str,
    subtitle: str,
    images: list[dict[str, Any]],
    thumbnails: dict[str, str],
    manifests: dict[str, dict[str, Any]],
    gallery_folder: str,
) -> str:
    """A self-contained HTML page: per prompt its text and parameters, then every image, linked relatively."""
    from html import escape

    sections = []
    for folder, manifest in manifests.items():
        request = manifest.get("request", {})
        figures = []
        for image in (i for i in images if _parent(i["key"]) == folder):
            full = escape(_relative(image["key"], gallery_folder))
            thumb = escape(_relative(thumbnails.get(image["key"], image["key"]), gallery_folder))
            caption = (
                f"#{image['index']} · {image['width']}x{image['height']} · "
                f"{image['size_bytes'] / 1e6:.2f} MB · sha256 {image['sha256'][:12]}…"
            )
            figures.append(
                f'<figure><a href="{full}"><img src="{thumb}" alt="{escape(manifest["prompt"][:120])}"></a>'
                f"<figcaption>{escape(caption)}</figcaption></figure>"
            )
        params = ", ".join(f"{k}={v}" for k, v in sorted(request.items()) if v is not None)
        sections.append(
            f"<section><h2>Prompt</h2><blockquote>{escape(manifest['prompt'])}</blockquote>"
            f"<p class=meta>{escape(params)} · {manifest.get('received_images')} of "
            f"{manifest.get('requested_images')} image(s) · generated {escape(str(manifest.get('generated_at')))}</p>"
            f"<div class=grid>{''.join(figures)}</div></section>"
        )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title><style>{_GALLERY_CSS}</style></head>"
        f"<body><h1>{escape(title)}</h1><p class=meta>{escape(subtitle)}</p>{''.join(sections)}</body></html>\n"
    )


_GALLERY_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2rem;max-width:75rem;color:#222}"
    "blockquote{background:#f6f3fb;border-left:4px solid #8a5cd1;margin:0;padding:.8rem 1rem;white-space:pre-wrap}"
    ".meta{color:#666;font-size:.85rem}.grid{display:flex;flex-wrap:wrap;gap:1rem}"
    "figure{margin:0;text-align:center}img{border:1px solid #ddd;max-width:320px}"
    "figcaption{font-size:.8rem;color:#555}"
)


@task
def publish_gallery(
    images: list[dict[str, Any]], thumbnails: list[dict[str, Any]], aws_conn_id: str = "aws_default"
) -> str:
    """Write ``gallery.html`` next to the run's images; return its ``s3://`` URI."""
    import posixpath

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    images, thumbnails = list(images[:]), list(thumbnails[:])  # one slice request per mapped XCom
    if not images:
        raise ValueError("No images to publish")
    context = get_current_context()
    bucket = images[0]["bucket"]
    folders = sorted({_parent(image["key"]) for image in images})
    gallery_folder = posixpath.commonpath(folders) if len(folders) > 1 else folders[0]
    client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
    page = render_gallery(
        title=f"{context['dag'].dag_id} · {context['ds']}",
        subtitle=f"run {context['run_id']} · {len(images)} image(s) · click a thumbnail for the full image",
        images=images,
        thumbnails={thumb["source_key"]: thumb["key"] for thumb in thumbnails},
        manifests=_load_manifests(client, bucket, folders),
        gallery_folder=gallery_folder,
    )
    key = f"{gallery_folder}/gallery.html" if gallery_folder else "gallery.html"
    client.put_object(Bucket=bucket, Key=key, Body=page.encode(), ContentType="text/html; charset=utf-8")
    print(f"Gallery of {len(images)} image(s): s3://{bucket}/{key}")
    return f"s3://{bucket}/{key}"


with DAG(
    dag_id="imagegen_daily_content",
    description="Daily banner images: templated prompt → GPT Image 2 → S3, thumbnails and an HTML gallery",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params={
        "theme": Param("a lighthouse on a rocky coast at sunrise", type="string", minLength=1),
        "style": Param("flat vector illustration", type="string", minLength=1),
        "n": Param(3, type="integer", minimum=1, maximum=10, description="images to generate"),
        "size": Param("1536x1024", enum=SIZES),
        "quality": Param("low", enum=["low", "medium", "high"]),
        "bucket": Param("imagegen-demo", type="string", minLength=3, description="destination S3 bucket"),
    },
    tags=["imagegen", "example"],
    doc_md=__doc__,
) as dag:
    # [START howto_operator_imagegen_to_s3]
    generate_images = ImageGenToS3Operator(
        task_id="generate_images",
        prompt="prompts/daily_banner.j2",  # a template file: rendered with {{ ds }} and params
        s3_bucket="{{ params.bucket }}",
        # default s3_key_prefix: imagegen/{dag_id}/{run_id}/{task_id} (S3-safe)
        n="{{ params.n }}",
        size="{{ params.size }}",
        quality="{{ params.quality }}",
        output_format="png",
        min_images=1,
        imagegen_conn_id="imagegen_default",
        aws_conn_id="aws_default",
        # deferrable: defaults to [operators] default_deferrable
        outlets=[AssetAlias(IMAGES_ALIAS)],
    )
    # [END howto_operator_imagegen_to_s3]

    thumbnails = make_thumbnail.expand(image=generate_images.output)
    publish_gallery(images=generate_images.output, thumbnails=thumbnails)
