"""Where the hook's HTTP client may connect, decided by address at connect time, and the download deadline.

Image URLs come from the API's answer, so a hostile or compromised API (or a host that redirects)
could point the worker at its own network: cloud metadata, an internal admin page, a database.
Spelling is not enough to refuse those (``metadata.attacker.example`` may resolve to
169.254.169.254), so every connection the hook's client opens goes through
:class:`CheckingBackend`: it resolves the name once, refuses the connection if ANY address is
internal, and connects to an address it checked (no second lookup, so a DNS answer that changes
between check and connect, "DNS rebinding", cannot slip through). The API's own origin (host and
port of the connection's Base URL) is exempt: that is how a local emulator or proxy is reached.

The same backend bounds every socket read and write by the current download's deadline
(:func:`download_deadline`), so a server that trickles its headers, or a chain of slow redirects,
cannot hold a worker past ``download_deadline``.
"""

from __future__ import annotations

import contextvars
import ipaddress
import socket
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpcore
import httpx

from airflow_provider_imagegen.exceptions import ImageGenURLRefusedError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from httpcore import NetworkStream

    Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_deadline_at: contextvars.ContextVar[float | None] = contextvars.ContextVar("imagegen_download_deadline", default=None)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, in any of the forms that reach it.

    IPv4-mapped (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), NAT64 (``64:ff9b::/96``),
    6to4 (``2002::/16``) and Teredo (``2001::/32``, the client's address).
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    value = int(address)
    if value >> 32 == 0 and value > 1:  # ::a.b.c.d (but not :: and ::1, which are themselves)
        return ipaddress.IPv4Address(value)
    return None


def is_internal_address(address: Address) -> bool:
    """Whether connecting to ``address`` could reach something not on the public internet.

    Loopback, private, link-local (cloud metadata), shared (100.64/10), reserved, unspecified and
    multicast addresses, and IPv6 addresses that carry such an IPv4 address.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return True
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_internal_address(inner)
    return not address.is_global or address.is_multicast


def parse_address(host: str) -> Address | None:
    """``host`` as an IP address if it is one (legacy IPv4 spellings such as ``127.1`` included)."""
    host = host.strip("[]").rstrip(".").lower().split("%")[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # the system resolver also takes "127.1", "2130706433", "0x7f.0.0.1"
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def is_internal_spelling(host: str) -> bool:
    """Refusable before any lookup: ``localhost`` names and internal IP literals."""
    name = host.strip("[]").rstrip(".").lower()
    if not name or name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"):
        return True
    address = parse_address(name)
    return address is not None and is_internal_address(address)


def origin_of(url: str) -> tuple[str, int]:
    """``(host, port)`` of a URL, the port defaulted by scheme."""
    parts = urlsplit(url)
    return (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


class CheckingBackend(httpcore.SyncBackend):
    """httpcore's socket backend, refusing internal addresses and enforcing the download deadline.

    :param allowed: ``(host, port)`` origins connected to without the address check (the API's).
    :param resolver: ``socket.getaddrinfo`` or a stand-in (tests).
    """

    def __init__(self, allowed: Iterable[tuple[str, int]], resolver: Callable[..., Any] | None = None) -> None:
        self.allowed = {(host.lower(), port) for host, port in allowed}
        self.resolver = resolver or socket.getaddrinfo

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, *args: Any, **kwargs: Any
    ) -> NetworkStream:
        """Connect to a checked address of ``host`` (one lookup), within the current deadline.

        Further arguments (``local_address``, ``socket_options``) go to httpcore's own backend as given.
        """
        if (host.lower(), port) in self.allowed:
            targets = [host]
        else:
            targets = [str(address) for address in self._checked_addresses(host, port)]
        error: Exception | None = None
        for target in targets:
            try:
                stream = super().connect_tcp(target, port, remaining(timeout), *args, **kwargs)
            except httpcore.ConnectError as failed:  # try the next checked address
                error = failed
                continue
            return _DeadlineStream(stream)
        raise error or httpcore.ConnectError(f"no address for {host!r}")

    def _checked_addresses(self, host: str, port: int) -> list[Address]:
        literal = parse_address(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                answers = self.resolver(host, port, type=socket.SOCK_STREAM)
            except OSError as error:
                raise httpcore.ConnectError(f"could not resolve {host!r}: {error}") from error
            addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in answers))
        internal = [address for address in addresses if is_internal_address(address)]
        if internal or not addresses:
            shown = internal[0] if internal else "?"
            raise ImageGenURLRefusedError(
                f"Refusing to connect to {host!r}: it resolves to the internal address {shown} (loopback, "
                "private, link-local and similar addresses are refused; only the API's own origin may be one)"
            )
        return addresses


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every read, write and TLS handshake ends by the current deadline."""

    def __init__(self, stream: NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, remaining(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, remaining(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def remaining(timeout: float | None) -> float | None:
    """``timeout``, shortened to what is left of the current download's deadline (if any)."""
    deadline_at = _deadline_at.get()
    if deadline_at is None:
        return timeout
    left = deadline_at - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the download deadline passed")
    return left if timeout is None else min(timeout, left)


@contextmanager
def download_deadline(seconds: float) -> Iterator[float]:
    """Bound every socket operation of this thread's download by ``seconds`` from now.

    :param seconds: the whole download's budget: connect, TLS, headers, redirects and body.
    :returns: the monotonic time at which the deadline passes.
    """
    deadline_at = time.monotonic() + seconds
    token = _deadline_at.set(deadline_at)
    try:
        yield deadline_at
    finally:
        _deadline_at.reset(token)


def checking_transport(base_url: str, resolver: Callable[..., Any] | None = None) -> httpx.HTTPTransport:
    """The hook's sync transport: httpx's own, on a :class:`CheckingBackend` exempting the API's origin.

    :param base_url: the connection's Base URL.
    :param resolver: ``socket.getaddrinfo`` or a stand-in (tests).
    """
    transport = httpx.HTTPTransport()
    # httpcore takes its socket backend as a pool argument that httpx does not pass on
    transport._pool._network_backend = CheckingBackend([origin_of(base_url)], resolver)
    return transport
