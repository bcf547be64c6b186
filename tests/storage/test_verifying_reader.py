"""The reader's own figures: MD5, per-part digests for multipart ETags/checksums, and the end check."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from PIL import Image

from airflow_provider_imagegen.exceptions import ImageGenDownloadError
from airflow_provider_imagegen.transfer import VerifyingReader


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
