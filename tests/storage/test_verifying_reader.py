"""The reader's own figures: MD5, per-part digests for multipart ETags/checksums, and the end check."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from PIL import Image

from airflow_provider_imagegen.exceptions import ImageGenDownloadError, ImageGenImageVerificationError
from airflow_provider_imagegen.transfer import VerifyingReader
from tests.support import chunk_list, image_bytes


def _image(image_format: str, size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(buffer, format=image_format.upper())
    return buffer.getvalue()


def _chunks(data: bytes, size: int = 1000):
    return iter([data[i : i + size] for i in range(0, len(data), size)])


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_a_whole_image_passes_and_its_digests_are_exact(image_format):
    data = _image(image_format, (300, 200))
    part = 4096
    reader = VerifyingReader(_chunks(data, 777), image_format, (300, 200), part_size=part)
    assert reader.read() == data
    assert reader.finished
    assert reader.md5 == hashlib.md5(data, usedforsecurity=False).hexdigest()
    parts = [data[i : i + part] for i in range(0, len(data), part)]
    assert reader.parts == len(parts) > 1
    md5s = b"".join(hashlib.md5(p, usedforsecurity=False).digest() for p in parts)
    assert reader.composite_etag() == f"{hashlib.md5(md5s, usedforsecurity=False).hexdigest()}-{len(parts)}"
    sha256s = b"".join(hashlib.sha256(p).digest() for p in parts)
    assert reader.composite_sha256() == base64.b64encode(hashlib.sha256(sha256s).digest()).decode()


@pytest.mark.parametrize(("image_format", "marker"), [("png", "IEND chunk"), ("jpeg", "EOI marker")])
@pytest.mark.parametrize("keep", [0.5, 0.99], ids=["half", "all but the last bytes"])
def test_a_body_that_ends_early_is_refused(image_format, marker, keep):
    data = _image(image_format)
    reader = VerifyingReader(_chunks(data[: int(len(data) * keep)]), image_format, (64, 48))
    with pytest.raises(ImageGenDownloadError, match=f"cut short: .* {marker} at the end"):
        reader.read()
    assert not reader.finished


# -- streaming, whole reads and refusals --------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 1024, 10**6])
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_reader_streams_hashes_and_measures(fmt, chunk):
    data = image_bytes(fmt, (300, 200))
    reader = VerifyingReader(iter(chunk_list(data, chunk)), fmt, (300, 200))
    out = bytearray()
    while block := reader.read(4096):
        out += block
    assert bytes(out) == data
    assert reader.sha256 == hashlib.sha256(data).hexdigest()
    assert reader.size == len(data)
    assert reader.dimensions == (300, 200)
    assert reader.finished


def test_reader_read_all():
    data = image_bytes("png")
    reader = VerifyingReader(iter(chunk_list(data, 10)), "png", None)
    assert reader.read() == data
    assert reader.read() == b""
    assert reader.finished
    assert reader.dimensions == (64, 32)


@pytest.mark.parametrize("chunk", [1, 100, 10**6])
def test_reader_read_whole_within_the_limit(chunk):
    data = image_bytes("png")
    reader = VerifyingReader(iter(chunk_list(data, chunk)), "png", (64, 32))
    assert reader.read_whole(len(data)) == data
    assert reader.finished
    assert reader.sha256 == hashlib.sha256(data).hexdigest()
    assert reader.read() == b""


@pytest.mark.parametrize("chunk", [1, 100, 10**6])
def test_reader_read_whole_over_the_limit_consumes_nothing(chunk):
    data = image_bytes("png")
    reader = VerifyingReader(iter(chunk_list(data, chunk)), "png", (64, 32))
    assert reader.read_whole(len(data) - 1) is None
    assert not reader.finished
    out = bytearray()
    while block := reader.read(50):
        out += block
    assert bytes(out) == data  # what was read ahead comes first
    assert reader.finished


def test_reader_read_whole_still_checks():
    reader = VerifyingReader(iter([image_bytes("png", (100, 100))]), "png", (1024, 1024))
    with pytest.raises(ImageGenImageVerificationError, match="100x100 pixels"):
        reader.read_whole(10**6)


def test_reader_refuses_wrong_format():
    reader = VerifyingReader(iter([image_bytes("jpeg")]), "png", None)
    with pytest.raises(ImageGenImageVerificationError, match="png was asked"):
        reader.read(1024)


def test_reader_refuses_wrong_dimensions():
    reader = VerifyingReader(iter([image_bytes("png", (100, 100))]), "png", (1024, 1024))
    with pytest.raises(ImageGenImageVerificationError, match="100x100 pixels, but 1024x1024"):
        reader.read(1024)


def test_reader_refuses_empty_and_html_bodies():
    with pytest.raises(ImageGenImageVerificationError, match="empty"):
        VerifyingReader(iter([]), "png", None).read(10)
    with pytest.raises(ImageGenImageVerificationError, match="not a PNG or JPEG"):
        VerifyingReader(iter([b"<html>"]), "png", None).read(10)


def test_reader_refuses_truncated_header():
    data = image_bytes("png")[:20]  # signature but no complete IHDR
    with pytest.raises(ImageGenImageVerificationError, match="pixel size"):
        VerifyingReader(iter([data]), "png", None).read(100)
