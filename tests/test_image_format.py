"""Pure tests (no network): S3 key layout, format sniffing, the verifying reader, small helpers."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_imagegen.exceptions import ImageGenImageVerificationError
from airflow_provider_imagegen.image_format import read_dimensions, sniff_format
from airflow_provider_imagegen.plan import default_prefix, image_key, safe_segment
from airflow_provider_imagegen.transfer import CopiedImage, VerifyingReader, check_content_type

SAFE_KEY = re.compile(r"^[A-Za-z0-9._=/-]+$")
SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._=-]+$")


def _image(fmt: str, size: tuple[int, int] = (64, 32)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 60)).save(buffer, format=fmt.upper())
    return buffer.getvalue()


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# -- key layout -----------------------------------------------------------------------------------


def test_airflow_run_id_becomes_a_readable_segment():
    assert safe_segment("manual__2026-01-01T00:00:00+00:00") == "manual__2026-01-01T00-00-00-00-00"
    assert safe_segment("scheduled__2026-01-01T00:00:00+00:00") == "scheduled__2026-01-01T00-00-00-00-00"


@pytest.mark.parametrize(
    "run_id",
    [
        "manual__2026-01-01T00:00:00+00:00",
        "scheduled__2026-03-04T05:06:07.123456+00:00",
        "my run with spaces",
        "ünïcödé run — 日本語",
        "a/b/../c",
        "..",
        "???",
        "trailing-",
    ],
)
def test_default_prefix_is_s3_safe_for_odd_run_ids(run_id):
    prefix = default_prefix("my_dag", run_id, "generate", -1)
    assert SAFE_KEY.match(prefix), prefix
    parts = prefix.split("/")
    assert parts[:2] == ["imagegen", "my_dag"]
    assert parts[3:] == ["generate"]
    assert parts[2] not in ("", ".", "..")


def test_lossy_cleaning_keeps_distinct_run_ids_apart():
    assert safe_segment("run ä") != safe_segment("run ö")
    assert safe_segment("a/b") != safe_segment("a b")


def test_mapped_task_adds_map_index():
    assert default_prefix("d", "r", "t", 2) == "imagegen/d/r/t/2"
    assert default_prefix("d", "r", "t", 0) == "imagegen/d/r/t/0"
    assert default_prefix("d", "r", "t", -1) == "imagegen/d/r/t"
    assert default_prefix("d", "r", "t", None) == "imagegen/d/r/t"


def test_image_key_is_zero_padded():
    assert image_key("p", 0, "png") == "p/00.png"
    assert image_key("p", 9, "jpg") == "p/09.jpg"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_safe_segment_is_always_non_empty_and_safe(value):
    segment = safe_segment(value)
    assert segment
    assert SAFE_SEGMENT.match(segment), segment
    assert segment not in (".", "..")
    assert safe_segment(segment) == segment  # stable: already-safe names are kept as they are


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii", categories=("L", "N")) | st.sampled_from("._=-"), min_size=1))
def test_safe_segment_keeps_safe_names(value):
    if value.strip("-.") == value:
        assert safe_segment(value) == value


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


# -- the verifying reader -------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 1024, 10**6])
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_reader_streams_hashes_and_measures(fmt, chunk):
    data = _image(fmt, (300, 200))
    reader = VerifyingReader(iter(_chunks(data, chunk)), fmt, (300, 200))
    out = bytearray()
    while block := reader.read(4096):
        out += block
    assert bytes(out) == data
    assert reader.sha256 == hashlib.sha256(data).hexdigest()
    assert reader.size == len(data)
    assert reader.dimensions == (300, 200)
    assert reader.finished


def test_reader_read_all():
    data = _image("png")
    reader = VerifyingReader(iter(_chunks(data, 10)), "png", None)
    assert reader.read() == data
    assert reader.read() == b""
    assert reader.finished
    assert reader.dimensions == (64, 32)


@pytest.mark.parametrize("chunk", [1, 100, 10**6])
def test_reader_read_whole_within_the_limit(chunk):
    data = _image("png")
    reader = VerifyingReader(iter(_chunks(data, chunk)), "png", (64, 32))
    assert reader.read_whole(len(data)) == data
    assert reader.finished
    assert reader.sha256 == hashlib.sha256(data).hexdigest()
    assert reader.read() == b""


@pytest.mark.parametrize("chunk", [1, 100, 10**6])
def test_reader_read_whole_over_the_limit_consumes_nothing(chunk):
    data = _image("png")
    reader = VerifyingReader(iter(_chunks(data, chunk)), "png", (64, 32))
    assert reader.read_whole(len(data) - 1) is None
    assert not reader.finished
    out = bytearray()
    while block := reader.read(50):
        out += block
    assert bytes(out) == data  # what was read ahead comes first
    assert reader.finished


def test_reader_read_whole_still_checks():
    reader = VerifyingReader(iter([_image("png", (100, 100))]), "png", (1024, 1024))
    with pytest.raises(ImageGenImageVerificationError, match="100x100 pixels"):
        reader.read_whole(10**6)


def test_reader_refuses_wrong_format():
    reader = VerifyingReader(iter([_image("jpeg")]), "png", None)
    with pytest.raises(ImageGenImageVerificationError, match="png was asked"):
        reader.read(1024)


def test_reader_refuses_wrong_dimensions():
    reader = VerifyingReader(iter([_image("png", (100, 100))]), "png", (1024, 1024))
    with pytest.raises(ImageGenImageVerificationError, match="100x100 pixels, but 1024x1024"):
        reader.read(1024)


def test_reader_refuses_empty_and_html_bodies():
    with pytest.raises(ImageGenImageVerificationError, match="empty"):
        VerifyingReader(iter([]), "png", None).read(10)
    with pytest.raises(ImageGenImageVerificationError, match="not a PNG or JPEG"):
        VerifyingReader(iter([b"<html>"]), "png", None).read(10)


def test_reader_refuses_truncated_header():
    data = _image("png")[:20]  # signature but no complete IHDR
    with pytest.raises(ImageGenImageVerificationError, match="pixel size"):
        VerifyingReader(iter([data]), "png", None).read(100)


def test_check_content_type():
    check_content_type("image/png", "image/png")
    check_content_type("application/octet-stream", "image/png")
    check_content_type("", "image/jpeg")
    with pytest.raises(ImageGenImageVerificationError, match="text/html"):
        check_content_type("text/html", "image/png")
    with pytest.raises(ImageGenImageVerificationError):
        check_content_type("image/jpeg", "image/png")


def test_copied_image_dict_round_trip():
    image = CopiedImage(
        index=1, bucket="b", key="p/01.png", content_type="image/png", size_bytes=10, sha256="ab", width=2, height=3
    )
    data = image.to_dict()
    assert set(data) == {
        "s3_uri",
        "bucket",
        "key",
        "index",
        "prompt_index",
        "content_type",
        "size_bytes",
        "sha256",
        "width",
        "height",
    }
    assert data["s3_uri"] == "s3://b/p/01.png"
    assert CopiedImage.from_dict(data) == image


# -- operator helpers -----------------------------------------------------------------------------


def test_as_int_and_metadata_helpers():
    from airflow_provider_imagegen.hooks._client import ConnectionSettings
    from airflow_provider_imagegen.plan import as_int as _as_int
    from airflow_provider_imagegen.plan import metadata_value as _metadata_value
    from airflow_provider_imagegen.plan import parse_list as _parse_list

    def _public_url(url):
        return ConnectionSettings(api_key="k", base_url=url, endpoint="").public_url

    assert _as_int("n", "3") == 3
    assert _as_int("n", " 10 ") == 10
    assert _as_int("n", "three") == "three"
    assert _as_int("n", None) is None
    assert _metadata_value("manual__2026-01-01T00:00:00+00:00") == "manual__2026-01-01T00:00:00+00:00"
    assert _metadata_value("ü").isascii()
    assert _parse_list('["a", "b"]') == ["a", "b"]
    assert _parse_list("['a', 'b']") == ["a", "b"]
    assert _public_url("https://user:secret@api.example.com:8443/v3/x?key=1") == "https://api.example.com:8443/v3/x"
