"""Happy paths over real loopback HTTP: generation, downloads, determinism, recording, concurrency."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time

import httpx
import pytest
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def _download(client: httpx.Client, url: str) -> httpx.Response:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return response


def test_round_trip_three_pngs(emu, client, generate):
    response = generate({"prompt": "a red fox", "n": 3, "size": "1536x1024"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    urls = response.json()["images"]
    assert len(urls) == 3
    assert len(set(urls)) == 3
    for url in urls:
        assert url.startswith(f"{emu.base_url}/images/")
        assert url.endswith(".png")
        image = _download(client, url)
        assert image.headers["content-type"] == "image/png"
        assert int(image.headers["content-length"]) == len(image.content)
        assert image.content.startswith(PNG_MAGIC)
        with Image.open(io.BytesIO(image.content)) as picture:
            assert picture.format == "PNG"
            assert picture.size == (1536, 1024)
        assert emu.state.image_for_url(url).sha256 == hashlib.sha256(image.content).hexdigest()


def test_defaults_are_one_square_png(emu, client, generate):
    urls = generate({"prompt": "defaults"}).json()["images"]

    assert len(urls) == 1
    with Image.open(io.BytesIO(_download(client, urls[0]).content)) as picture:
        assert (picture.format, picture.size) == ("PNG", (1024, 1024))


def test_jpeg_with_compression(emu, client, generate):
    body = {"prompt": "a blue whale", "output_format": "jpeg", "size": "688x2048"}
    low = generate({**body, "output_compression": 5}).json()["images"][0]
    high = generate({**body, "output_compression": 100}).json()["images"][0]

    assert low.endswith(".jpg")
    low_image, high_image = _download(client, low), _download(client, high)
    assert low_image.headers["content-type"] == "image/jpeg"
    assert low_image.content.startswith(JPEG_MAGIC)
    with Image.open(io.BytesIO(low_image.content)) as picture:
        assert (picture.format, picture.size) == ("JPEG", (688, 2048))
    assert len(low_image.content) < len(high_image.content)


def test_auto_size_renders_1024_square(emu, client, generate):
    url = generate({"prompt": "auto", "size": "auto"}).json()["images"][0]

    with Image.open(io.BytesIO(_download(client, url).content)) as picture:
        assert picture.size == (1024, 1024)
    assert emu.state.image_for_url(url).width == 1024


@pytest.mark.parametrize("size", ["2048x880", "880x2048", "2048x688"])
def test_unusual_sizes(client, generate, size):
    url = generate({"prompt": "sizes", "size": size, "output_format": "jpeg"}).json()["images"][0]

    width, height = (int(part) for part in size.split("x"))
    with Image.open(io.BytesIO(_download(client, url).content)) as picture:
        assert picture.size == (width, height)


def test_empty_prompt_is_valid(generate):
    response = generate({"prompt": ""})

    assert response.status_code == 200
    assert len(response.json()["images"]) == 1


def test_determinism_same_prompt_same_bytes(emu, client, generate):
    first = generate({"prompt": "a lighthouse", "n": 2}).json()["images"]
    second = generate({"prompt": "a lighthouse", "n": 2}).json()["images"]
    other = generate({"prompt": "a lighthouse at night", "n": 1}).json()["images"]

    assert set(first).isdisjoint(second)  # fresh, unguessable URLs every time
    digest = {url: hashlib.sha256(_download(client, url).content).hexdigest() for url in first + second + other}
    assert digest[first[0]] == digest[second[0]]
    assert digest[first[1]] == digest[second[1]]
    assert digest[first[0]] != digest[first[1]]  # index matters
    assert digest[other[0]] != digest[first[0]]  # prompt matters
    assert emu.state.sha256_by_url() == digest


def test_urls_use_unguessable_tokens(emu, generate):
    urls = generate({"prompt": "tokens", "n": 4}).json()["images"]

    tokens = [url.rsplit("/", 1)[1].removesuffix(".png") for url in urls]
    assert all(len(token) >= 24 for token in tokens)
    assert len(set(tokens)) == 4


def test_stored_image_metadata(emu, generate):
    url = generate({"prompt": "metadata", "n": 2, "size": "1024x1536"}).json()["images"][1]

    stored = emu.state.image_for_url(url)
    assert stored is not None
    assert (stored.prompt, stored.index, stored.width, stored.height) == ("metadata", 1, 1024, 1536)
    assert stored.content_type == "image/png"
    assert stored.url == url
    assert stored.token == url.rsplit("/", 1)[1]
    assert not stored.expired()
    assert emu.state.image_for_url(f"{emu.base_url}/images/nope.png") is None
    assert "metadata" not in repr(stored)  # prompts can be long: kept out of repr


def test_unknown_image_is_404(emu, client):
    for path in ("/images/doesnotexist.png", "/images/doesnotexist", "/images/x.gif"):
        response = client.get(emu.base_url + path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "image_not_found"
        assert "x-request-id" in response.headers


def test_recorded_calls(emu, client, generate):
    url = generate({"prompt": "recorded", "n": 1}).json()["images"][0]
    _download(client, url)

    post, get = emu.calls
    assert (post.method, post.path, post.status) == ("POST", "/v3/gpt-image-2-text-to-image", 200)
    assert post.body == {"prompt": "recorded", "n": 1}
    assert post.headers["content-type"] == "application/json"
    assert post.has_authorization
    assert "authorization" not in post.headers
    assert post.started_at <= post.finished_at
    assert (get.method, get.status, get.body) == ("GET", 200, None)
    assert get.path == "/images/" + url.rsplit("/", 1)[1]
    assert not get.has_authorization
    assert emu.state.generation_calls() == [post]
    assert emu.state.download_calls() == [get]


def test_api_key_never_recorded(emu, client):
    headers = {**emu.auth_headers(), "X-Debug-Echo": f"key={emu.api_key}"}
    client.post(emu.endpoint_url, json={"prompt": "secret"}, headers=headers)
    client.post(emu.endpoint_url, json={"prompt": "secret"}, headers={"authorization": f"bearer {emu.api_key}"})

    assert [call.status for call in emu.calls] == [200, 200]  # the scheme is case-insensitive
    assert emu.api_key not in repr(emu.calls)
    assert emu.calls[0].headers["x-debug-echo"] == "key=***"
    assert all("authorization" not in call.headers for call in emu.calls)


def test_unparseable_body_recorded_as_none(emu, generate):
    generate(raw=b"{not json")

    (call,) = emu.calls
    assert (call.status, call.body) == (400, None)


def test_reset_keeps_config_and_images(emu, client, generate):
    emu.configure(max_images=1)
    url = generate({"prompt": "reset", "n": 2}).json()["images"][0]
    assert emu.state.max_in_flight_generations == 1

    emu.reset()

    assert emu.calls == []
    assert emu.state.max_in_flight_generations == 0
    assert emu.config.max_images == 1
    _download(client, url)
    emu.reset(clear_images=True)
    assert client.get(url).status_code == 404


def test_concurrent_generations_overlap(emu):
    emu.configure(latency=0.3)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *(client.post(emu.endpoint_url, json={"prompt": f"p{i}"}, headers=emu.auth_headers()) for i in range(8))
            )
        return [response.status_code for response in responses]

    began = time.monotonic()
    statuses = asyncio.run(burst())
    elapsed = time.monotonic() - began

    assert statuses == [200] * 8
    assert emu.state.max_in_flight_generations >= 5
    assert emu.state.in_flight_generations == 0
    assert elapsed < 8 * 0.3  # they overlapped instead of queueing
    assert all(call.duration >= 0.3 for call in emu.state.generation_calls())


def test_concurrent_downloads_are_gauged(emu, generate):
    urls = generate({"prompt": "fan out", "n": 4, "output_format": "jpeg"}).json()["images"]
    emu.configure(download_latency=0.3)

    async def fan_out() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(*(client.get(url) for url in urls))
        return [response.status_code for response in responses]

    assert asyncio.run(fan_out()) == [200] * 4
    assert emu.state.max_in_flight_downloads >= 3
    assert emu.stats()["download_calls"] == 4
