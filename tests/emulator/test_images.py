"""The Pillow renderer on its own: determinism, formats, sizes, caching, speed."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from airflow_provider_imagegen.emulator.images import clear_render_cache, jpeg_quality, render_image


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_png_of_the_asked_size():
    with _open(render_image("a cat", 0, 880, 2048, "png", None)) as picture:
        assert (picture.format, picture.size, picture.mode) == ("PNG", (880, 2048), "RGB")


def test_jpeg_of_the_asked_size():
    with _open(render_image("a cat", 0, 2048, 688, "jpeg", 70)) as picture:
        assert (picture.format, picture.size) == ("JPEG", (2048, 688))


def test_deterministic_across_cache_clears():
    first = render_image("determinism", 3, 640, 480, "png", None)
    clear_render_cache()
    second = render_image("determinism", 3, 640, 480, "png", None)

    assert first == second
    assert first is not second


def test_cached_bytes_are_reused():
    assert render_image("cache", 0, 320, 240, "png", None) is render_image("cache", 0, 320, 240, "png", None)


@pytest.mark.parametrize(
    "other",
    [("other prompt", 0, "png", None), ("prompt", 1, "png", None), ("prompt", 0, "jpeg", None)],
)
def test_different_arguments_differ(other):
    prompt, index, fmt, compression = other
    assert render_image("prompt", 0, 320, 240, "png", None) != render_image(prompt, index, 320, 240, fmt, compression)


def test_background_colour_depends_on_prompt_and_index():
    def corner(prompt: str, index: int) -> tuple[int, ...]:
        with _open(render_image(prompt, index, 256, 256, "png", None)) as picture:
            return picture.getpixel((255, 255))

    assert len({corner("sunrise", 0), corner("sunset", 0), corner("sunrise", 1)}) == 3


def test_caption_is_drawn():
    with _open(render_image("caption", 0, 512, 512, "png", None)) as picture:
        top_left = picture.crop((0, 0, 256, 96))
        bottom_right = picture.crop((256, 416, 512, 512))
        assert len(top_left.getcolors(maxcolors=1 << 16) or []) > len(bottom_right.getcolors(maxcolors=1 << 16) or [])


@pytest.mark.parametrize(("compression", "quality"), [(None, 85), (100, 95), (0, 1), (50, 48), (150, 95), (-5, 1)])
def test_jpeg_quality_mapping(compression, quality):
    assert jpeg_quality(compression) == quality


def test_more_compression_gives_smaller_jpeg():
    sizes = [len(render_image("q", 0, 512, 512, "jpeg", c)) for c in (10, 60, 100)]

    assert sizes == sorted(sizes)
    assert sizes[0] < sizes[2]


def test_huge_prompt_is_truncated_not_slow():
    began = time.monotonic()
    render_image("word " * 6400, 0, 512, 512, "png", None)

    assert time.monotonic() - began < 2


def test_render_is_fast():
    render_image("warm-up", 0, 1024, 1024, "png", None)
    timings = []
    for index in range(3):
        began = time.perf_counter()
        render_image("fast", index, 1024, 1024, "png", None)
        timings.append(time.perf_counter() - began)

    assert min(timings) < 0.5  # typically ~50 ms; per-pixel Python would take seconds


@pytest.mark.parametrize(
    ("args", "error"),
    [(("p", 0, 10, 10, "gif", None), "output_format"), (("p", 0, 0, 10, "png", None), "positive")],
)
def test_bad_arguments(args, error):
    with pytest.raises(ValueError, match=error):
        render_image(*args)


def test_noise_is_deterministic_and_incompressible():
    first = render_image("noise", 0, 400, 300, "png", None, noise=True)
    clear_render_cache()
    second = render_image("noise", 0, 400, 300, "png", None, noise=True)

    assert first == second
    assert len(first) > 400 * 300 * 3 * 0.9  # raw RGB is 360 kB: zlib gains nothing on noise
    assert len(render_image("noise", 0, 400, 300, "png", None)) < len(first) / 4
