"""Deterministic, human-readable placeholder images rendered with Pillow.

Each image shows a gradient whose colours derive from ``sha256(prompt, index)``, the (wrapped,
truncated) prompt, ``#index`` and the pixel size, so a person looking at a landed file can tell
which prompt produced it. Rendering is cheap (a resized 256x256 gradient, no per-pixel Python) and
the encoded bytes are cached in a bounded LRU because benchmarks ask for the same image many times.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from PIL.ImageFont import FreeTypeFont
    from PIL.ImageFont import ImageFont as BitmapFont

PNG_COMPRESS_LEVEL = 1
"""zlib level for PNG: fast rather than small."""

DEFAULT_JPEG_QUALITY = 85
"""JPEG quality when ``output_compression`` is omitted."""

MAX_PROMPT_LINES = 4
"""How many wrapped prompt lines are drawn before truncating with an ellipsis."""

PROMPT_SCAN_CHARS = 2000
"""Only this many leading prompt characters are considered for the caption (more never fits)."""

CACHE_MAX_ENTRIES = 256
CACHE_MAX_BYTES = 384 * 1024 * 1024


@dataclass(frozen=True)
class _RenderKey:
    """Everything that determines the bytes of a rendered image."""

    prompt: str
    index: int
    width: int
    height: int
    output_format: str
    compression: int | None
    noise: bool


class _BytesLRU:
    """A thread-safe LRU of encoded images bounded by entry count and total bytes.

    Concurrent requests for the same key render it once: the first caller renders while the
    others wait on a per-key lock.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[_RenderKey, bytes] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self._key_locks: dict[_RenderKey, threading.Lock] = {}

    def get(self, key: _RenderKey) -> bytes | None:
        """Return cached bytes for ``key`` (marking them recently used) or ``None``."""
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
            return data

    def put(self, key: _RenderKey, data: bytes) -> None:
        """Insert ``data`` and evict least recently used entries beyond the bounds."""
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = data
            self._total += len(data)
            while self._entries and (len(self._entries) > self._max_entries or self._total > self._max_bytes):
                _, evicted = self._entries.popitem(last=False)
                self._total -= len(evicted)

    def key_lock(self, key: _RenderKey) -> threading.Lock:
        """The lock serialising renders of ``key``."""
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def release_key_lock(self, key: _RenderKey) -> None:
        """Forget the per-key lock once the key is cached."""
        with self._lock:
            self._key_locks.pop(key, None)

    def clear(self) -> None:
        """Drop every cached image."""
        with self._lock:
            self._entries.clear()
            self._total = 0


_CACHE = _BytesLRU(CACHE_MAX_ENTRIES, CACHE_MAX_BYTES)


def render_image(
    prompt: str,
    index: int,
    width: int,
    height: int,
    output_format: str,
    compression: int | None,
    *,
    noise: bool = False,
) -> bytes:
    """Render (or fetch from cache) the encoded image for these arguments.

    ``output_format`` is ``"png"`` or ``"jpeg"``; ``compression`` is the API's
    ``output_compression`` (only used for JPEG). The same arguments always give identical bytes.
    """
    if output_format not in ("png", "jpeg"):
        raise ValueError(f"output_format must be 'png' or 'jpeg', got {output_format!r}")
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    key = _RenderKey(prompt, index, width, height, output_format, compression, noise)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    try:
        with _CACHE.key_lock(key):
            cached = _CACHE.get(key)
            if cached is None:
                cached = _encode(_draw(key), output_format, compression)
                _CACHE.put(key, cached)
    finally:
        _CACHE.release_key_lock(key)
    return cached


def clear_render_cache() -> None:
    """Empty the rendered-bytes cache (tests and memory benchmarks use this)."""
    _CACHE.clear()


def jpeg_quality(compression: int | None) -> int:
    """Map the API's ``output_compression`` (0..100) to a Pillow JPEG quality (1..95)."""
    if compression is None:
        return DEFAULT_JPEG_QUALITY
    clamped = min(max(compression, 0), 100)
    return 1 + round(clamped * 94 / 100)


def seed_digest(prompt: str, index: int) -> bytes:
    """The sha256 digest every visual choice of an image is derived from."""
    return hashlib.sha256(f"{index}\x00{prompt}".encode()).digest()


def _draw(key: _RenderKey) -> Image.Image:
    """Build the RGB picture for ``key``: background plus caption."""
    digest = seed_digest(key.prompt, key.index)
    size = (key.width, key.height)
    image = _noise_background(digest, size) if key.noise else _gradient_background(digest, size)
    _draw_caption(image, digest, key)
    return image


