"""Every behaviour knob, observed over loopback HTTP."""

from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
from PIL import Image

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ authentication
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Basic emulator-key"},
        {"Authorization": "emulator-key"},
        {"Authorization": "Bearer"},
        {"Authorization": b"Bearer \xe9mulator-key"},
    ],
    ids=["missing", "wrong-key", "wrong-scheme", "no-scheme", "empty-key", "non-ascii"],
)
def test_401_json(emu, generate, headers):
    response = generate({"prompt": "p"}, headers=headers)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["www-authenticate"] == "Bearer"
    assert emu.state.images == []


def test_401_text(emu, generate):
    emu.configure(error_format="text")

    response = generate({"prompt": "p"}, headers={"Authorization": "Bearer nope"})

    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/plain")
    assert "Unauthorized" in response.text
    assert not response.text.lstrip().startswith("{")
    assert "x-request-id" in response.headers


def test_auth_checked_before_everything(emu, generate):
    emu.configure(server_errors=1, rate_limit_burst=1)

    response = generate(raw=b"{broken", headers={"Authorization": "Bearer nope"})

    assert response.status_code == 401
    assert (emu.config.server_errors, emu.config.rate_limit_burst) == (1, 1)  # not consumed


def test_custom_api_key(emu, generate):
    emu.configure(api_key="other-key")

    assert generate({"prompt": "p"}, headers={"Authorization": "Bearer emulator-key"}).status_code == 401
    assert generate({"prompt": "p"}).status_code == 200  # auth_headers() follows the live key


# ------------------------------------------------------------------ injected failures
def test_rate_limit_with_retry_after(emu, generate):
    emu.configure(rate_limit_burst=2, retry_after=1.2)

    first, second, third = (generate({"prompt": "p"}) for _ in range(3))

    assert [first.status_code, second.status_code, third.status_code] == [429, 429, 200]
    assert first.headers["retry-after"] == "2"  # rounded up to whole seconds
    assert first.json()["error"]["code"] == "rate_limit_exceeded"
    assert "x-request-id" in first.headers
    assert emu.config.rate_limit_burst == 0


def test_rate_limit_without_retry_after(emu, generate):
    emu.configure(rate_limit_burst=1)

    limited, ok = generate({"prompt": "p"}), generate({"prompt": "p"})

    assert (limited.status_code, ok.status_code) == (429, 200)
    assert "retry-after" not in limited.headers


def test_rate_limit_text_format(emu, generate):
    emu.configure(rate_limit_burst=1, retry_after=0, error_format="text")

    response = generate({"prompt": "p"})

    assert response.status_code == 429
    assert response.headers["retry-after"] == "0"
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors(emu, generate, status):
    emu.configure(server_errors=2, server_error_status=status)

    statuses = [generate({"prompt": "p"}).status_code for _ in range(3)]

    assert statuses == [status, status, 200]
    assert [call.status for call in emu.state.generation_calls()] == statuses


def test_server_errors_come_before_rate_limits_and_validation(emu, generate):
    emu.configure(server_errors=1, rate_limit_burst=1)

    statuses = [generate({"prompt": "p", "n": 99}).status_code for _ in range(3)]

    assert statuses == [500, 429, 400]


def test_server_error_body(emu, generate):
    emu.configure(server_errors=1)

    error = generate({"prompt": "p"}).json()["error"]

    assert error["code"] == "server_error"
    assert error["param"] is None


# ------------------------------------------------------------------ result shaping
def test_max_images(emu, generate):
    emu.configure(max_images=2)

    assert len(generate({"prompt": "p", "n": 5}).json()["images"]) == 2
    assert len(generate({"prompt": "p", "n": 1}).json()["images"]) == 1
    emu.configure(max_images=0)
    assert generate({"prompt": "p", "n": 3}).json() == {"images": []}


def test_live_config_mutation(emu, generate):
    emu.config.max_images = 1

    assert len(generate({"prompt": "p", "n": 3}).json()["images"]) == 1


def test_blocked_words(emu, generate):
    response = generate({"prompt": "Something FORBIDDEN here"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("content_policy_violation", "prompt")
    emu.configure(blocked_words=("kitten",))
    assert generate({"prompt": "forbidden fruit"}).status_code == 200
    assert generate({"prompt": "a Kitten"}).json()["error"]["code"] == "content_policy_violation"


def test_validation_before_content_policy_before_latency(emu, generate):
    emu.configure(latency=5.0)

    invalid = generate({"prompt": "forbidden", "n": 11})
    began = time.monotonic()
    blocked = generate({"prompt": "forbidden"})

    assert invalid.json()["error"]["param"] == "n"
    assert blocked.json()["error"]["code"] == "content_policy_violation"
    assert time.monotonic() - began < 2.5  # no latency for rejected prompts


def test_policy_latency_delays_only_content_policy_rejections(emu, generate):
    emu.configure(policy_latency=0.3)

    began = time.monotonic()
    blocked = generate({"prompt": "forbidden"})
    blocked_took = time.monotonic() - began
    began = time.monotonic()
    allowed = generate({"prompt": "p"})

    assert blocked.json()["error"]["code"] == "content_policy_violation"
    assert blocked_took >= 0.3
    assert allowed.status_code == 200
    assert time.monotonic() - began < 0.3


def test_latency(emu, generate):
    emu.configure(latency=0.3)

    began = time.monotonic()
    response = generate({"prompt": "p"})

    assert response.status_code == 200
    assert time.monotonic() - began >= 0.3


@pytest.mark.parametrize(
    ("mode", "body"),
    [("malformed_json", '{"images": ['), ("no_images_key", '{"data":[]}'), ("empty_images", '{"images":[]}')],
)
def test_response_modes(emu, generate, mode, body):
    emu.configure(response_mode=mode)

    response = generate({"prompt": "p", "n": 2})

    assert response.status_code == 200
    assert response.text == body
    assert emu.state.images == []


def test_response_mode_objects(emu, client, generate):
    emu.configure(response_mode="objects")

    images = generate({"prompt": "a fox", "n": 2}).json()["images"]

    assert [set(image) for image in images] == [{"url", "revised_prompt"}] * 2
    assert [image["revised_prompt"] for image in images] == ["a fox"] * 2
    assert [image.url for image in emu.state.images] == [image["url"] for image in images]
    assert client.get(images[0]["url"]).content.startswith(PNG_MAGIC)


def test_response_mode_objects_without_url(emu, generate):
    emu.configure(response_mode="objects_without_url")

    images = generate({"prompt": "a fox", "n": 2, "output_format": "jpeg"}).json()["images"]

    assert [set(image) for image in images] == [{"b64_json", "revised_prompt"}] * 2
    assert base64.b64decode(images[0]["b64_json"]).startswith(JPEG_MAGIC)
    assert emu.state.images == []  # no URL to download


def test_response_mode_objects_honours_max_images(emu, generate):
    emu.configure(response_mode="objects", max_images=1)

    assert len(generate({"prompt": "p", "n": 3}).json()["images"]) == 1


@pytest.mark.parametrize("mode", ["objects", "objects_without_url"])
def test_response_mode_from_the_command_line(mode):
    from airflow_provider_imagegen.emulator.__main__ import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["--response-mode", mode])).response_mode == mode


