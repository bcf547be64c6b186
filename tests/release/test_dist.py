"""The built sdist and wheel: their file lists, license, extras and a PyPI-safe long description.

Both are built from this checkout with ``uv build`` (the same backend as a release) into a
temporary folder, once per module.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

import airflow_provider_imagegen

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "airflow_provider_imagegen"
VERSION = airflow_provider_imagegen.__version__
# Besides the package: what a source distribution of it needs. hatchling always adds .gitignore.
SDIST_TOP_LEVEL = {"PKG-INFO", "pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE", ".gitignore"}
EXTRAS = {"emulator", "testing"}
# A Markdown link or image whose target is neither a URL nor an in-page anchor breaks on PyPI.
RELATIVE_LINK = re.compile(r"!?\[[^\]]*\]\((?!https?://|#)([^)\s]+)")


def _uv() -> str:
    for candidate in (REPO / ".tools" / "bin" / "uv", shutil.which("uv")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("uv not found: run `make install` (it puts uv in .tools/bin)", pytrace=False)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [_uv(), "build", "--sdist", "--wheel", "--quiet", "--out-dir", str(out), str(REPO)],
        check=True,
        timeout=300,
    )
    return {
        "sdist": out / f"{PACKAGE}-{VERSION}.tar.gz",
        "wheel": out / f"{PACKAGE}-{VERSION}-py3-none-any.whl",
    }


def _source_modules() -> set[str]:
    """Every file of the package in this checkout (``py.typed`` included), relative to the repo."""
    root = REPO / PACKAGE
    return {
        path.relative_to(REPO).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_sdist_holds_the_package_and_top_level_docs_only(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as sdist:
        names = {member.name for member in sdist.getmembers() if member.isfile()}
    root = f"{PACKAGE}-{VERSION}/"
    assert all(name.startswith(root) for name in names), names
    names = {name[len(root) :] for name in names}
    package_files = {name for name in names if name.startswith(f"{PACKAGE}/")}
    assert names - package_files == SDIST_TOP_LEVEL
    assert package_files == _source_modules()


def test_wheel_holds_the_package_and_license(dists: dict[str, Path]) -> None:
    dist_info = f"{PACKAGE}-{VERSION}.dist-info"
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = set(wheel.namelist())
        license_text = wheel.read(f"{dist_info}/licenses/LICENSE").decode()
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert {name for name in names if not name.startswith(f"{dist_info}/")} == _source_modules()
    assert license_text == (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text
    assert "Version 2.0, January 2004" in license_text
    assert "[apache_airflow_provider]" in entry_points
    assert "airflow_provider_imagegen.get_provider_info:get_provider_info" in entry_points


def test_metadata_license_extras_and_floors(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        metadata = email.parser.Parser().parsestr(wheel.read(f"{PACKAGE}-{VERSION}.dist-info/METADATA").decode())
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert set(metadata.get_all("Provides-Extra")) == EXTRAS
    requires = metadata.get_all("Requires-Dist")
    assert any(re.match(r"moto\[s3,server\]>=\S+; extra == 'testing'", line) for line in requires), requires
    assert any(re.match(r"pillow>=10\.1; extra == 'emulator'", line) for line in requires), requires
    assert "apache-airflow<4,>=3.1.2" in requires
    assert any(re.match(r"fastapi>=0\.116\.0; extra == 'emulator'", line) for line in requires), requires
    assert metadata["Requires-Python"] == ">=3.10"


def test_long_description_has_no_relative_links(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        metadata = email.parser.Parser().parsestr(wheel.read(f"{PACKAGE}-{VERSION}.dist-info/METADATA").decode())
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload()
    assert description.startswith("# airflow-provider-imagegen")
    assert RELATIVE_LINK.findall(description) == []
    assert "pip install 'airflow-provider-imagegen[emulator,testing]'" in description


def _twine() -> str:
    """twine as locked in the docs group, in ``.venv``: the oldest-Airflow venv (``make test-min``)
    cannot hold twine 7 (its rich is too new for the FAB provider's flask-limiter), and older twines
    cannot read the wheel's metadata version."""
    for candidate in (REPO / ".venv" / "bin" / "twine", shutil.which("twine")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("twine not found: run `make install` (the docs group installs it in .venv)", pytrace=False)


def test_twine_check_strict_passes(dists: dict[str, Path]) -> None:
    """What PyPI would say of the upload: metadata complete, the README renders."""
    completed = subprocess.run(
        [_twine(), "check", "--strict", str(dists["sdist"]), str(dists["wheel"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.count("PASSED") == 2, completed.stdout
