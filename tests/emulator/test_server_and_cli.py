"""The Emulator object's lifecycle, config handling, cheap import, and the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from airflow_provider_imagegen.emulator import Emulator, EmulatorConfig

EXPECTED_DEFAULTS = {
    "api_key": "emulator-key",
    "latency": 0.0,
    "policy_latency": 0.0,
    "download_latency": 0.0,
    "rate_limit_burst": 0,
    "retry_after": None,
    "server_errors": 0,
    "server_error_status": 500,
    "max_images": None,
    "blocked_words": ("forbidden",),
    "url_ttl": 3600.0,
    "slow_body_seconds": 0.0,
    "truncate_bodies": False,
    "error_format": "json",
    "response_mode": "ok",
    "image_content_type": None,
    "wrong_format": False,
    "wrong_dimensions": False,
    "noise": False,
}


def test_config_defaults():
    assert dataclasses.asdict(EmulatorConfig()) == EXPECTED_DEFAULTS


@pytest.mark.parametrize(
    "bad",
    [
        {"error_format": "xml"},
        {"response_mode": "teapot"},
        {"latency": -1},
        {"max_images": -1},
        {"server_error_status": 99},
        {"blocked_words": "forbidden"},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        EmulatorConfig(**bad)


def test_update_is_atomic():
    config = EmulatorConfig()

    with pytest.raises(ValueError, match="error_format"):
        config.update(latency=2.0, error_format="xml")
    assert (config.latency, config.error_format) == (0.0, "json")
    with pytest.raises(TypeError, match="latencyy"):
        config.update(latencyy=1)
    config.update(blocked_words=["a", "b"])
    assert config.blocked_words == ("a", "b")


def test_knobs_override_config_without_mutating_it():
    base = EmulatorConfig(latency=1.0)

    emulator = Emulator(base, max_images=2)

    assert (emulator.config.latency, emulator.config.max_images) == (1.0, 2)
    assert base.max_images is None
    assert Emulator(base).config is base
    with pytest.raises(TypeError, match="bogus"):
        Emulator(bogus=True)


def test_start_stop_and_connection_json():
    emulator = Emulator(api_key="k-123")
    with pytest.raises(RuntimeError, match="not started"):
        _ = emulator.base_url

    emulator.start()
    try:
        assert emulator.running
        assert emulator.base_url == f"http://127.0.0.1:{emulator.port}"
        assert emulator.endpoint_url == emulator.base_url + "/v3/gpt-image-2-text-to-image"
        assert json.loads(emulator.connection_json()) == {
            "conn_type": "imagegen",
            "host": emulator.base_url,
            "password": "k-123",
            "extra": {"endpoint": "/v3/gpt-image-2-text-to-image", "timeout": 60, "max_retries": 3},
        }
        assert json.loads(emulator.connection_json("http"))["conn_type"] == "http"
        assert "k-123" not in repr(emulator)
        response = httpx.post(emulator.endpoint_url, json={"prompt": "p"}, headers=emulator.auth_headers())
        assert response.status_code == 200
        with pytest.raises(RuntimeError, match="already started"):
            emulator.start()
    finally:
        emulator.stop()

    assert not emulator.running
    with pytest.raises(httpx.ConnectError):
        httpx.post(emulator.endpoint_url, json={"prompt": "p"}, timeout=2)
    emulator.stop()  # idempotent


def test_port_in_use_fails_fast(emu):
    with pytest.raises(RuntimeError, match="failed to start"):
        Emulator(port=emu.port).start(timeout=10)


def test_package_import_is_cheap():
    code = (
        "import sys, airflow_provider_imagegen.emulator as e; e.EmulatorConfig(latency=1); "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'PIL', 'starlette', 'airflow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)

    assert result.stdout.strip() == "[]"


def _read_lines_until(process: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """Collect stdout lines (read by a helper thread) until one contains ``marker``; bounded wait."""
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"{marker!r} not printed within {timeout} s; got {seen!r}")


def test_cli():
    command = [
        sys.executable,
        "-m",
        "airflow_provider_imagegen.emulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--api-key",
        "cli-key",
        "--max-images",
        "1",
        "--error-format",
        "text",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = _read_lines_until(process, "Endpoint:", timeout=60)
        assert len(lines) == 3, lines
        assert lines[0].startswith("Emulator listening on http://127.0.0.1:")
        base_url = lines[0].removeprefix("Emulator listening on ")
        assert int(base_url.rsplit(":", 1)[1]) > 0  # the real port, not 0
        assert lines[1] == "API key: cli-key"
        endpoint = lines[2].removeprefix("Endpoint: ")
        assert endpoint == base_url + "/v3/gpt-image-2-text-to-image"

        ok = httpx.post(endpoint, json={"prompt": "cli", "n": 3}, headers={"Authorization": "Bearer cli-key"})
        denied = httpx.post(endpoint, json={"prompt": "cli"}, headers={"Authorization": "Bearer nope"})

        assert ok.status_code == 200
        assert len(ok.json()["images"]) == 1  # --max-images reached the config
        assert httpx.get(ok.json()["images"][0]).status_code == 200
        assert denied.status_code == 401
        assert denied.headers["content-type"].startswith("text/plain")  # --error-format too
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C (SIGTERM takes the same path)
        try:
            returncode = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        finally:
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
    assert returncode == 0


def test_cli_rejects_bad_knob_values():
    result = subprocess.run(
        [sys.executable, "-m", "airflow_provider_imagegen.emulator", "--port", "0", "--latency", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "latency" in result.stderr