def test_malformed_json_does_not_parse(emu, generate):
    emu.configure(response_mode="malformed_json")

    with pytest.raises(ValueError, match="Expecting"):
        generate({"prompt": "p"}).json()


# ------------------------------------------------------------------ downloads
def test_url_ttl_expiry(emu, client, generate):
    emu.configure(url_ttl=1.0)
    url = generate({"prompt": "ephemeral"}).json()["images"][0]
    issued = time.monotonic()
    assert client.get(url).status_code == 200

    deadline = issued + 10
    status = 200
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
        status = client.get(url).status_code

    assert status == 404
    assert time.monotonic() - issued >= 1.0 - 0.05
    assert emu.state.image_for_url(url).expired()


def test_download_latency(emu, client, generate):
    url = generate({"prompt": "p"}).json()["images"][0]
    emu.configure(download_latency=0.3)

    began = time.monotonic()
    response = client.get(url)

    assert response.status_code == 200
    assert time.monotonic() - began >= 0.3


def test_slow_body(emu, client, generate):
    url = generate({"prompt": "slow", "output_format": "jpeg"}).json()["images"][0]
    emu.configure(slow_body_seconds=0.4)

    began = time.monotonic()
    chunks = 0
    with client.stream("GET", url) as response:
        first_byte = time.monotonic() - began
        for chunk in response.iter_raw():
            chunks += bool(chunk)
    elapsed = time.monotonic() - began

    assert elapsed >= 0.4
    assert first_byte < 0.4
    assert chunks >= 2


def _stream_counting(client: httpx.Client, url: str, seen: dict[str, int]) -> None:
    """Stream ``url``, recording the declared Content-Length and the bytes actually received."""
    with client.stream("GET", url) as response:
        seen["declared"] = int(response.headers["content-length"])
        seen["received"] = 0
        for chunk in response.iter_raw():
            seen["received"] += len(chunk)


def test_truncated_bodies_fail_the_client(emu, client, generate):
    url = generate({"prompt": "cut short"}).json()["images"][0]
    full = emu.state.image_for_url(url).size_bytes
    emu.configure(truncate_bodies=True)

    seen: dict[str, int] = {}
    with pytest.raises(httpx.RemoteProtocolError):
        _stream_counting(client, url, seen)
    assert seen == {"declared": full, "received": full // 2}
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(url)
    emu.configure(truncate_bodies=False)
    assert len(client.get(url).content) == full  # the server is fine afterwards


def test_wrong_format(emu, client, generate):
    emu.configure(wrong_format=True)
    png_url = generate({"prompt": "p"}).json()["images"][0]
    jpeg_url = generate({"prompt": "p", "output_format": "jpeg", "output_compression": 50}).json()["images"][0]

    as_png, as_jpeg = client.get(png_url), client.get(jpeg_url)

    assert png_url.endswith(".png")
    assert as_png.headers["content-type"] == "image/png"
    assert as_png.content.startswith(JPEG_MAGIC)
    assert as_jpeg.headers["content-type"] == "image/jpeg"
    assert as_jpeg.content.startswith(PNG_MAGIC)


def test_wrong_dimensions(emu, client, generate):
    emu.configure(wrong_dimensions=True)

    url = generate({"prompt": "p", "size": "1536x1024", "output_format": "jpeg"}).json()["images"][0]

    with Image.open(io.BytesIO(client.get(url).content)) as picture:
        assert picture.size == (768, 512)
    assert (emu.state.image_for_url(url).width, emu.state.image_for_url(url).height) == (768, 512)


def test_image_content_type_override(emu, client, generate):
    url = generate({"prompt": "p"}).json()["images"][0]
    emu.configure(image_content_type="application/octet-stream")

    response = client.get(url)

    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content.startswith(PNG_MAGIC)


@pytest.mark.slow
def test_noise_makes_huge_pngs(emu, client, generate):
    emu.configure(noise=True)

    url = generate({"prompt": "noise", "size": "3840x2160"}).json()["images"][0]
    response = client.get(url)

    assert response.status_code == 200
    assert len(response.content) >= 20 * 1024 * 1024
    assert int(response.headers["content-length"]) == len(response.content)
    with Image.open(io.BytesIO(response.content)) as picture:
        assert picture.size == (3840, 2160)
