"""Run the emulator in a background thread: the Python API used by tests, benchmarks and demos.

Example::

    with Emulator(latency=0.1) as emu:
        httpx.post(emu.endpoint_url, headers={"Authorization": f"Bearer {emu.api_key}"}, json={...})
        assert emu.state.max_in_flight_generations == 1
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

import uvicorn

from airflow_provider_imagegen.emulator.app import create_app
from airflow_provider_imagegen.emulator.config import EmulatorConfig, knob_names
from airflow_provider_imagegen.emulator.state import GENERATION_PATH, EmulatorState

if TYPE_CHECKING:
    from types import TracebackType

    from airflow_provider_imagegen.emulator.state import RecordedCall

STARTUP_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = 10.0
LISTEN_BACKLOG = 4096


def exposed_default_key_warning(host: str, api_key: str) -> str | None:
    """A warning when ``host`` is not a loopback address and ``api_key`` is the well-known default.

    The default key is public (it is in this source): anyone who can reach a non-loopback interface
    could then use the emulator (and its CPU) as they please.
    """
    if api_key != EmulatorConfig().api_key or _is_loopback(host):
        return None
    return (
        f"the emulator is bound to {host!r}, reachable from other machines, and accepts the "
        f"well-known default API key; pass --api-key with a secret of your own (or bind 127.0.0.1)"
    )


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


class Emulator:
    """A GPT Image 2 API emulator served by uvicorn on loopback in a daemon thread.

    ``knobs`` override fields of ``config`` (a copy is made when both are given); the resulting
    :attr:`config` is live: mutate it (or call :meth:`configure`) to change behaviour at runtime.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **knobs: Any,
    ) -> None:
        """Prepare (but do not start) an emulator; see :class:`EmulatorConfig` for the knobs."""
        self._check_knobs(knobs)
        if config is None:
            config = EmulatorConfig(**knobs)
        elif knobs:
            config = dataclasses.replace(config, **knobs)
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._state = EmulatorState(config)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self, timeout: float = STARTUP_TIMEOUT) -> Emulator:
        """Start serving and block until the socket is bound (or raise RuntimeError)."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        exposed = exposed_default_key_warning(self._host, self._state.config.api_key)
        if exposed:
            warnings.warn(f"Emulator: {exposed}", UserWarning, stacklevel=2)
        uv_config = uvicorn.Config(
            create_app(self._state),
            host=self._host,
            port=self._requested_port,
            log_level="warning",
            lifespan="off",
            backlog=LISTEN_BACKLOG,
            limit_concurrency=None,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=3,
        )
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._serve, args=(self._server,), name="imagegen-emulator", daemon=True)
        self._thread.start()
        self._wait_started(timeout)
        self._port = self._bound_port()
        self._state.base_url = self.base_url
        return self

    @staticmethod
    def _serve(server: uvicorn.Server) -> None:
        """Thread body: run uvicorn; its ``sys.exit`` on startup failure just ends the thread."""
        try:
            server.run()
        except SystemExit:
            return

    def _wait_started(self, timeout: float) -> None:
        """Poll ``server.started`` until true; fail if the thread died or the timeout passed."""
        assert self._server is not None
        assert self._thread is not None
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._thread = None
                raise RuntimeError(f"emulator failed to start on {self._host}:{self._requested_port}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"emulator did not start within {timeout} s")
            time.sleep(0.005)

    def _bound_port(self) -> int:
        """The port the listening socket actually bound (useful with ``port=0``)."""
        assert self._server is not None
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("emulator has no listening socket")

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Ask uvicorn to exit and join its thread (forcing exit if it lingers)."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._thread = None
        self._server = None

    @property
    def running(self) -> bool:
        """Whether the server thread is up."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Emulator:
        """Start on entering a ``with`` block."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop on leaving a ``with`` block."""
        self.stop()

    # ----------------------------------------------------------------- addresses
    @property
    def port(self) -> int:
        """The bound port (only once started)."""
        if self._port is None:
            raise RuntimeError("emulator not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def endpoint_url(self) -> str:
        """Full URL of the text-to-image endpoint."""
        return self.base_url + GENERATION_PATH

    @property
    def api_key(self) -> str:
        """The Bearer key the emulator accepts."""
        return self._state.config.api_key

    def auth_headers(self) -> dict[str, str]:
        """Headers a well-behaved client sends: Bearer key and JSON content type."""
        return {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}

    def connection_json(self, conn_type: str = "imagegen") -> str:
        """An Airflow connection (``AIRFLOW_CONN_<ID>`` JSON form) pointing at this emulator."""
        return json.dumps(
            {
                "conn_type": conn_type,
                "host": self.base_url,
                "password": self.api_key,
                "extra": {"endpoint": GENERATION_PATH, "timeout": 60, "max_retries": 3},
            }
        )

    # ----------------------------------------------------------------- state and knobs
    @property
    def config(self) -> EmulatorConfig:
        """The live config: mutating it changes behaviour for the next request."""
        return self._state.config

    @property
    def state(self) -> EmulatorState:
        """Recorded calls, stored images and concurrency gauges."""
        return self._state

    @property
    def calls(self) -> list[RecordedCall]:
        """Every recorded call so far (a snapshot)."""
        return self._state.calls

    def stats(self) -> dict[str, int]:
        """Concurrency gauges and call counts, as a plain dict (handy for benchmarks)."""
        state = self._state
        return {
            "max_in_flight_generations": state.max_in_flight_generations,
            "max_in_flight_downloads": state.max_in_flight_downloads,
            "in_flight_generations": state.in_flight_generations,
            "in_flight_downloads": state.in_flight_downloads,
            "generation_calls": len(state.generation_calls()),
            "download_calls": len(state.download_calls()),
            "stored_images": len(state.images),
        }

    def configure(self, **knobs: Any) -> Emulator:
        """Change knobs on the live config (validated; unknown names raise TypeError)."""
        self._state.config.update(**knobs)
        return self

    def reset(self, *, clear_images: bool = False) -> None:
        """Clear recorded calls and gauges; keep the config (and stored images unless asked)."""
        self._state.reset(clear_images=clear_images)

    @staticmethod
    def _check_knobs(knobs: dict[str, Any]) -> None:
        """Reject keyword arguments that are not EmulatorConfig fields."""
        unknown = sorted(set(knobs) - knob_names())
        if unknown:
            raise TypeError(f"unknown emulator knob(s): {', '.join(unknown)}; known: {sorted(knob_names())}")

    def __repr__(self) -> str:
        """Show the address (never the key)."""
        where = self.base_url if self._port is not None else "not started"
        return f"<Emulator {where}>"
