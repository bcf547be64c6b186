"""Browser-test fixtures: a real Airflow API server (a subprocess) and headless Debian Chromium.

Chromium is Debian's ``chromium`` package at ``/usr/bin/chromium`` (CI installs it with
``.ci/install-browser``), driven by Playwright through ``executable_path``: Playwright's own browser
downloads are never used. A missing browser fails the tests; it never skips them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from deployment.components import AirflowDeployment, call_failed

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"
CHROMIUM = Path(os.environ.get("IMAGEGEN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}
UI_TIMEOUT_MS = 20_000


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so that fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium; fails (never skips) when it is missing."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: the browser tests need Debian's `chromium` package. "
            "Install it with `.ci/install-browser` (apt-get install chromium), or point "
            "IMAGEGEN_CHROMIUM at a Chromium binary.",
            pytrace=False,
        )
    return CHROMIUM


def artifacts_dir() -> Path:
    """``test-artifacts/ui/`` (git-ignored), made if missing; nothing in it is removed."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def artifacts() -> Path:
    """``test-artifacts/ui/`` (git-ignored), emptied of older screenshots: one PNG per step of this run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink(missing_ok=True)
    return ARTIFACTS


@pytest.fixture
def airflow_ui(
    chromium: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[AirflowDeployment]:
    """A real ``airflow api-server`` on 127.0.0.1 with this provider installed and connection tests enabled."""
    deployment = AirflowDeployment(
        tmp_path_factory.mktemp("airflow-ui-home"),
        extra_env={"AIRFLOW__CORE__TEST_CONNECTION": "Enabled"},
    )
    started = False
    try:
        try:
            deployment.migrate()
            deployment.start_api_server()
            deployment.wait_api_ready()
        except Exception as error:
            raise RuntimeError(f"The Airflow API server did not start: {error}\n{deployment.logs()}") from error
        started = True
        yield deployment
    finally:
        if started and call_failed(request):
            print(deployment.logs(), file=sys.stderr)
        deployment.stop()


@pytest.fixture
def page(chromium: Path, airflow_ui: AirflowDeployment, artifacts: Path, request: pytest.FixtureRequest) -> Any:
    """A fresh page of headless Chromium whose relative URLs go to the API server."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(base_url=airflow_ui.base_url, viewport=VIEWPORT)
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            yield page
            if call_failed(request):
                page.screenshot(path=artifacts / "zz-failure.png", full_page=True)
        finally:
            browser.close()
