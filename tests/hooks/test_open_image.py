"""``open_image``: an image URL the API returned, streamed without the key, within the URL policy and its caps.

The URL policy and the capped stream themselves are unit-tested in ``test_download.py``.
"""

from __future__ import annotations

import httpx
import pytest

from airflow_provider_imagegen.exceptions import (
    ImageGenDownloadError,
)
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

from ._fakes import (
    CDN,
    FAST,
    PNG,
    FakeAPI,
    image,
    make_hook,
    ok,
    read_image,
    redirect,
)

# -- the scripted fake API (httpx.MockTransport, respx), no sockets --------------------------------


def test_open_image_sends_no_authorization(conn):
    url = f"{CDN}/img/1.png?sig=abc"
    api = FakeAPI(ok(url), images={url: image(PNG, content_length=str(len(PNG)))})
    hook = make_hook(api)
    result = hook.generate_images("p")
    assert read_image(hook, result.image_urls[0]) == PNG
    post, get = api.requests
    assert "authorization" in post.headers
    assert "authorization" not in get.headers
    assert get.headers["user-agent"].startswith("airflow-provider-imagegen/")
    assert str(get.url) == url


def test_open_image_stream_properties(conn):
    url = f"{CDN}/1.png"
    api = FakeAPI(images={url: image(PNG, content_type="image/png; charset=binary")})
    with make_hook(api).open_image(url) as stream:
        assert stream.content_type == "image/png"
        assert stream.content_length == len(PNG)
        assert b"".join(stream.iter_bytes()) == PNG
        assert stream.bytes_read == len(PNG)


def test_open_image_byte_cap(conn):
    url = f"{CDN}/big.png"
    api = FakeAPI(images={url: image(b"x" * 5000)})
    with pytest.raises(ImageGenDownloadError, match="cap"):
        read_image(make_hook(api, max_image_bytes=4096), url)


def test_open_image_byte_cap_without_content_length(conn):
    url = f"{CDN}/big.png"

    def chunked(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([b"x" * 3000, b"x" * 3000, b"x" * 3000]))

    api = FakeAPI(images={url: chunked})
    with pytest.raises(ImageGenDownloadError, match="exceeds the cap"):
        read_image(make_hook(api, max_image_bytes=4096), url, chunk_size=3000)


@pytest.mark.parametrize("code", [403, 404, 410, 500])
def test_open_image_error_status(conn, code):
    url = f"{CDN}/expired.png"
    api = FakeAPI(images={url: image(b"expired", code=code)})
    with pytest.raises(ImageGenDownloadError, match=f"HTTP {code}") as caught:
        read_image(make_hook(api), url)
    assert not caught.value.retryable
    assert len(api.gets) == 1


def test_open_image_transport_error(conn):
    url = f"{CDN}/1.png"
    api = FakeAPI(images={url: httpx.ConnectError("refused")})
    with pytest.raises(ImageGenDownloadError, match="ConnectError"):
        read_image(make_hook(api), url)


@pytest.mark.parametrize(
    "url",
    [
        "http://cdn.example.test/1.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/1.png",
        "https://10.1.2.3/1.png",
        "file:///etc/passwd",
    ],
)
def test_open_image_refuses_bad_urls_before_any_request(conn, url):
    api = FakeAPI()
    with pytest.raises(ImageGenDownloadError, match="Refusing"):
        read_image(make_hook(api), url)
    assert api.requests == []


def test_open_image_same_origin_http_allowed_for_a_local_api(conn):
    conn(host="http://127.0.0.1:8765")
    url = "http://127.0.0.1:8765/images/abc.png"
    api = FakeAPI(images={url: image()})
    assert read_image(make_hook(api), url) == PNG


def test_open_image_follows_https_redirects_without_the_key(conn):
    first, second, final = f"{CDN}/1.png", "https://cdn2.example.test/x.png", "https://cdn3.example.test/y.png"
    api = FakeAPI(images={first: redirect(second, 301), second: redirect(final, 307), final: image()})
    assert read_image(make_hook(api), first) == PNG
    assert [str(r.url) for r in api.gets] == [first, second, final]
    assert all("authorization" not in r.headers for r in api.gets)


