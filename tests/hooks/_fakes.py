"""A scripted fake of the image API for httpx.MockTransport: exact, fast, no sockets; and the hook on it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx

from airflow_provider_imagegen.hooks._client import RetryPolicy
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

KEY = "sk-hook-test-7c1e9a2b4d6f8e0a"
BASE_URL = "https://api.example.test"
GENERATION_URL = BASE_URL + "/v3/gpt-image-2-text-to-image"
CDN = "https://cdn.example.test"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 56
#: fast backoff so retry tests take milliseconds
FAST = RetryPolicy(initial=0.01, maximum=0.02)

Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def connection_json(**extra: Any) -> str:
    """``AIRFLOW_CONN_*`` JSON for an imagegen connection to the fake API."""
    host = extra.pop("host", BASE_URL)
    password = extra.pop("password", KEY)
    return json.dumps({"conn_type": "imagegen", "host": host, "password": password, "extra": extra})


def ok(*urls: str, request_id: str | None = "req-ok-1") -> Callable[[httpx.Request], httpx.Response]:
    """A 200 answer listing ``urls`` (default: one CDN URL)."""
    urls = urls or (f"{CDN}/1.png",)
    headers = {"x-request-id": request_id} if request_id else {}
    return lambda request: httpx.Response(200, json={"images": list(urls)}, headers=headers)


def status(code: int, body: Any = None, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    """An error answer with a JSON ``{"error": {...}}`` body (or ``body`` as given)."""
    if body is None:
        body = {"error": {"message": f"scripted {code}", "code": f"scripted_{code}"}}
    headers = {name.replace("_", "-"): value for name, value in headers.items()}
    if isinstance(body, str):
        return lambda request: httpx.Response(code, text=body, headers=headers)
    return lambda request: httpx.Response(code, json=body, headers=headers)


def image(data: bytes = PNG, code: int = 200, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    """An image download answer."""
    headers = {"content-type": "image/png", **{name.replace("_", "-"): v for name, v in headers.items()}}
    return lambda request: httpx.Response(code, content=data, headers=headers)


def redirect(location: str, code: int = 302) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(code, headers={"location": location})


class FakeAPI:
    """Answers generation calls from a script (the last step repeats) and image GETs by URL."""

    def __init__(self, *steps: Step, images: dict[str, Step] | None = None) -> None:
        self.steps: list[Step] = list(steps) or [ok()]
        self.images = images or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "GET":
            step = self.images.get(str(request.url), image(code=404))
        else:
            step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return step
        return step(request)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    @property
    def posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST"]

    @property
    def gets(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "GET"]

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) for r in self.posts]


def make_hook(api: FakeAPI, **kwargs: Any) -> ImageGenHook:
    """An ``ImageGenHook`` whose sync and async clients talk to ``api`` (fast backoff unless given)."""
    kwargs.setdefault("retry_policy", FAST)
    return ImageGenHook(transport=api.transport, async_transport=api.transport, **kwargs)


def agenerate(hook: ImageGenHook, *args: Any, **kwargs: Any) -> Any:
    """``hook.agenerate_images(...)``, run to its end."""
    return asyncio.run(hook.agenerate_images(*args, **kwargs))


def read_image(hook: ImageGenHook, url: str, **kwargs: Any) -> bytes:
    """Every byte of ``hook.open_image(url)`` (``kwargs`` go to ``iter_bytes``)."""
    with hook.open_image(url) as stream:
        return b"".join(stream.iter_bytes(**kwargs))
