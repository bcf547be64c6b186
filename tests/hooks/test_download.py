"""The download room of the hook: the image URL policy and the capped, deadlined stream."""

from __future__ import annotations

import httpx
import pytest

from airflow_provider_imagegen.exceptions import ImageGenDownloadError
from airflow_provider_imagegen.hooks.download import ImageStream, check_image_url

# -- check_image_url -----------------------------------------------------------------------------

BASE = "https://api.highwayapi.ai"
LOCAL_BASE = "http://127.0.0.1:8765"


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://cdn.example.com/img/1.png?sig=abc", BASE),
        ("https://storage.googleapis.com/bucket/1.png", BASE),
        ("https://8.8.8.8/1.png", BASE),
        ("https://api.highwayapi.ai/images/1.png", BASE),
        ("http://127.0.0.1:8765/images/1.png", LOCAL_BASE),  # the emulator's own origin
        ("http://localhost:9000/images/a.png", "http://localhost:9000"),
    ],
)
def test_check_image_url_allowed(url, base):
    check_image_url(url, base)


@pytest.mark.parametrize(
    ("url", "base", "word"),
    [
        ("http://cdn.example.com/1.png", BASE, "scheme"),
        ("ftp://cdn.example.com/1.png", BASE, "scheme"),
        ("file:///etc/passwd", BASE, "scheme"),
        ("http://127.0.0.1:8765/images/1.png", BASE, "scheme"),
        ("https://127.0.0.1/1.png", BASE, "internal"),
        ("https://localhost/1.png", BASE, "internal"),
        ("https://foo.localhost/1.png", BASE, "internal"),
        ("https://10.0.0.5/1.png", BASE, "internal"),
        ("https://172.16.3.4/1.png", BASE, "internal"),
        ("https://192.168.1.1/1.png", BASE, "internal"),
        ("https://169.254.169.254/latest/meta-data", BASE, "internal"),
        ("https://[::1]/1.png", BASE, "internal"),
        ("https://[fe80::1]/1.png", BASE, "internal"),
        ("https://[fd00::1]/1.png", BASE, "internal"),
        ("https://[::ffff:127.0.0.1]/1.png", BASE, "internal"),
        ("https://0.0.0.0/1.png", BASE, "internal"),
        ("https://100.64.0.1/1.png", BASE, "internal"),
        ("https://127.1/1.png", BASE, "internal"),  # legacy short form the resolver accepts
        ("https://2130706433/1.png", BASE, "internal"),  # 127.0.0.1 as one number
        ("https://0x7f000001/1.png", BASE, "internal"),
        ("https://127.0.0.1:9999/1.png", LOCAL_BASE, "internal"),  # loopback, but another port
        ("http://127.0.0.1:9999/1.png", LOCAL_BASE, "scheme"),
        ("https:///no-host.png", BASE, "internal"),
    ],
)
def test_check_image_url_refused(url, base, word):
    with pytest.raises(ImageGenDownloadError) as caught:
        check_image_url(url, base)
    assert word in str(caught.value)
    assert not caught.value.retryable


# -- ImageStream ---------------------------------------------------------------------------------


class _Chunks(httpx.SyncByteStream):
    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks, self.fail_after = chunks, fail_after

    def __iter__(self):
        for position, chunk in enumerate(self.chunks):
            if self.fail_after is not None and position >= self.fail_after:
                raise httpx.RemoteProtocolError("peer closed connection")
            yield chunk


def _stream(
    chunks: list[bytes], headers: dict[str, str] | None = None, fail_after: int | None = None
) -> httpx.Response:
    return httpx.Response(
        200,
        headers=headers or {},
        stream=_Chunks(chunks, fail_after),
        request=httpx.Request("GET", "https://cdn.example.test/1.png"),
    )


def test_image_stream_reads_everything_under_the_cap():
    stream = ImageStream(
        _stream([b"ab", b"cd"], {"content-length": "4", "content-type": "image/PNG; x=y"}), max_bytes=4, deadline=5
    )
    assert b"".join(stream.iter_bytes()) == b"abcd"
    assert stream.bytes_read == 4
    assert stream.content_type == "image/png"
    assert stream.content_length == 4


def test_image_stream_declared_length_above_cap_refused_before_reading():
    stream = ImageStream(_stream([b"x"], {"content-length": "1000"}), max_bytes=10, deadline=5)
    with pytest.raises(ImageGenDownloadError, match="above the cap"):
        next(stream.iter_bytes())
    assert stream.bytes_read == 0


def test_image_stream_undeclared_body_above_cap_stops():
    stream = ImageStream(_stream([b"x" * 6, b"x" * 6, b"x" * 6]), max_bytes=10, deadline=5)
    with pytest.raises(ImageGenDownloadError, match="exceeds the cap"):
        list(stream.iter_bytes(chunk_size=6))
    assert stream.bytes_read == 12  # stopped at the first chunk over the cap, not the end


def test_image_stream_cut_short():
    stream = ImageStream(_stream([b"ab"], {"content-length": "10"}), max_bytes=100, deadline=5)
    with pytest.raises(ImageGenDownloadError, match="cut short: 2 of 10"):
        list(stream.iter_bytes())


def test_image_stream_connection_dropped():
    stream = ImageStream(_stream([b"ab", b"cd"], fail_after=1), max_bytes=100, deadline=5)
    with pytest.raises(ImageGenDownloadError, match="after 2 bytes") as caught:
        list(stream.iter_bytes(chunk_size=2))
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)


def test_image_stream_deadline():
    stream = ImageStream(_stream([b"ab", b"cd"]), max_bytes=100, deadline=-1.0)  # already past
    with pytest.raises(ImageGenDownloadError, match="deadline"):
        list(stream.iter_bytes())


def test_image_stream_gzip_encoded_body_is_not_reported_cut_short():
    """Content-Length counts wire bytes; a compressed body decodes to more bytes than that."""
    import gzip

    raw = b"\x89PNG" + b"\x00" * 5000
    wire = gzip.compress(raw)
    stream = ImageStream(
        _stream([wire], {"content-length": str(len(wire)), "content-encoding": "gzip"}), max_bytes=10_000, deadline=5
    )
    assert b"".join(stream.iter_bytes()) == raw


def test_image_stream_cap_applies_to_decoded_bytes():
    import gzip

    wire = gzip.compress(b"\x00" * 100_000)  # a small "zip bomb"
    stream = ImageStream(
        _stream([wire], {"content-length": str(len(wire)), "content-encoding": "gzip"}), max_bytes=10_000, deadline=5
    )
    with pytest.raises(ImageGenDownloadError, match="exceeds the cap"):
        list(stream.iter_bytes())
