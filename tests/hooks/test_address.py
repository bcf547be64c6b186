"""Internal hosts refused by address, not by spelling; one lookup; one deadline per image.

Nothing here sends a packet off loopback: names are answered by a stand-in resolver, and where a
connection to a "public" address would follow, ``socket.create_connection`` is replaced by a
recorder that refuses, so the test sees where the client WOULD connect.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time

import httpx
import pytest

from airflow_provider_imagegen.exceptions import ImageGenDownloadError, ImageGenURLRefusedError
from airflow_provider_imagegen.hooks import download
from airflow_provider_imagegen.hooks.address import (
    CheckingBackend,
    checking_transport,
    embedded_ipv4,
    is_internal_address,
)

API = "https://api.example.test"  # the API's origin: exempt, never contacted here
PUBLIC = "93.184.216.34"


class Resolver:
    """A stand-in for ``socket.getaddrinfo``: each call takes the next answer."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host, port, *args, **kwargs):
        self.calls.append(host)
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [(family[ipaddress.ip_address(ip).version], socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answer]


@pytest.fixture
def connects(monkeypatch) -> list[tuple[str, int]]:
    """Where the client tried to connect; every attempt is refused, so no packet leaves."""
    seen: list[tuple[str, int]] = []

    def refuse(address, *args, **kwargs):
        seen.append(address)
        raise ConnectionRefusedError("test: no traffic")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return seen


def _download(url: str, resolver: Resolver, *, base: str = API, deadline: float = 5.0) -> None:
    with (
        httpx.Client(transport=checking_transport(base, resolver=resolver)) as client,
        download.open_image(
            client, url, base_url=base, timeout=httpx.Timeout(5.0), max_bytes=1 << 20, deadline=deadline
        ) as image,
    ):
        b"".join(image.iter_bytes())


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible
        "::10.0.0.1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    ],
)
def test_internal_addresses_in_every_spelling(address):
    assert is_internal_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111", "::ffff:93.184.216.34", "64:ff9b::5db8:d822"]
)
def test_public_addresses_pass(address):
    assert not is_internal_address(ipaddress.ip_address(address))


def test_embedded_ipv4_forms():
    assert str(embedded_ipv4(ipaddress.IPv6Address("2002:a9fe:a9fe::"))) == "169.254.169.254"
    assert embedded_ipv4(ipaddress.IPv6Address("::1")) is None
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1")) is None


@pytest.mark.parametrize(
    "answer",
    [["127.0.0.1"], ["169.254.169.254"], ["::1"], ["::ffff:10.0.0.5"], [PUBLIC, "10.0.0.5"], ["10.0.0.5", PUBLIC]],
)
def test_a_name_that_resolves_inside_is_refused_before_connecting(answer, connects):
    resolver = Resolver(answer)
    with pytest.raises(ImageGenURLRefusedError, match="resolves to the internal address") as caught:
        _download("https://images.attacker.test/0.png", resolver)
    assert caught.value.permanent
    assert connects == []  # refused before any connection
    assert resolver.calls == ["images.attacker.test"]


def test_the_checked_address_is_the_one_connected_to_and_the_name_is_looked_up_once(connects):
    # a rebinding resolver: a public answer when checked, loopback if asked again
    resolver = Resolver([PUBLIC], ["127.0.0.1"])
    with pytest.raises(ImageGenDownloadError, match="ConnectError"):
        _download("https://images.rebind.test/0.png", resolver)
    assert resolver.calls == ["images.rebind.test"]
    assert connects == [(PUBLIC, 443)]


def test_the_apis_own_origin_is_exempt(connects):
    resolver = Resolver(["127.0.0.1"])
    with pytest.raises(ImageGenDownloadError):
        _download("http://127.0.0.1:9/0.png", resolver, base="http://127.0.0.1:9")
    assert connects == [("127.0.0.1", 9)]
    assert resolver.calls == []


def test_a_literal_internal_address_in_another_spelling_is_refused_without_lookup(connects):
    resolver = Resolver([PUBLIC])
    for url in ("https://2130706433/x.png", "https://[::ffff:7f00:1]/x.png", "https://0x7f.0.0.1/x.png"):
        with pytest.raises(ImageGenURLRefusedError):
            _download(url, resolver)
    assert resolver.calls == []
    assert connects == []


class _SlowServer:
    """A loopback HTTP server (the API's origin) that answers with a script of (bytes, pause) steps."""

    def __init__(self, script):
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            conn.recv(65536)
            try:
                for data, pause in self.script(self):
                    if self.stop.wait(pause):
                        return
                    conn.sendall(data)
            except OSError:
                return

    def close(self):
        self.stop.set()
        self.sock.close()


def test_a_server_trickling_its_headers_meets_the_deadline(connects, monkeypatch):
    monkeypatch.undo()  # this one connects, on loopback, to the API's own origin
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\n"
    server = _SlowServer(lambda s: [(bytes([byte]), 0.1) for byte in head])  # 6 s of headers
    try:
        started = time.monotonic()
        with pytest.raises(ImageGenDownloadError, match=r"exceeded its 0.5 s deadline"):
            _download(f"{server.base}/0.png", Resolver(), base=server.base, deadline=0.5)
        assert time.monotonic() - started < 2.0
    finally:
        server.close()


def test_the_deadline_spans_every_redirect_hop(monkeypatch):
    # hop 1: the API's origin answers a redirect after 0.6 s; hop 2 (a CDN) gets only what is left
    given: list[float | None] = []

    def hang(address, timeout=None, *args, **kwargs):
        given.append(timeout)
        time.sleep(timeout or 0)
        raise TimeoutError("test: no traffic")

    server = _SlowServer(
        lambda s: [(b"HTTP/1.1 302 Found\r\nLocation: https://img.cdn.test/0.png\r\nContent-Length: 0\r\n\r\n", 0.6)]
    )
    real = socket.socket.connect  # the first hop goes to the loopback server for real
    monkeypatch.setattr(
        socket, "create_connection", lambda address, *a, **k: _real_or_hang(address, real, hang, *a, **k)
    )
    try:
        started = time.monotonic()
        with pytest.raises(ImageGenDownloadError, match=r"exceeded its 0.8 s deadline"):
            _download(f"{server.base}/0.png", Resolver([PUBLIC]), base=server.base, deadline=0.8)
        assert time.monotonic() - started < 1.5
        assert given, "the second hop was never attempted"
        assert given[-1] is not None
        assert given[-1] <= 0.25  # what was left of 0.8 s after 0.6 s
    finally:
        server.close()


def _real_or_hang(address, real, hang, timeout=None, *args, **kwargs):
    if address[0] == "127.0.0.1":
        sock = socket.socket()
        sock.settimeout(timeout)
        real(sock, address)
        return sock
    return hang(address, timeout)


def test_the_hook_uses_the_checking_transport(monkeypatch, connects):
    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_IMAGEGEN_ADDR",
        json.dumps({"conn_type": "imagegen", "host": API, "password": "sk-address-test"}),
    )
    resolver = Resolver(["192.168.0.10"])
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    hook = ImageGenHook("imagegen_addr")
    backend = hook.client._transport._pool._network_backend
    assert isinstance(backend, CheckingBackend)
    with pytest.raises(ImageGenURLRefusedError), hook.open_image("https://cdn.attacker.test/0.png"):
        pass
    assert connects == []
    hook.close()
