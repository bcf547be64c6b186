"""The FastAPI app of the Images tab, mounted by the API server under ``/imagegen``.

Every route checks Airflow's own authentication and authorisation, with the dependencies of
Airflow's REST API (:mod:`airflow.api_fastapi.core_api.security`): the caller's JWT (the UI's
``_token`` session cookie or an ``Authorization: Bearer`` header) must be valid and allow reading
the DAG's task instances and XComs. Without it the answer is 401/403 and no image bytes.

Which images a task instance has comes from its XCom (one dict per image, as the operator and
``@task.imagegen`` return it); their prompts from the manifests beside them (both read by
:mod:`airflow_provider_imagegen.gallery`, which the review operator shares). An image is only
served if its key appears in an XCom of that DAG run, so the app never reads arbitrary objects.
S3 is read with the AWS connection ``[imagegen] ui_aws_conn_id`` (default ``aws_default``).
Thumbnails are made on the fly (Pillow) from images up to :data:`MAX_THUMBNAIL_SOURCE_BYTES`,
at most :data:`THUMBNAIL_WORKERS` at once; full-size images are streamed in chunks.
"""

from __future__ import annotations

import functools
import html
import io
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from airflow_provider_imagegen.gallery import describe, image_entries, image_url

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fastapi import FastAPI

    from airflow_provider_imagegen.gallery import ImageView

DEFAULT_AWS_CONN_ID = "aws_default"
THUMBNAIL_BOX = 320
MAX_THUMBNAIL_SOURCE_BYTES = 64 * 1024 * 1024
"""Bigger images get no thumbnail (HTTP 413); the page links them at full size."""
MAX_THUMBNAIL_PIXELS = 4096 * 4096
THUMBNAIL_WORKERS = 2
"""Thumbnails decoded at once: bounds the app's memory (each holds one source image and its pixels)."""
THUMBNAIL_CACHE_ENTRIES = 256
STREAM_CHUNK = 1024 * 1024
IMAGE_TYPES = {"image/png", "image/jpeg"}

# the routes are sync functions: FastAPI runs them in its thread pool
_thumbnail_slots = threading.BoundedSemaphore(THUMBNAIL_WORKERS)
_thumbnail_cache: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
_thumbnail_cache_lock = threading.Lock()


def xcom_images(dag_id: str, run_id: str, task_id: str | None = None, map_index: int | None = None) -> list[dict]:
    """The image entries in the ``return_value`` XComs of a DAG run (of one task instance if given).

    :param dag_id: the DAG.
    :param run_id: the run.
    :param task_id: only this task.
    :param map_index: only this map index (with ``task_id``).
    """
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = select(XComModel).where(
        XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.key == "return_value"
    )
    if task_id is not None:
        query = query.where(XComModel.task_id == task_id)
    if map_index is not None:
        query = query.where(XComModel.map_index == map_index)
    with create_session() as session:
        rows = session.scalars(query.order_by(XComModel.task_id, XComModel.map_index)).all()
        return [entry for row in rows for entry in image_entries(XComModel.deserialize_value(row))]


def parse_map_index(text: str) -> int:
    """The map index of the tab's URL: Airflow 3.3's UI leaves ``{MAP_INDEX}`` as is for an unmapped task.

    :param text: the URL's map index segment.
    """
    try:
        return int(text)
    except ValueError:
        return -1


def aws_conn_id() -> str:
    """The AWS connection the app reads S3 with: ``[imagegen] ui_aws_conn_id``, default ``aws_default``."""
    from airflow.configuration import conf

    return conf.get("imagegen", "ui_aws_conn_id", fallback=DEFAULT_AWS_CONN_ID) or DEFAULT_AWS_CONN_ID


@functools.lru_cache(maxsize=4)
def _s3_client(conn_id: str) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id).get_conn()


def s3_client() -> Any:
    """A boto3 S3 client of :func:`aws_conn_id` (built once per connection id and process)."""
    return _s3_client(aws_conn_id())


