"""Image downloads: which URLs may be fetched, redirects, and a stream with a byte cap and a deadline.

The API answers with short-lived image URLs on some other host. Fetching them is the one place
where the provider talks to a host the user did not configure, so everything that guards it
lives here: the URL policy (:func:`check_image_url`), the redirect walk (each hop checked again),
and :class:`ImageStream` (status, byte cap, total deadline). No Authorization header is ever sent.
"""

from __future__ import annotations

import time
import zlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from airflow_provider_imagegen.exceptions import (
    ImageGenDownloadError,
    ImageGenURLExpiredError,
    ImageGenURLRefusedError,
    error_from_transport,
)
from airflow_provider_imagegen.hooks.address import download_deadline, is_internal_spelling

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


def _raw_source(response: httpx.Response, chunk_size: int | None = None) -> tuple[Iterator[bytes], str]:
    """The raw body chunks and their codec; a response already read in memory gives its decoded content."""
    if response.is_stream_consumed:  # built in memory (a mock transport): httpx has decoded it already
        return iter([response.content]), "identity"
    return response.iter_raw(chunk_size), content_codec(response.headers)


def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` decoded bytes of a streamed response, and whether the body was longer.

    :param response: a response opened with ``client.stream`` (not yet read).
    :param limit: the most decoded bytes kept.
    """
    source, codec = _raw_source(response)
    capped = _CappedBody(codec, limit)
    for raw in source:
        if capped.add(raw):
            return capped.body()
    return capped.finish()


async def aread_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """The async twin of :func:`read_capped`."""
    if response.is_stream_consumed:
        return read_capped(response, limit)
    capped = _CappedBody(content_codec(response.headers), limit)
    raw_chunks: AsyncIterator[bytes] = response.aiter_raw()
    async for raw in raw_chunks:
        if capped.add(raw):
            return capped.body()
    return capped.finish()


class _CappedBody:
    """Decoded bytes collected up to a limit (shared by :func:`read_capped` and :func:`aread_capped`)."""

    def __init__(self, codec: str, limit: int) -> None:
        self.decoder = BoundedDecoder(codec)
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, raw: bytes) -> bool:
        """Decode ``raw``; True once more than ``limit`` bytes came."""
        for chunk in self.decoder.feed(raw):
            self.parts.append(chunk)
            self.size += len(chunk)
            if self.size > self.limit:
                return True
        return False

    def body(self) -> tuple[bytes, bool]:
        """The first ``limit`` bytes, cut short."""
        return b"".join(self.parts)[: self.limit], True

    def finish(self) -> tuple[bytes, bool]:
        """The whole body, which fit."""
        self.decoder.finish()
        return b"".join(self.parts), False


DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024  # far above any 4K PNG
DEFAULT_DOWNLOAD_DEADLINE = 300.0
MAX_REDIRECTS = 5
DECODED_CHUNK_BYTES = 64 * 1024  # the most one decompression step may produce: memory per chunk
ACCEPTED_ENCODINGS = frozenset({"gzip", "x-gzip", "deflate"})


def content_codec(headers: httpx.Headers) -> str:
    """The one codec of a body (``identity``, ``gzip`` or ``deflate``); refuses stacked and unknown ones.

    Each codec can multiply the size of a body by a thousand: stacked ones (``gzip, gzip``)
    would make a few kilobytes on the wire gigabytes in memory. The provider asks for
    ``identity``; a single gzip or deflate is still decoded (with an output limit), anything else
    is refused.
    """
    codecs = [part.strip().lower() for part in headers.get_list("content-encoding", split_commas=True)]
    codecs = [codec for codec in codecs if codec not in ("", "identity")]
    if not codecs:
        return "identity"
    if len(codecs) > 1:
        raise ImageGenDownloadError(f"Refusing a body with stacked content encodings {', '.join(codecs)!r}")
    if codecs[0] not in ACCEPTED_ENCODINGS:
        raise ImageGenDownloadError(f"Refusing a body with unsupported content encoding {codecs[0]!r}")
    return "gzip" if codecs[0] == "x-gzip" else codecs[0]


class BoundedDecoder:
    """Incremental gzip/deflate decoding in which no single step yields more than ``chunk_limit`` bytes.

    httpx's own decoders inflate a whole network chunk at once (64 KiB of a deflate bomb is
    64 MiB); here each ``decompress`` call is given ``max_length``, so memory per step is bounded
    and the caller's byte cap is checked between steps.

    :param codec: ``identity``, ``gzip`` or ``deflate``.
    :param chunk_limit: the most bytes one step yields.
    """

    def __init__(self, codec: str, chunk_limit: int = DECODED_CHUNK_BYTES) -> None:
        self.codec = codec
        self.chunk_limit = chunk_limit
        self._started = False
        self._decoder: Any = self._new()

    def _new(self, raw_deflate: bool = False) -> Any:
        if self.codec == "identity":
            return None
        if self.codec == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return zlib.decompressobj(-zlib.MAX_WBITS if raw_deflate else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decoded pieces of ``data``, each at most ``chunk_limit`` bytes."""
        if self._decoder is None:
            if data:
                yield data
            return
        if not self._started and data:
            self._started = True
            if self.codec == "deflate" and not _looks_like_zlib(data):
                self._decoder = self._new(raw_deflate=True)  # servers send both forms as "deflate"
        while True:
            try:
                out = self._decoder.decompress(data, self.chunk_limit)
            except zlib.error as error:
                raise ImageGenDownloadError(f"Body is not valid {self.codec} data: {error}") from None
            data = self._decoder.unconsumed_tail
            if out:
                yield out
            if self._decoder.eof:
                rest = self._decoder.unused_data
                if self.codec == "gzip" and rest.strip(b"\0"):
                    self._decoder = self._new()  # a further gzip member
                    data = rest
                    continue
                return
            if not data and len(out) < self.chunk_limit:
                return

    def finish(self) -> None:
        """Check that the compressed stream was complete."""
        if self._decoder is not None and self._started and not self._decoder.eof:
            raise ImageGenDownloadError(f"The {self.codec} body ends before its end marker (cut short)")


def _looks_like_zlib(data: bytes) -> bool:
    return len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0


def check_image_url(url: str, base_url: str) -> None:
    """Refuse image URLs that could leak data or reach internal services.

    Allowed: https URLs to public hosts, and any URL on the API base URL's own origin (that is
    how a local emulator serves its images). Loopback, private and link-local hosts are refused
    unless they are the API's own host: here by spelling (IP literals, ``localhost``), and again
    by every address a name resolves to when the connection is made (``address.CheckingBackend``).

    :param url: the image URL (or a redirect target).
    :param base_url: the API's base URL, whose origin is always allowed.
    """
    target, base = urlsplit(url), urlsplit(base_url)
    if (target.scheme, target.netloc) == (base.scheme, base.netloc):
        return
    if target.scheme != "https":
        raise ImageGenURLRefusedError(f"Refusing image URL with scheme {target.scheme!r}: only https is allowed")
    if is_internal_spelling(target.hostname or ""):
        raise ImageGenURLRefusedError(f"Refusing image URL on internal host {target.hostname!r}")


class ImageStream:
    """A streaming image download: checked status, a byte cap and a total deadline.

    :param response: an httpx streaming response (not yet read).
    :param max_bytes: the most bytes accepted.
    :param deadline: seconds the whole body may take, not only one read.
    """

    def __init__(
        self, response: httpx.Response, *, max_bytes: int, deadline: float, deadline_at: float | None = None
    ) -> None:
        self.response = response
        self.max_bytes = max_bytes
        self._deadline_at = time.monotonic() + deadline if deadline_at is None else deadline_at
        self.deadline = deadline
        self.bytes_read = 0

    @property
    def content_type(self) -> str:
        """The Content-Type the server declared, without parameters."""
        return self.response.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        """The declared length, if any."""
        value = self.response.headers.get("content-length")
        return int(value) if value and value.isdigit() else None

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """Yield the decoded body in chunks, enforcing the cap and deadline; errors become download errors.

        The raw bytes are decoded here, step by step with an output limit (:class:`BoundedDecoder`),
        so the cap holds on decoded bytes and memory stays bounded whatever the encoding.
        """
        declared = self.content_length
        if declared is not None and declared > self.max_bytes:
            raise ImageGenDownloadError(f"Image is {declared} bytes, above the cap of {self.max_bytes}")
        source, codec = _raw_source(self.response, chunk_size)
        decoder = BoundedDecoder(codec)
        in_memory = self.response.is_stream_consumed
        wire_bytes = 0
        try:
            # as they arrive (not re-chunked): a trickling body must meet the deadline check early
            for raw in source:
                wire_bytes = (self.response.num_bytes_downloaded or len(raw)) if in_memory else wire_bytes + len(raw)
                if declared is not None and wire_bytes > declared:
                    raise ImageGenDownloadError(f"Image body longer than its Content-Length of {declared}")
                for chunk in decoder.feed(raw):
                    self.bytes_read += len(chunk)
                    if self.bytes_read > self.max_bytes:
                        raise ImageGenDownloadError(f"Image exceeds the cap of {self.max_bytes} bytes")
                    if time.monotonic() > self._deadline_at:
                        raise ImageGenDownloadError(f"Image download exceeded its {self.deadline:g} s deadline")
                    yield chunk
                if time.monotonic() > self._deadline_at:
                    raise ImageGenDownloadError(f"Image download exceeded its {self.deadline:g} s deadline")
        except httpx.HTTPError as error:
            past = self.deadline if time.monotonic() >= self._deadline_at else None
            raise error_from_transport(error, download=True, bytes_read=self.bytes_read, past_deadline=past) from error
        # Content-Length counts the bytes on the wire: compare like with like.
        if declared is not None and wire_bytes != declared:
            raise ImageGenDownloadError(f"Image body cut short: {wire_bytes} of {declared} bytes")
        decoder.finish()


@contextmanager
def open_image(
    client: httpx.Client,
    url: str,
    *,
    base_url: str,
    timeout: httpx.Timeout,
    max_bytes: int,
    deadline: float,
) -> Iterator[ImageStream]:
    """Stream one image URL: checked, redirects followed only to checked https URLs, 200 only.

    :param client: the hook's pooled client (sends no Authorization header by itself).
    :param url: the image URL the API returned.
    :param base_url: the API's base URL (its origin is allowed, e.g. a local emulator).
    :param timeout: connect and read timeouts of each request.
    :param max_bytes: the most bytes accepted for the image.
    :param deadline: seconds the whole download may take: connect, headers, every redirect and the body.
    """
    check_image_url(url, base_url)
    with download_deadline(deadline) as deadline_at:
        try:
            with client.stream("GET", url, timeout=timeout, headers={"Accept-Encoding": "identity"}) as first:
                response = _follow_https_redirects(client, first, base_url)
                try:
                    _check_status(response.status_code)
                    yield ImageStream(response, max_bytes=max_bytes, deadline=deadline, deadline_at=deadline_at)
                finally:
                    response.close()  # the response after redirects is not the one `stream` closes
        except httpx.TransportError as error:
            past = deadline if time.monotonic() >= deadline_at else None
            raise error_from_transport(error, download=True, past_deadline=past) from None


def _check_status(status: int) -> None:
    if status in (403, 404, 410):
        raise ImageGenURLExpiredError(f"Image URL answered HTTP {status} (expired or refused)", status_code=status)
    if status != 200:
        raise ImageGenDownloadError(f"Image URL answered HTTP {status}")


def _follow_https_redirects(client: httpx.Client, response: httpx.Response, base_url: str) -> httpx.Response:
    """The final response after at most :data:`MAX_REDIRECTS` redirects, each to a checked https URL.

    Every intermediate response is closed, also when a redirect is refused.
    """
    for _ in range(MAX_REDIRECTS):
        if not response.is_redirect or response.next_request is None:
            return response
        try:
            target = str(response.next_request.url)
            check_image_url(target, base_url)
            if not target.startswith("https://"):
                raise ImageGenURLRefusedError("Refusing a redirect of an image URL to a non-https URL")
        finally:
            response.close()
        response = client.send(response.next_request, stream=True)
    response.close()
    raise ImageGenDownloadError("Too many redirects for an image URL")
