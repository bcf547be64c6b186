"""The built wheel, installed into a fresh virtualenv, is a provider Airflow finds and understands.

This catches what an editable install hides: a module left out of the wheel, a wrong entry point,
a ``package-name`` that differs from the distribution name. uv installs from its cache (the same
versions as the running environment, as constraints), so this takes seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "airflow-provider-imagegen"


def _uv() -> str:
    for candidate in (os.environ.get("UV"), str(REPO / ".tools" / "bin" / "uv"), shutil.which("uv")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("uv not found: run `make install` (it puts uv in .tools/bin) or put uv on PATH")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "UV_PROJECT", "VIRTUAL_ENV"))}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def _run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _run_ok(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = _run(args, **kwargs)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _offline_then_online(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Use uv's cache only; fall back to the package index when something is not cached."""
    result = _run([*args, "--offline"], **kwargs)
    return result if result.returncode == 0 else _run_ok(args, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh venv with the built wheel and its dependencies; returns its paths and the timings."""
    root = tmp_path_factory.mktemp("installed-provider")
    uv, env = _uv(), _clean_env()
    timings: dict[str, float] = {}

    started = time.monotonic()
    dist = root / "dist"
    _offline_then_online([uv, "build", "--wheel", "--out-dir", str(dist), str(REPO)], cwd=root, env=env)
    (wheel,) = dist.glob("airflow_provider_imagegen-*.whl")
    timings["build"] = time.monotonic() - started

    started = time.monotonic()
    venv = root / "venv"
    _run_ok([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=root, env=env)
    python = venv / "bin" / "python"
    freeze = _run_ok([uv, "pip", "freeze", "--python", sys.executable], cwd=root, env=env).stdout
    constraints = root / "constraints.txt"
    constraints.write_text(
        "\n".join(
            line
            for line in freeze.splitlines()
            if line and not line.startswith(("-e", "#")) and not line.lower().startswith(PACKAGE) and " @ " not in line
        )
    )
    _offline_then_online(
        [uv, "pip", "install", "--quiet", "--python", str(python), "-c", str(constraints), str(wheel)],
        cwd=root,
        env=env,
    )
    timings["install"] = time.monotonic() - started
    print(f"\ninstalled-provider timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")

    home = root / "airflow-home"
    home.mkdir()
    return {"root": root, "venv": venv, "python": python, "wheel": wheel, "home": home, "timings": timings}


def _airflow_env(installed: dict, **extra: str) -> dict[str, str]:
    return _clean_env(
        AIRFLOW_HOME=str(installed["home"]),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PATH=f"{installed['venv'] / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    )


def test_wheel_contains_the_package_and_the_entry_point(installed):
    import zipfile

    with zipfile.ZipFile(installed["wheel"]) as wheel:
        names = wheel.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = wheel.read(entry_points).decode()
    for module in (
        "__init__",
        "get_provider_info",
        "exceptions",
        "models",
        "hooks/imagegen",
        "hooks/_client",
        "operators/imagegen",
        "triggers/imagegen",
    ):
        assert f"airflow_provider_imagegen/{module}.py" in names
    assert "airflow_provider_imagegen/py.typed" in names
    assert not any(name.startswith("tests/") for name in names)
    assert "[apache_airflow_provider]" in text
    assert "provider_info = airflow_provider_imagegen.get_provider_info:get_provider_info" in text


def test_install_is_reasonably_fast(installed):
    # a cached install takes seconds; minutes would mean uv is downloading everything each run
    assert installed["timings"]["install"] < 180, installed["timings"]


def test_airflow_providers_list_shows_the_provider(installed):
    from airflow_provider_imagegen import __version__

    result = _run_ok(
        [str(installed["venv"] / "bin" / "airflow"), "providers", "list", "--output", "json"],
        cwd=installed["root"],
        env=_airflow_env(installed),
        timeout=180,
    )
    start = result.stdout.index("[")
    providers = {p["package_name"]: p for p in json.loads(result.stdout[start:])}
    assert PACKAGE in providers, sorted(providers)
    assert providers[PACKAGE]["version"] == __version__
    assert "apache-airflow-providers-amazon" in providers


SNIPPET = textwrap.dedent(
    """
    import json, warnings
    warnings.simplefilter("ignore")
    import airflow_provider_imagegen
    from airflow.providers_manager import ProvidersManager
    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

    manager = ProvidersManager()
    hook_info = manager.hooks["imagegen"]
    settings = ImageGenHook().settings
    print(json.dumps({
        "module": airflow_provider_imagegen.__file__,
        "hook": hook_info.hook_class_name if hook_info else None,
        "package": hook_info.package_name if hook_info else None,
        "relabeling": manager.field_behaviours["imagegen"]["relabeling"],
        "widgets": sorted(k for k in manager.connection_form_widgets if k.startswith("extra__imagegen__")),
        "url": settings.url,
        "max_retries": settings.max_retries,
    }))
    """
)


def test_providers_manager_in_the_installed_venv(installed):
    conn = {
        "conn_type": "imagegen",
        "host": "http://127.0.0.1:8765",
        "password": "sk-installed-test",
        "extra": {"max_retries": 4},
    }
    result = _run_ok(
        [str(installed["python"]), "-c", SNIPPET],
        cwd=installed["root"],
        env=_airflow_env(installed, AIRFLOW_CONN_IMAGEGEN_DEFAULT=json.dumps(conn)),
        timeout=180,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith(str(installed["venv"]))  # the wheel, not the source tree
    assert report["hook"] == "airflow_provider_imagegen.hooks.imagegen.ImageGenHook"
    assert report["package"] == PACKAGE
    assert report["relabeling"] == {"host": "Base URL", "password": "API Key"}
    assert report["widgets"] == [
        "extra__imagegen__endpoint",
        "extra__imagegen__max_retries",
        "extra__imagegen__timeout",
    ]
    assert report["url"] == "http://127.0.0.1:8765/v3/gpt-image-2-text-to-image"
    assert report["max_retries"] == 4