def make_thumbnail(data: bytes, content_type: str) -> tuple[bytes, str]:
    """A thumbnail at most :data:`THUMBNAIL_BOX` pixels on a side (PNG, or JPEG for JPEG sources).

    :param data: the image's bytes.
    :param content_type: the image's content type.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        if picture.width * picture.height > MAX_THUMBNAIL_PIXELS:
            raise ValueError(f"{picture.width}x{picture.height} pixels is too many for a thumbnail")
        picture.draft("RGB", (THUMBNAIL_BOX, THUMBNAIL_BOX))  # JPEG decodes at a reduced scale
        picture.thumbnail((THUMBNAIL_BOX, THUMBNAIL_BOX))
        out = io.BytesIO()
        if content_type == "image/jpeg":
            picture.convert("RGB").save(out, format="JPEG", quality=85)
            return out.getvalue(), "image/jpeg"
        picture.save(out, format="PNG", optimize=True)
        return out.getvalue(), "image/png"


def _cached_thumbnail(client: Any, entry: dict[str, Any]) -> tuple[bytes, str]:
    from fastapi import HTTPException

    cache_key = (entry["bucket"], entry["key"], entry["sha256"])
    with _thumbnail_cache_lock:
        if cache_key in _thumbnail_cache:
            _thumbnail_cache.move_to_end(cache_key)
            data = _thumbnail_cache[cache_key]
            return data, "image/jpeg" if data[:2] == b"\xff\xd8" else "image/png"
    with _thumbnail_slots:
        head = client.head_object(Bucket=entry["bucket"], Key=entry["key"])
        if int(head["ContentLength"]) > MAX_THUMBNAIL_SOURCE_BYTES:
            raise HTTPException(413, "The image is too large for a thumbnail; open it at full size")
        body = client.get_object(Bucket=entry["bucket"], Key=entry["key"])["Body"]
        try:
            data, content_type = make_thumbnail(body.read(MAX_THUMBNAIL_SOURCE_BYTES + 1), entry["content_type"])
        except (OSError, ValueError) as error:
            raise HTTPException(422, f"No thumbnail: {error}") from error
    with _thumbnail_cache_lock:
        _thumbnail_cache[cache_key] = data
        while len(_thumbnail_cache) > THUMBNAIL_CACHE_ENTRIES:
            _thumbnail_cache.popitem(last=False)
    return data, content_type


def _stream(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(STREAM_CHUNK)
    finally:
        body.close()


def render_page(dag_id: str, run_id: str, task_id: str, map_index: int, views: list[ImageView]) -> str:
    """The Images tab's HTML: a card per image, or a clear empty state.

    :param dag_id: the DAG.
    :param run_id: the run.
    :param task_id: the task.
    :param map_index: the map index (-1 if not mapped).
    :param views: the images.
    """
    e = html.escape
    title = f"{task_id}" + (f" [{map_index}]" if map_index >= 0 else "")
    if not views:
        content = (
            '<div class="empty" data-testid="imagegen-empty"><h2>No images for this task instance</h2>'
            "<p>Images appear here once an <code>ImageGenToS3Operator</code> or <code>@task.imagegen</code> "
            "task has stored them (its XCom lists them). This task instance has none (yet).</p></div>"
        )
    else:
        cards = []
        for number, view in enumerate(views, start=1):
            full = image_url(dag_id, run_id, view.key)
            thumb = image_url(dag_id, run_id, view.key, thumbnail=True)
            pixels = f"{view.width}x{view.height} px" if view.width and view.height else "size unknown"
            cards.append(
                f'<figure class="card" data-testid="imagegen-image" data-sha256="{e(view.sha256)}" '
                f'data-key="{e(view.key)}">'
                f'<a href="#full-{number}" title="Show the full-size image">'
                f'<img class="thumb" src="{e(thumb)}" alt="Image {number}: {e(view.prompt or view.key)}" '
                'loading="eager"></a>'
                f"<figcaption><h3>Image {number}</h3>"
                f'<p class="prompt">{e(view.prompt or "(no manifest found)")}</p>'
                f"<dl><dt>Size</dt><dd>{e(pixels)}, {view.size_bytes / 1e6:.2f} MB, {e(view.content_type)}</dd>"
                f'<dt>sha256</dt><dd><code class="sha256">{e(view.sha256)}</code></dd>'
                f'<dt>S3</dt><dd><code class="s3-uri">{e(view.s3_uri)}</code></dd></dl>'
                "</figcaption>"
                # full size in the page itself (the UI's iframe may not allow pop-ups); loaded when opened
                f'<div class="full" id="full-{number}" data-testid="imagegen-full"><a class="close" href="#">'
                f'Close</a> <a href="{e(full)}" download>Download</a>'
                f'<img src="{e(full)}" alt="Image {number}, full size" loading="lazy"></div>'
                "</figure>"
            )
        content = f'<p class="count">{len(views)} image(s)</p><div class="grid">{"".join(cards)}</div>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Images · {e(title)}</title>
<meta name="referrer" content="no-referrer">
<style>
body{{font-family:system-ui,sans-serif;margin:16px;color:#1a202c;background:#fff}}
@media (prefers-color-scheme:dark){{body{{color:#e2e8f0;background:#1a202c}}.card{{border-color:#4a5568}}}}
h1{{font-size:1.1rem;margin:0 0 8px}} .count{{color:#718096;margin:0 0 12px}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:16px}}
.card{{border:1px solid #e2e8f0;border-radius:8px;margin:0;padding:10px}}
.card img{{display:block;max-width:320px;max-height:320px;border-radius:4px;background:#edf2f7}}
.card h3{{font-size:1rem;margin:8px 0 4px}} .prompt{{margin:0 0 6px;white-space:pre-wrap}}
dl{{display:grid;grid-template-columns:max-content 1fr;gap:2px 8px;margin:0;font-size:.85rem}}
dt{{color:#718096}} dd{{margin:0;overflow-wrap:anywhere}} code{{font-size:.8rem}}
.full{{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);z-index:10;padding:12px;overflow:auto}}
.full:target{{display:block}} .full a{{color:#fff;margin-right:12px}}
.full img{{display:block;max-width:100%;margin-top:8px}}
.empty{{padding:32px;border:1px dashed #a0aec0;border-radius:8px;text-align:center}}
</style></head>
<body><h1>Images of {e(dag_id)} · {e(run_id)} · {e(title)}</h1>{content}</body></html>"""


