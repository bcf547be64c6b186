"""Recognise PNG and JPEG bytes and read their pixel size from the header, without Pillow.

The operator checks each image while it streams, so it only ever sees the first bytes: this
module answers from a prefix, and says when it needs more.
"""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def sniff_format(head: bytes) -> str | None:
    """``png`` or ``jpeg`` from the first bytes, or None if neither."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return None


def _png_dimensions(data: bytes) -> tuple[int, int] | None:
    # signature (8) + IHDR length (4) + "IHDR" (4) + width (4) + height (4)
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _SOF_MARKERS:
            if position + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        position += 2 + length
    return None


def read_dimensions(image_format: str, head: bytes) -> tuple[int, int] | None:
    """(width, height) from a prefix of the image, or None if the prefix is too short to tell."""
    if image_format == "png":
        return _png_dimensions(head)
    if image_format == "jpeg":
        return _jpeg_dimensions(head)
    raise ValueError(f"unknown image format {image_format!r}")


PNG_END = b"\x00\x00\x00\x00IEND\xae\x42\x60\x82"  # the empty IEND chunk: length, type, CRC
JPEG_END = b"\xff\xd9"  # EOI
#: How many final bytes :func:`ends_whole` needs to see.
TAIL_BYTES = len(PNG_END)


def ends_whole(image_format: str, tail: bytes) -> bool:
    """Whether the last bytes of an image are its format's end marker (PNG ``IEND``, JPEG ``EOI``).

    A body cut short without a ``Content-Length`` to tell (a chunked or close-delimited answer
    that ends early) still starts like an image and has a readable pixel size; its end is missing.

    :param image_format: ``png`` or ``jpeg``.
    :param tail: the image's last :data:`TAIL_BYTES` bytes (or all of it, if shorter).
    """
    if image_format == "png":
        return tail.endswith(PNG_END)
    if image_format == "jpeg":
        return tail.endswith(JPEG_END)
    raise ValueError(f"unknown image format {image_format!r}")
