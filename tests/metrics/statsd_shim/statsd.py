"""A stand-in for the ``statsd`` package (``apache-airflow[statsd]``) when it is not installed.

Only the client calls Airflow's ``SafeStatsdLogger`` makes, sending the same plain StatsD lines
over UDP; put on ``PYTHONPATH`` of the DAG subprocess by ``test_metrics.py`` only when the real
package is missing, so that the test still exercises Airflow's own metrics path end to end.
"""

from __future__ import annotations

import socket
import time
from typing import Any


class Timer:
    """``with client.timer(name):`` / ``start()`` / ``stop()``."""

    def __init__(self, client: StatsClient, stat: str) -> None:
        self.client, self.stat, self.ms, self._started = client, stat, 0.0, 0.0

    def start(self) -> Timer:
        self._started = time.perf_counter()
        return self

    def stop(self, send: bool = True) -> Timer:
        self.ms = (time.perf_counter() - self._started) * 1000.0
        if send:
            self.client.timing(self.stat, self.ms)
        return self

    def __enter__(self) -> Timer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class StatsClient:
    """UDP StatsD client: ``{prefix}.{stat}:{value}|{type}``."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8125,
        prefix: str | None = None,
        maxudpsize: int = 512,
        ipv6: bool = False,
    ) -> None:
        self._address = (host, port)
        self._prefix = prefix
        self._sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)

    def _send(self, stat: str, value: str) -> None:
        name = f"{self._prefix}.{stat}" if self._prefix else stat
        self._sock.sendto(f"{name}:{value}".encode(), self._address)

    def incr(self, stat: str, count: int = 1, rate: float = 1) -> None:
        self._send(stat, f"{count}|c")

    def decr(self, stat: str, count: int = 1, rate: float = 1) -> None:
        self._send(stat, f"{-count}|c")

    def gauge(self, stat: str, value: float, rate: float = 1, delta: bool = False) -> None:
        self._send(stat, f"{'+' if delta and value >= 0 else ''}{value}|g")

    def timing(self, stat: str, delta: Any, rate: float = 1) -> None:
        ms = delta.total_seconds() * 1000.0 if hasattr(delta, "total_seconds") else delta
        self._send(stat, f"{ms:0.6f}|ms")

    def timer(self, stat: str, rate: float = 1) -> Timer:
        return Timer(self, stat)