def _gradient_background(digest: bytes, size: tuple[int, int]) -> Image.Image:
    """Two-colour linear gradient, horizontal or vertical, colours and direction from ``digest``.

    Built as a 256-pixel RGB ramp (one lookup table per channel), stretched to one row/column and
    then repeated with nearest-neighbour resizing: a few milliseconds even for 4K.
    """
    start, end = (digest[0], digest[1], digest[2]), (digest[3], digest[4], digest[5])
    if digest[6] & 1:
        start, end = end, start
    ramp = Image.linear_gradient("L").crop((0, 0, 1, 256))  # 1x256 column, 0 at the top
    channels = [
        ramp.point([a + (b - a) * level // 255 for level in range(256)]) for a, b in zip(start, end, strict=True)
    ]
    line = Image.merge("RGB", channels)
    width, height = size
    if digest[6] & 2:
        line = line.resize((1, height), Image.Resampling.BILINEAR)
    else:
        line = line.transpose(Image.Transpose.ROTATE_90).resize((width, 1), Image.Resampling.BILINEAR)
    return line.resize(size, Image.Resampling.NEAREST)


def _noise_background(digest: bytes, size: tuple[int, int]) -> Image.Image:
    """Incompressible deterministic RGB noise seeded from ``digest``."""
    rng = random.Random(int.from_bytes(digest[:16], "big"))
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def _draw_caption(image: Image.Image, digest: bytes, key: _RenderKey) -> None:
    """Write the prompt, ``#index`` and the size over ``image`` in a contrasting colour."""
    width, height = image.size
    font_size = max(10, min(width, height) // 16)
    margin = max(4, font_size // 2)
    fill, outline = _text_colours(digest)
    draw = ImageDraw.Draw(image)
    font = _font(font_size)
    lines = [*_prompt_lines(key.prompt, width - 2 * margin, font), f"#{key.index}", f"{width}x{height}"]
    y = margin
    for line in lines:
        draw.text((margin, y), line, font=font, fill=fill, stroke_width=max(1, font_size // 16), stroke_fill=outline)
        y += round(font_size * 1.25)
        if y > height - font_size:
            break


def _prompt_lines(prompt: str, text_width: int, font: FreeTypeFont | BitmapFont) -> list[str]:
    """Greedily wrap ``prompt`` to ``text_width`` pixels, keeping at most :data:`MAX_PROMPT_LINES`.

    Only as much of the prompt as fits is measured, so a 32000-character prompt stays cheap.
    """
    words = iter(prompt[:PROMPT_SCAN_CHARS].split())
    cut_short = len(prompt) > PROMPT_SCAN_CHARS
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= text_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = _fit(word, text_width, font)
        if len(lines) == MAX_PROMPT_LINES:
            return _ellipsize(lines, text_width, font)
    if current:
        lines.append(current)
    if cut_short or len(lines) > MAX_PROMPT_LINES or next(words, None) is not None:
        return _ellipsize(lines[:MAX_PROMPT_LINES], text_width, font)
    return lines or ["(empty prompt)"]


def _fit(text: str, text_width: int, font: FreeTypeFont | BitmapFont) -> str:
    """Cut ``text`` (e.g. one very long word) so that it fits ``text_width`` pixels."""
    while len(text) > 1 and font.getlength(text) > text_width:
        text = text[: max(1, len(text) * 3 // 4)]
    return text


def _ellipsize(lines: list[str], text_width: int, font: FreeTypeFont | BitmapFont) -> list[str]:
    """Mark the last line as truncated with an ellipsis that still fits the width."""
    last = lines[-1]
    while last and font.getlength(last + "\u2026") > text_width:
        last = last[:-1]
    return [*lines[:-1], last + "\u2026"]


def _text_colours(digest: bytes) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Text and outline colours readable on the gradient (picked from its mean luminance)."""
    mean = sum(0.299 * digest[i] + 0.587 * digest[i + 1] + 0.114 * digest[i + 2] for i in (0, 3)) / 2
    black, white = (0, 0, 0), (255, 255, 255)
    return (black, white) if mean > 140 else (white, black)


@lru_cache(maxsize=64)
def _font(size: int) -> FreeTypeFont | BitmapFont:
    """Pillow's bundled scalable font at ``size`` pixels (cached: loading it is not free)."""
    return ImageFont.load_default(size=size)


def _encode(image: Image.Image, output_format: str, compression: int | None) -> bytes:
    """Encode ``image`` as PNG (fast zlib level) or JPEG (quality from ``compression``)."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, format="JPEG", quality=jpeg_quality(compression))
    return buffer.getvalue()
