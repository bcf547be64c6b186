"""The ASGI application emulating ``POST /v3/gpt-image-2-text-to-image`` and its image URLs.

Order of checks on a generation call: Bearer key (401), injected server errors, injected 429s,
body validation (400), content policy (400 ``content_policy_violation``), latency, response mode.
Every request is recorded (without its ``authorization`` header) by :class:`RecordingMiddleware`.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import json
import logging
import math
import secrets
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from airflow_provider_imagegen.emulator.images import render_image
from airflow_provider_imagegen.emulator.state import (
    GENERATION_PATH,
    IMAGES_PREFIX,
    RecordedCall,
    StoredImage,
)
from airflow_provider_imagegen.emulator.validation import (
    GenerationRequest,
    RequestValidationError,
    parse_body,
    validate_request,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from airflow_provider_imagegen.emulator.config import EmulatorConfig
    from airflow_provider_imagegen.emulator.state import EmulatorState

CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg"}
EXTENSIONS: dict[str, str] = {"png": ".png", "jpeg": ".jpg"}
FORMAT_BY_EXTENSION: dict[str, str] = {ext: fmt for fmt, ext in EXTENSIONS.items()}
STREAM_CHUNK_BYTES = 256 * 1024
SLOW_BODY_CHUNKS = 8
REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization"})
INCOMPLETE_RESPONSE_LOG = "ASGI callable returned without completing response."

_deliberately_truncated: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "imagegen_emulator_truncated", default=False
)


# --------------------------------------------------------------------------- app factory
def create_app(state: EmulatorState) -> FastAPI:
    """Build the emulator app bound to ``state`` (whose ``config`` is read on every request)."""
    app = FastAPI(title="GPT Image 2 API emulator", docs_url=None, redoc_url=None, openapi_url=None)

    async def generate(request: Request) -> Response:
        return await handle_generation(request, state)

    async def download(request: Request) -> Response:
        return await handle_download(request, state)

    app.add_route(GENERATION_PATH, generate, methods=["POST"])
    app.add_route(IMAGES_PREFIX + "{token}", download, methods=["GET"])
    app.add_middleware(RecordingMiddleware, state=state)
    _install_log_filter()
    return app


# --------------------------------------------------------------------------- errors
def error_response(
    config: EmulatorConfig,
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error in the configured style: ``{"error": {code, message, param}}`` or a plain sentence."""
    if config.error_format == "text":
        return PlainTextResponse(message, status_code=status, headers=headers)
    payload = {"error": {"code": code, "message": message, "param": param}}
    return JSONResponse(payload, status_code=status, headers=headers)


