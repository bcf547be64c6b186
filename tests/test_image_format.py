"""Format sniffing and pixel sizes from the first bytes (``image_format``), without Pillow."""

from __future__ import annotations

import pytest

from airflow_provider_imagegen.image_format import read_dimensions, sniff_format
from tests.support import image_bytes as _image

# -- format sniffing ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_sniff_and_dimensions(fmt):
    data = _image(fmt, (640, 480))
    assert sniff_format(data[:16]) == fmt
    assert read_dimensions(fmt, data) == (640, 480)


def test_sniff_rejects_other_bytes():
    assert sniff_format(b"<html><body>expired</body></html>") is None
    assert sniff_format(b"GIF89a....") is None
    assert sniff_format(b"") is None


def test_dimensions_need_enough_bytes():
    data = _image("png")
    assert read_dimensions("png", data[:20]) is None
    jpeg = _image("jpeg")
    assert read_dimensions("jpeg", jpeg[:4]) is None
    with pytest.raises(ValueError, match="unknown image format"):
        read_dimensions("gif", data)
