"""The emulator stays a safe dev tool: bounded memory in long sessions, a loud default key off loopback."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from airflow_provider_imagegen.emulator import Emulator
from airflow_provider_imagegen.emulator.server import exposed_default_key_warning
from airflow_provider_imagegen.emulator.state import EmulatorState, StoredImage

# TEST-NET-1 (RFC 5737): never assigned to this machine, so binding it fails before serving anything
UNASSIGNED = "192.0.2.1"
CLI = (sys.executable, "-m", "airflow_provider_imagegen.emulator")


def _image(token: str, expires_at: float) -> StoredImage:
    return StoredImage(
        token=token,
        url=f"http://127.0.0.1:1/images/{token}",
        data=b"x" * 1000,
        sha256="0" * 64,
        content_type="image/png",
        width=1,
        height=1,
        prompt="p",
        index=0,
        expires_at=expires_at,
    )


def test_storing_drops_expired_images():
    state = EmulatorState()
    past, future = time.monotonic() - 1, time.monotonic() + 3600
    for position in range(1000):
        state.store_image(_image(f"old{position}.png", past))
    state.store_image(_image("live.png", future))
    assert [image.token for image in state.images] == ["live.png"]
    assert state.image_for_token("old0.png") is None


def test_drop_expired_keeps_live_images():
    state = EmulatorState()
    state._images["a.png"] = _image("a.png", time.monotonic() + 3600)  # out of order on purpose
    state._images["b.png"] = _image("b.png", time.monotonic() - 1)
    assert state.drop_expired() == 1
    assert [image.token for image in state.images] == ["a.png"]


def test_long_session_holds_only_live_images(emu, generate, client):
    emu.configure(url_ttl=0.2)
    first = generate({"prompt": "first", "n": 4}).json()["images"]
    deadline = time.monotonic() + 10
    while not all(emu.state.image_for_url(url).expired() for url in first):  # poll, no blind sleep
        assert time.monotonic() < deadline
        time.sleep(0.05)
    emu.configure(url_ttl=3600)
    second = generate({"prompt": "second", "n": 2}).json()["images"]
    assert sorted(image.url for image in emu.state.images) == sorted(second)
    assert client.get(first[0]).status_code == 404
    assert client.get(second[0]).status_code == 200


@pytest.mark.parametrize(
    ("host", "key", "warns"),
    [
        ("0.0.0.0", "emulator-key", True),
        ("::", "emulator-key", True),
        ("10.1.2.3", "emulator-key", True),
        ("my-laptop.lan", "emulator-key", True),
        ("0.0.0.0", "a-secret-of-mine", False),
        ("127.0.0.1", "emulator-key", False),
        ("127.0.0.2", "emulator-key", False),
        ("::1", "emulator-key", False),
        ("localhost", "emulator-key", False),
    ],
)
def test_default_key_warning(host, key, warns):
    warning = exposed_default_key_warning(host, key)
    assert (warning is not None) is warns
    if warning:
        assert "--api-key" in warning


def test_start_off_loopback_with_default_key_warns():
    with pytest.warns(UserWarning, match="default API key"), pytest.raises(RuntimeError):
        Emulator(host=UNASSIGNED).start(timeout=10)


def test_cli_off_loopback_with_default_key_prints_a_warning():
    result = subprocess.run(
        [*CLI, "--host", UNASSIGNED, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1  # the address is not ours: nothing was served
    assert "WARNING:" in result.stderr
    assert "default API key" in result.stderr
    with_own_key = subprocess.run(
        [*CLI, "--host", UNASSIGNED, "--port", "0", "--api-key", "mine-and-secret"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert with_own_key.returncode == 1
    assert "WARNING:" not in with_own_key.stderr