def _is_authorized(request: Request, api_key: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <api_key>`` (scheme case-insensitive)."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = credentials.strip()
    return scheme.lower() == "bearer" and bool(token) and secrets.compare_digest(token.encode(), api_key.encode())


def _injected_failure(config: EmulatorConfig) -> Response | None:
    """Consume one injected server error or 429, if any are pending."""
    if config.server_errors > 0:
        config.server_errors -= 1
        status = config.server_error_status
        phrase = _status_phrase(status)
        return error_response(config, status, "server_error", f"The server had an error ({status} {phrase}).")
    if config.rate_limit_burst > 0:
        config.rate_limit_burst -= 1
        headers = None
        if config.retry_after is not None:
            headers = {"Retry-After": str(math.ceil(config.retry_after))}
        return error_response(
            config, 429, "rate_limit_exceeded", "Rate limit exceeded, please retry later.", headers=headers
        )
    return None


def _status_phrase(status: int) -> str:
    """The reason phrase of ``status`` (or ``"Error"`` for non-standard codes)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _blocked_word(prompt: str, blocked_words: tuple[str, ...]) -> str | None:
    """The first blocked word contained in ``prompt`` (case-insensitive), if any."""
    lowered = prompt.lower()
    return next((word for word in blocked_words if word and word.lower() in lowered), None)


# --------------------------------------------------------------------------- generation
async def handle_generation(request: Request, state: EmulatorState) -> Response:
    """``POST /v3/gpt-image-2-text-to-image``."""
    config = state.config
    if not _is_authorized(request, config.api_key):
        return error_response(
            config,
            401,
            "invalid_api_key",
            "Unauthorized: missing or invalid API key.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    failure = _injected_failure(config)
    if failure is not None:
        return failure
    try:
        generation = validate_request(parse_body(await request.body()))
    except RequestValidationError as exc:
        return error_response(config, 400, exc.code, exc.message, param=exc.param)
    if _blocked_word(generation.prompt, config.blocked_words) is not None:
        if config.policy_latency > 0:
            await _sleep_until(time.monotonic() + config.policy_latency)
        return error_response(
            config,
            400,
            "content_policy_violation",
            "Your request was rejected by the content policy: the prompt contains a blocked word.",
            param="prompt",
        )
    if config.latency > 0:
        await _sleep_until(time.monotonic() + config.latency)
    return await _respond(request, state, generation)


async def _respond(request: Request, state: EmulatorState, generation: GenerationRequest) -> Response:
    """Answer a valid request according to ``config.response_mode``."""
    mode = state.config.response_mode
    if mode == "malformed_json":
        return Response('{"images": [', media_type="application/json")
    if mode == "no_images_key":
        return JSONResponse({"data": []})
    if mode == "empty_images":
        return JSONResponse({"images": []})
    if mode not in ("ok", "extra_images", "repeated_images", "objects", "objects_without_url"):
        return error_response(state.config, 500, "emulator_misconfigured", f"unknown response_mode {mode!r}")
    if mode == "objects_without_url":  # rendered but never stored: no URL answers for them
        rendered = await _render_images(_base_url(request, state), state.config, generation)
        encoded = [base64.b64encode(image.data).decode("ascii") for image in rendered]
        return JSONResponse({"images": [{"b64_json": data, "revised_prompt": generation.prompt} for data in encoded]})
    urls = await _issue_images(_base_url(request, state), state, generation)
    if mode == "extra_images":
        urls += await _issue_images(_base_url(request, state), state, generation)
    elif mode == "repeated_images":
        urls = [url for url in urls for _ in range(2)]
    elif mode == "objects":
        return JSONResponse({"images": [{"url": url, "revised_prompt": generation.prompt} for url in urls]})
    return JSONResponse({"images": urls})


def _base_url(request: Request, state: EmulatorState) -> str:
    """Where image URLs point: the emulator's known base URL, else the one the client used."""
    return state.base_url or str(request.base_url).rstrip("/")


async def _render_images(base_url: str, config: EmulatorConfig, generation: GenerationRequest) -> list[StoredImage]:
    """Render ``min(n, max_images)`` images concurrently in threads (not stored: their URLs do not answer yet)."""
    count = generation.n if config.max_images is None else min(generation.n, config.max_images)
    return list(
        await asyncio.gather(
            *(asyncio.to_thread(_make_image, base_url, config, generation, index) for index in range(count))
        )
    )


async def _issue_images(base_url: str, state: EmulatorState, generation: GenerationRequest) -> list[str]:
    """Render ``min(n, max_images)`` images and store them; return their URLs."""
    images = await _render_images(base_url, state.config, generation)
    for image in images:
        state.store_image(image)
    return [image.url for image in images]


def _make_image(base_url: str, config: EmulatorConfig, generation: GenerationRequest, index: int) -> StoredImage:
    """Render one image (honouring the wrong_format/wrong_dimensions/noise knobs) into a StoredImage."""
    asked = generation.output_format
    rendered_format = ("jpeg" if asked == "png" else "png") if config.wrong_format else asked
    compression = generation.output_compression if rendered_format == asked else None
    width, height = generation.width, generation.height
    if config.wrong_dimensions:
        width, height = max(1, width // 2), max(1, height // 2)
    data = render_image(generation.prompt, index, width, height, rendered_format, compression, noise=config.noise)
    token = secrets.token_urlsafe(24) + EXTENSIONS[asked]
    return StoredImage(
        token=token,
        url=f"{base_url}{IMAGES_PREFIX}{token}",
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=CONTENT_TYPES[asked],
        width=width,
        height=height,
        prompt=generation.prompt,
        index=index,
        expires_at=time.monotonic() + config.url_ttl,
    )


# --------------------------------------------------------------------------- downloads
async def handle_download(request: Request, state: EmulatorState) -> Response:
    """``GET /images/{token}``: stream a stored image until its URL expires."""
    config = state.config
    token = str(request.path_params["token"])
    image = state.image_for_token(token) if token.endswith(tuple(FORMAT_BY_EXTENSION)) else None
    if image is None or image.expired():
        reason = "expired" if image is not None else "does not exist"
        return error_response(config, 404, "image_not_found", f"Image not found: the URL {reason}.")
    if config.download_latency > 0:
        await _sleep_until(time.monotonic() + config.download_latency)
    headers = {"Content-Length": str(len(image.data)), "Cache-Control": "private, max-age=0"}
    media_type = config.image_content_type or image.content_type
    if config.truncate_bodies:
        half = image.data[: len(image.data) // 2]
        body = _chunks(half, config.slow_body_seconds)
        return TruncatedStreamingResponse(body, headers=headers, media_type=media_type)
    return StreamingResponse(_chunks(image.data, config.slow_body_seconds), headers=headers, media_type=media_type)


async def _chunks(data: bytes, spread_seconds: float) -> AsyncIterator[bytes]:
    """Yield ``data`` in chunks; with ``spread_seconds`` > 0, ~8 chunks paced over that time.

    Pacing targets absolute deadlines, so the last chunk never leaves before ``spread_seconds``.
    """
    if spread_seconds <= 0:
        for start in range(0, len(data), STREAM_CHUNK_BYTES):
            yield data[start : start + STREAM_CHUNK_BYTES]
        return
    size = max(1, math.ceil(len(data) / SLOW_BODY_CHUNKS))
    offsets = range(0, max(len(data), 1), size)
    began = time.monotonic()
    for number, start in enumerate(offsets, start=1):
        await _sleep_until(began + spread_seconds * number / len(offsets))
        yield data[start : start + size]


async def _sleep_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (asyncio may wake a hair early)."""
    while (remaining := deadline - time.monotonic()) > 0:
        await asyncio.sleep(remaining + 0.001)


class TruncatedStreamingResponse(StreamingResponse):
    """Streams its (partial) body but never sends the final message, so the server drops the
    connection short of the declared Content-Length: clients see a premature end of body."""

    async def stream_response(self, send: Send) -> None:
        """Send the start and the body chunks, then stop without completing the response."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


# --------------------------------------------------------------------------- recording
class RecordingMiddleware:
    """Pure ASGI middleware: records every HTTP call, tracks in-flight gauges, adds ``x-request-id``."""

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        """Wrap ``app``; calls are recorded into ``state``."""
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the wrapped app, capturing the request body and the response status."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = _gauge_kind(scope["method"], scope["path"])
        request_id = "req_" + secrets.token_hex(12)
        body_parts: list[bytes] = []
        status = [500]
        progress = {"started": False, "completed": False, "recorded": False}
        started_at = time.monotonic()

        def finish() -> None:
            # Once only, and before the last byte leaves: a client that has the whole answer
            # must already find the call recorded and the in-flight gauge released.
            if progress["recorded"]:
                return
            progress["recorded"] = True
            if kind:
                self.state.leave(kind)
            self.state.record(_recorded_call(scope, body_parts, status[0], started_at, self.state.config.api_key))

        async def receive_recording() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body_parts.append(message.get("body", b""))
            return message

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                progress["started"] = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                progress["completed"] = True
                finish()
            await send(message)

        if kind:
            self.state.enter(kind)
        try:
            await self.app(scope, receive_recording, send_recording)
        finally:
            if progress["started"] and not progress["completed"] and self.state.config.truncate_bodies:
                # Same task as the server's run_asgi: lets the log filter recognise our truncation.
                _deliberately_truncated.set(True)
            finish()


def _gauge_kind(method: str, path: str) -> str | None:
    """Which in-flight gauge a request counts towards, if any."""
    if method == "POST" and path == GENERATION_PATH:
        return "generation"
    if method == "GET" and path.startswith(IMAGES_PREFIX):
        return "download"
    return None


def _recorded_call(scope: Scope, body_parts: list[bytes], status: int, started_at: float, api_key: str) -> RecordedCall:
    """Build the RecordedCall of a finished request, with credentials removed."""
    headers: dict[str, str] = {}
    has_authorization = False
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        if name in REDACTED_HEADERS:
            has_authorization = True
            continue
        value = raw_value.decode("latin-1")
        if api_key and api_key in value:
            value = value.replace(api_key, "***")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return RecordedCall(
        method=scope["method"],
        path=scope["path"],
        headers=headers,
        body=_decoded_body(b"".join(body_parts)),
        status=status,
        started_at=started_at,
        finished_at=time.monotonic(),
        has_authorization=has_authorization,
    )


def _decoded_body(raw: bytes) -> Any:
    """The request body as parsed JSON, or ``None`` if empty or not JSON."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- logging
class _TruncationLogFilter(logging.Filter):
    """Silence uvicorn's complaint about the responses we truncate on purpose (and only those)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the 'returned without completing response' error for deliberate truncations."""
        return not (record.msg == INCOMPLETE_RESPONSE_LOG and _deliberately_truncated.get())


def _install_log_filter() -> None:
    """Attach the truncation filter to uvicorn's error logger once."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, _TruncationLogFilter) for existing in logger.filters):
        logger.addFilter(_TruncationLogFilter())