def create_app() -> FastAPI:
    """The app: the Images page of a task instance, and the images (full size or thumbnail) of a run."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException, Query
    from fastapi.responses import HTMLResponse, Response, StreamingResponse

    app = FastAPI(title="airflow-provider-imagegen", docs_url=None, redoc_url=None, openapi_url=None)
    may_read = [
        Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE)),
        Depends(requires_access_dag("GET", DagAccessEntity.XCOM)),
    ]
    private = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}

    @app.get("/task-instances/{dag_id}/{run_id}/{task_id}/{map_index}", dependencies=may_read)
    def images_page(dag_id: str, run_id: str, task_id: str, map_index: str) -> HTMLResponse:
        index = parse_map_index(map_index)
        entries = xcom_images(dag_id, run_id, task_id, index)
        views = describe(s3_client(), entries) if entries else []
        page = render_page(dag_id, run_id, task_id, index, views)
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    @app.get("/images/{dag_id}/{run_id}", dependencies=may_read)
    def image(dag_id: str, run_id: str, key: str = Query(..., min_length=1), thumbnail: bool = False) -> Response:
        found = [entry for entry in xcom_images(dag_id, run_id) if entry["key"] == key]
        if not found:
            raise HTTPException(404, "No image with this key in the XCom of this DAG run")
        entry = found[0]
        if entry.get("content_type") not in IMAGE_TYPES:
            raise HTTPException(415, "Not an image type this app serves")
        client = s3_client()
        if thumbnail:
            data, content_type = _cached_thumbnail(client, entry)
            return Response(data, media_type=content_type, headers=private)
        obj = client.get_object(Bucket=entry["bucket"], Key=key)
        headers = {**private, "Content-Length": str(obj["ContentLength"]), "ETag": f'"{entry["sha256"]}"'}
        return StreamingResponse(_stream(obj["Body"]), media_type=entry["content_type"], headers=headers)

    return app
