"""Decoded bytes stay bounded whatever the encoding: codecs, the bounded decoder, capped API answers."""

from __future__ import annotations

import gzip
import json
import zlib

import httpx
import pytest

from airflow_provider_imagegen.exceptions import (
    ImageGenBadResponseError,
    ImageGenDownloadError,
    ImageGenServerError,
)
from airflow_provider_imagegen.hooks._client import MAX_ANSWER_BYTES, MAX_ERROR_BODY_BYTES
from airflow_provider_imagegen.hooks.download import BoundedDecoder, ImageStream, content_codec
from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
from tests.hooks._fakes import FAST, connection_json


class _Raw(httpx.SyncByteStream):
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def __iter__(self):
        yield from self.chunks


def _streamed(body: bytes, status: int = 200, **headers: str) -> httpx.Response:
    headers = {name.replace("_", "-"): value for name, value in headers.items()}
    return httpx.Response(status, headers=headers, stream=_Raw(body), request=httpx.Request("GET", "https://x.test/"))


def _zeros_gzip(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    parts = [compressor.compress(block) for _ in range(size >> 20)]
    return b"".join(parts) + compressor.flush()


@pytest.mark.parametrize(
    ("header", "expected"),
    [("", "identity"), ("identity", "identity"), ("GZIP", "gzip"), ("x-gzip", "gzip"), ("deflate", "deflate")],
)
def test_single_known_codecs_accepted(header, expected):
    assert content_codec(httpx.Headers({"content-encoding": header} if header else {})) == expected


@pytest.mark.parametrize(
    ("header", "word"),
    [("gzip, gzip", "stacked"), ("deflate, gzip", "stacked"), ("br", "unsupported"), ("zstd", "unsupported")],
)
def test_stacked_or_unknown_codecs_refused(header, word):
    with pytest.raises(ImageGenDownloadError, match=word):
        content_codec(httpx.Headers({"content-encoding": header}))
    stream = ImageStream(_streamed(b"x", content_encoding=header), max_bytes=100, deadline=5)
    with pytest.raises(ImageGenDownloadError, match=word):
        list(stream.iter_bytes())


def test_stacked_gzip_bomb_refused_before_decoding_a_byte():
    bomb = gzip.compress(_zeros_gzip(64 << 20))  # 64 MiB behind two layers: a few hundred bytes
    assert len(bomb) < 2048
    stream = ImageStream(_streamed(bomb, content_encoding="gzip, gzip"), max_bytes=1 << 30, deadline=5)
    with pytest.raises(ImageGenDownloadError, match="stacked"):
        list(stream.iter_bytes())
    assert stream.bytes_read == 0


@pytest.mark.parametrize("codec", ["gzip", "deflate", "raw-deflate"])
def test_decoder_steps_never_exceed_the_limit(codec):
    data = bytes(range(256)) * 4000 + b"\0" * 3_000_000
    if codec == "gzip":
        wire = gzip.compress(data)
    elif codec == "deflate":
        wire = zlib.compress(data)
    else:
        raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        wire = raw.compress(data) + raw.flush()
    decoder = BoundedDecoder("gzip" if codec == "gzip" else "deflate", chunk_limit=10_000)
    pieces = [piece for start in range(0, len(wire), 777) for piece in decoder.feed(wire[start : start + 777])]
    decoder.finish()
    assert max(len(piece) for piece in pieces) <= 10_000
    assert b"".join(pieces) == data


def test_decoder_multi_member_gzip_and_cut_short():
    decoder = BoundedDecoder("gzip")
    assert b"".join(decoder.feed(gzip.compress(b"ab") + gzip.compress(b"cd"))) == b"abcd"
    decoder.finish()
    cut = BoundedDecoder("gzip")
    list(cut.feed(gzip.compress(b"x" * 10_000)[:-10]))
    with pytest.raises(ImageGenDownloadError, match="cut short"):
        cut.finish()


def test_deflate_bomb_stops_at_the_cap_with_bounded_steps():
    bomb = zlib.compress(b"\0" * (200 << 20), 9)  # 200 MiB in ~200 KB
    stream = ImageStream(_streamed(bomb, content_encoding="deflate"), max_bytes=1 << 20, deadline=30)
    sizes: list[int] = []

    def read_all() -> None:
        sizes.extend(len(chunk) for chunk in stream.iter_bytes())

    with pytest.raises(ImageGenDownloadError, match="exceeds the cap"):
        read_all()
    assert stream.bytes_read <= (1 << 20) + 64 * 1024
    assert max(sizes) <= 64 * 1024


# -- the generation answer: a capped JSON body, capped error bodies --------------------------------


@pytest.fixture
def _conn(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_IMAGEGEN_DEFAULT", connection_json(max_retries=0))


def _hook(handler) -> ImageGenHook:
    return ImageGenHook(transport=httpx.MockTransport(handler), retry_policy=FAST)


@pytest.mark.usefixtures("_conn")
def test_oversized_answer_is_a_bad_response():
    padding = "x" * (MAX_ANSWER_BYTES + 10)

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.dumps({"images": ["https://cdn.example.test/1.png"], "pad": padding}).encode()
        return httpx.Response(
            200, stream=_Raw(body[:65536], body[65536:]), headers={"content-type": "application/json"}
        )

    with pytest.raises(ImageGenBadResponseError, match="above"):
        _hook(handler).generate_images("p")


@pytest.mark.usefixtures("_conn")
def test_gzip_bomb_answer_is_refused_at_the_cap():
    bomb = _zeros_gzip(16 << 20)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Raw(bomb), headers={"content-encoding": "gzip"})

    with pytest.raises(ImageGenBadResponseError, match="above"):
        _hook(handler).generate_images("p")


@pytest.mark.usefixtures("_conn")
def test_stacked_encoding_answer_is_a_bad_response():
    def handler(request: httpx.Request) -> httpx.Response:
        body = gzip.compress(gzip.compress(b'{"images": ["https://cdn.example.test/1.png"]}'))
        return httpx.Response(200, stream=_Raw(body), headers={"content-encoding": "gzip, gzip"})

    with pytest.raises(ImageGenBadResponseError, match="stacked"):
        _hook(handler).generate_images("p")


@pytest.mark.usefixtures("_conn")
def test_error_body_is_read_only_up_to_its_cap():
    sent: list[int] = []

    class Endless(httpx.SyncByteStream):
        def __iter__(self):
            for _ in range(10_000):  # 640 MB if read to the end
                sent.append(1)
                yield b"e" * 65536

    handler = lambda request: httpx.Response(503, stream=Endless())  # noqa: E731
    with pytest.raises(ImageGenServerError):
        _hook(handler).generate_images("p")
    assert len(sent) * 65536 <= MAX_ERROR_BODY_BYTES + 2 * 65536


@pytest.mark.usefixtures("_conn")
def test_gzip_answer_of_normal_size_still_works():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "identity"
        body = gzip.compress(b'{"images": ["https://cdn.example.test/1.png"]}')
        return httpx.Response(200, stream=_Raw(body), headers={"content-encoding": "gzip"})

    assert _hook(handler).generate_images("p").image_urls == ["https://cdn.example.test/1.png"]
