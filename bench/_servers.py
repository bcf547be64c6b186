"""The servers a benchmark talks to, each in its own process so that it never shares the GIL,
the allocator or the RSS of the code being measured.

``python -m bench._servers emulator '{"latency": 1.0}'`` or ``python -m bench._servers s3`` starts
one server, prints one JSON line describing it, then answers JSON-line commands on stdin
(``configure``, ``reset``, ``stats``, ``quit``). :class:`ServerProcess` drives that from the
benchmark process. The child exits when its stdin closes, so a crashed benchmark leaves no server.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import Any

_STARTUP_TIMEOUT = 120.0


class ServerProcess:
    """A server child process and its JSON-line control channel.

    :param kind: ``emulator`` or ``s3``.
    :param knobs: emulator knobs (``EmulatorConfig`` field names) to start with.
    """

    def __init__(self, kind: str, **knobs: Any) -> None:
        from bench._common import RESULTS_DIR

        self.kind = kind
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = RESULTS_DIR / f"{kind}-server.log"
        self._log = self.log_path.open("w")  # the server's request log, away from the table
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench._servers", kind, json.dumps(knobs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self.info: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait(timeout=_STARTUP_TIMEOUT)
            raise RuntimeError(f"the {self.kind} server process exited with code {code}; see {self.log_path}")
        return json.loads(line)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one command and return its answer."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"{self.kind} server: {answer['error']}")
        return answer

    def configure(self, **knobs: Any) -> None:
        """Change emulator knobs."""
        self.call("configure", knobs=knobs)

    def reset(self) -> None:
        """Forget recorded calls and concurrency gauges."""
        self.call("reset")

    def stats(self) -> dict[str, Any]:
        """Concurrency gauges and call counts of the emulator."""
        return self.call("stats")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    @property
    def connection_json(self) -> str:
        """The ``AIRFLOW_CONN_*`` JSON value pointing at this server."""
        return str(self.info["connection_json"])

    def close(self) -> None:
        """Stop the server and wait for its process."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                self.call("quit")
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self._log):
            if stream is not None:
                stream.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve_emulator(knobs: dict[str, Any]) -> None:
    from airflow_provider_imagegen.emulator import Emulator

    with Emulator(**knobs) as emulator:
        _answer({"connection_json": emulator.connection_json()})
        for command in _commands():
            op = command.get("op")
            if op == "configure":
                emulator.configure(**command["knobs"])
                _answer({})
            elif op == "reset":
                emulator.reset()
                _answer({})
            elif op == "stats":
                _answer(emulator.stats())
            elif op == "quit":
                _answer({})
                return
            else:
                _answer({"error": f"unknown op {op!r}"})


def _serve_s3() -> None:
    from airflow_provider_imagegen.testing import local_s3

    with local_s3() as s3:
        _answer(
            {
                "connection_json": s3.connection_json(),
                "endpoint_url": s3.endpoint_url,
                "region_name": s3.region_name,
                "access_key_id": s3.access_key_id,
                "secret_access_key": s3.secret_access_key,
            }
        )
        for command in _commands():
            if command.get("op") == "quit":
                _answer({})
                return
            _answer({"error": f"unknown op {command.get('op')!r}"})


def _commands() -> Any:
    for line in sys.stdin:
        if line.strip():
            yield json.loads(line)


def _answer(data: dict[str, Any]) -> None:
    _CONTROL.write(json.dumps(data) + "\n")
    _CONTROL.flush()


_CONTROL = sys.stdout


def main(argv: list[str]) -> None:
    """Entry point of a server child process."""
    global _CONTROL
    kind = argv[0]
    knobs = json.loads(argv[1]) if len(argv) > 1 else {}
    # stdout is the control channel: anything the server prints goes to stderr instead
    _CONTROL, sys.stdout = sys.stdout, sys.stderr
    if kind == "emulator":
        _serve_emulator(knobs)
    elif kind == "s3":
        _serve_s3()
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])


class ServerCPU:
    """CPU seconds the given servers spend over a block: ``with ServerCPU(emu, s3) as cpu: ...``.

    When a figure misses its target this tells whether the servers (a single moto process, the
    emulator) were the bottleneck rather than the code under test.
    """

    def __init__(self, *servers: ServerProcess) -> None:
        self.servers = servers
        self.used: dict[str, float] = {}
        self._start: dict[str, float] = {}

    def __enter__(self) -> ServerCPU:
        self._start = {server.kind: server.cpu_seconds() for server in self.servers}
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {server.kind: server.cpu_seconds() - self._start[server.kind] for server in self.servers}

    def summary(self) -> str:
        """E.g. ``emulator 1.2 s CPU, s3 3.4 s CPU``."""
        return ", ".join(f"{kind} {seconds:.1f} s CPU" for kind, seconds in self.used.items())
