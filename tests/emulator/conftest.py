"""Fixtures for the emulator's own tests: one loopback emulator per session, reset for each test."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from airflow_provider_imagegen.emulator import Emulator, EmulatorConfig


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes a couple of seconds (large images)")


@pytest.fixture(scope="session")
def _emu_server():
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def emu(_emu_server: Emulator):
    """The session's emulator with default knobs and empty records."""
    defaults = EmulatorConfig()
    _emu_server.configure(**{field.name: getattr(defaults, field.name) for field in dataclasses.fields(defaults)})
    _emu_server.reset(clear_images=True)
    return _emu_server


@pytest.fixture(scope="session")
def client():
    """One client for the session: building an httpx.Client (its SSL context) is not free."""
    with httpx.Client(timeout=30) as http:
        yield http


@pytest.fixture
def generate(emu: Emulator, client: httpx.Client):
    """POST a body to the emulator with the right key; returns the httpx response."""

    def _generate(body: object = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None):
        request_headers = emu.auth_headers() if headers is None else headers
        if raw is not None:
            return client.post(emu.endpoint_url, content=raw, headers=request_headers)
        return client.post(emu.endpoint_url, json=body, headers=request_headers)

    return _generate
