"""Image downloads: which URLs may be fetched, redirects, and a stream with a byte cap and a deadline.

The API answers with short-lived image URLs on some other host. Fetching them is the one place
where the provider talks to a host the user did not configure, so everything that guards it
lives here: the URL policy (:func:`check_image_url`), the redirect walk (each hop checked again),
and :class:`ImageStream` (status, byte cap, total deadline). No Authorization header is ever sent.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from airflow_provider_imagegen.exceptions import ImageGenDownloadError, error_from_transport

if TYPE_CHECKING:
    from collections.abc import Iterator

DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024  # far above any 4K PNG
DEFAULT_DOWNLOAD_DEADLINE = 300.0
MAX_REDIRECTS = 5


def _is_internal_host(host: str) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    if not host or host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # The system resolver also takes the legacy forms "127.1", "2130706433", "0x7f.0.0.1".
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return False  # a DNS name
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # not global: loopback, private, link-local (cloud metadata), shared (100.64/10), reserved...
    return not address.is_global or address.is_multicast


def check_image_url(url: str, base_url: str) -> None:
    """Refuse image URLs that could leak data or reach internal services.

    Allowed: https URLs to public hosts, and any URL on the API base URL's own origin (that is
    how a local emulator serves its images). Loopback, private and link-local hosts are refused
    unless they are the API's own host.

    :param url: the image URL (or a redirect target).
    :param base_url: the API's base URL, whose origin is always allowed.
    """
    target, base = urlsplit(url), urlsplit(base_url)
    if (target.scheme, target.netloc) == (base.scheme, base.netloc):
        return
    if target.scheme != "https":
        raise ImageGenDownloadError(f"Refusing image URL with scheme {target.scheme!r}: only https is allowed")
    if _is_internal_host(target.hostname or ""):
        raise ImageGenDownloadError(f"Refusing image URL on internal host {target.hostname!r}")


class ImageStream:
    """A streaming image download: checked status, a byte cap and a total deadline.

    :param response: an httpx streaming response (not yet read).
    :param max_bytes: the most bytes accepted.
    :param deadline: seconds the whole body may take, not only one read.
    """

    def __init__(self, response: httpx.Response, *, max_bytes: int, deadline: float) -> None:
        self.response = response
        self.max_bytes = max_bytes
        self._deadline_at = time.monotonic() + deadline
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
        """Yield the body in chunks, enforcing the cap and deadline; errors become download errors."""
        declared = self.content_length
        if declared is not None and declared > self.max_bytes:
            raise ImageGenDownloadError(f"Image is {declared} bytes, above the cap of {self.max_bytes}")
        try:
            # as they arrive (not re-chunked): a trickling body must meet the deadline check early
            for chunk in self.response.iter_bytes(chunk_size):
                self.bytes_read += len(chunk)
                if self.bytes_read > self.max_bytes:
                    raise ImageGenDownloadError(f"Image exceeds the cap of {self.max_bytes} bytes")
                if time.monotonic() > self._deadline_at:
                    raise ImageGenDownloadError(f"Image download exceeded its {self.deadline:g} s deadline")
                yield chunk
        except httpx.HTTPError as error:
            raise ImageGenDownloadError(
                f"Image download failed after {self.bytes_read} bytes: {type(error).__name__}: {error}"
            ) from error
        # Content-Length counts the bytes on the wire, which differ from the decoded ones when the
        # server compressed the body (Content-Encoding: gzip): compare like with like.
        encoding = self.response.headers.get("content-encoding", "").strip().lower()
        received = self.response.num_bytes_downloaded if encoding not in ("", "identity") else self.bytes_read
        if declared is not None and received != declared:
            raise ImageGenDownloadError(f"Image body cut short: {received} of {declared} bytes")


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
    :param deadline: seconds the whole body may take.
    """
    check_image_url(url, base_url)
    try:
        with client.stream("GET", url, timeout=timeout) as first:
            response = _follow_https_redirects(client, first, base_url)
            try:
                if response.status_code != 200:
                    raise ImageGenDownloadError(f"Image URL answered HTTP {response.status_code} (expired or refused)")
                yield ImageStream(response, max_bytes=max_bytes, deadline=deadline)
            finally:
                response.close()  # the response after redirects is not the one `stream` closes
    except httpx.TransportError as error:
        raise error_from_transport(error, download=True) from None


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
                raise ImageGenDownloadError("Refusing a redirect of an image URL to a non-https URL")
        finally:
            response.close()
        response = client.send(response.next_request, stream=True)
    response.close()
    raise ImageGenDownloadError("Too many redirects for an image URL")