@pytest.mark.parametrize(
    "target",
    [
        "http://cdn2.example.test/x.png",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/x.png",
        "https://192.168.0.10/x.png",
    ],
)
def test_open_image_refuses_redirects_to_http_or_internal_hosts(conn, target):
    first = f"{CDN}/1.png"
    api = FakeAPI(images={first: redirect(target), target: image()})
    with pytest.raises(ImageGenDownloadError, match="Refusing"):
        read_image(make_hook(api), first)
    assert [str(r.url) for r in api.gets] == [first]


def test_open_image_refuses_an_http_redirect_even_to_the_api_origin(conn):
    conn(host="http://127.0.0.1:8765")
    first, target = "http://127.0.0.1:8765/images/a.png", "http://127.0.0.1:8765/images/b.png"
    api = FakeAPI(images={first: redirect(target), target: image()})
    with pytest.raises(ImageGenDownloadError, match="non-https"):
        read_image(make_hook(api), first)


def test_open_image_too_many_redirects(conn):
    hops = [f"{CDN}/hop{i}.png" for i in range(8)]
    api = FakeAPI(images={hop: redirect(hops[i + 1]) for i, hop in enumerate(hops[:-1])})
    with pytest.raises(ImageGenDownloadError, match="Too many redirects"):
        read_image(make_hook(api), hops[0])
    assert len(api.gets) == 6  # the first request and five redirects


class _TrackedStream(httpx.SyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data, self.closed = data, False

    def __iter__(self):
        yield self.data

    def close(self) -> None:
        self.closed = True


def test_open_image_closes_every_response_after_redirects(conn):
    first, final = f"{CDN}/1.png", "https://cdn2.example.test/final.png"
    streams: list[_TrackedStream] = []

    def tracked(data: bytes, **kwargs):
        def answer(request: httpx.Request) -> httpx.Response:
            stream = _TrackedStream(data)
            streams.append(stream)
            return httpx.Response(200 if not kwargs else 302, headers=kwargs, stream=stream)

        return answer

    api = FakeAPI(images={first: tracked(b"", location=final), final: tracked(PNG)})
    with make_hook(api).open_image(first) as stream:
        assert stream.content_length is None  # opened, not read: reading to the end would close it anyway
    assert len(streams) == 2
    assert all(stream.closed for stream in streams)


def test_open_image_closes_the_response_on_an_error_inside_the_block(conn):
    url = f"{CDN}/1.png"
    streams: list[_TrackedStream] = []

    def tracked(request: httpx.Request) -> httpx.Response:
        streams.append(_TrackedStream(PNG))
        return httpx.Response(200, stream=streams[-1])

    api = FakeAPI(images={url: tracked})
    with pytest.raises(RuntimeError, match="consumer failed"), make_hook(api).open_image(url):
        raise RuntimeError("consumer failed")
    assert streams[0].closed


# -- the API emulator over loopback ----------------------------------------------------------------


def test_expired_url_is_a_download_error(emulator, hook):
    emulator.configure(url_ttl=0)
    (url,) = hook.generate_images("p").image_urls
    with pytest.raises(ImageGenDownloadError, match="HTTP 404"):
        read_image(hook, url)


def test_truncated_body_is_a_download_error(emulator, hook):
    emulator.configure(truncate_bodies=True)
    (url,) = hook.generate_images("p").image_urls
    with pytest.raises(ImageGenDownloadError):
        read_image(hook, url)


def test_byte_cap_against_the_emulator(emulator, imagegen_conn):
    hook = ImageGenHook(imagegen_conn, retry_policy=FAST, max_image_bytes=1024)
    emulator.configure(noise=True)
    (url,) = hook.generate_images("p").image_urls
    with pytest.raises(ImageGenDownloadError, match="cap"):
        read_image(hook, url)
    hook.close()
