"""``make docs-screenshots``: re-take the pictures in ``docs/_static/screenshots/`` from the real thing.

Nothing here draws: the browser tests take the pictures while they check what they show.

* The connection form, the review page and the Images tab: this script runs the browser tests
  (``tests/ui/test_connections_ui.py`` and ``tests/ui/test_images_ui.py``, headless Debian Chromium
  against a real Airflow deployment) with their screenshot folder redirected to a temporary one.
  The connection form is their own screenshot. The review page and the Images tab are shot from the
  top of the page by a plugin, in the tests' logged-in browser and deployment, right before the
  review test responds and right after the Images tab test passed (the tests' own screenshots are
  scrolled to what they check).
* The demo gallery: it runs ``python -m demo`` (``make demo``: the daily-content DAG on the emulator
  and a local S3 server) and photographs ``demo-output/.../gallery.html`` with the same Chromium and
  arguments as the browser tests.

Every picture is cropped, scaled to fit 1280x800 and stored with a 256-colour palette, so that the
committed PNGs stay small. Takes 4-6 minutes on a 2-core machine (most of it the Airflow deployment).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "_static" / "screenshots"
MAX_SIZE = (1280, 800)

UI_TESTS = [
    "tests/ui/test_connections_ui.py::test_imagegen_connection_in_the_browser",
    "tests/ui/test_images_ui.py::test_review_in_required_actions_publishes_exactly_the_chosen_images",
    "tests/ui/test_images_ui.py::test_images_tab_shows_every_image_loaded_with_its_sha256",
]

REVIEW_TEST = "test_review_in_required_actions_publishes_exactly_the_chosen_images"
IMAGES_TAB_TEST = "test_images_tab_shows_every_image_loaded_with_its_sha256"
REVIEW_SHOT = "docs-review-page.png"
IMAGES_TAB_SHOT = "docs-images-tab.png"

# docs picture → (the screenshot taken during the browser tests, crop box (left, top, right, bottom))
FROM_TESTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "connection-form.png": ("03-add-form-standard-fields.png", (240, 50, 1160, 810)),
    "connection-extra-fields.png": ("04-add-form-extra-fields.png", (240, 50, 1160, 930)),
    "review-page.png": (REVIEW_SHOT, (0, 0, 1400, 1000)),
    "images-tab.png": (IMAGES_TAB_SHOT, (0, 0, 1400, 1000)),
}
ALL_LOADED = "sel => [...document.querySelectorAll(sel)].every(e => e.complete && e.naturalWidth > 0)"
GALLERY = "demo-gallery.png"
ENV = dict(os.environ)  # before the tests' conftest changes it (AIRFLOW_HOME...): the demo's environment


class RedirectScreenshots:
    """A pytest plugin: the browser tests' ``ARTIFACTS`` folder becomes ``folder`` once their conftest is loaded."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conftest: Any = None

    def pytest_collection_finish(self, session: Any) -> None:
        wanted = REPO / "tests" / "ui" / "conftest.py"
        for module in list(sys.modules.values()):
            if Path(getattr(module, "__file__", None) or "-").resolve() == wanted:
                module.ARTIFACTS = self.folder
                self.conftest = module
        if self.conftest is None:
            raise RuntimeError(f"{wanted} was not loaded: cannot redirect its screenshots")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: Any) -> Any:
        if item.name == REVIEW_TEST:
            self.shoot_review_page(item.funcargs["page"], item.funcargs["reviewed"])
        result = yield
        if item.name == IMAGES_TAB_TEST:
            self.shoot_images_tab(item.funcargs["page"], item.funcargs["reviewed"], item.module.DAG_ID)
        return result

    def shoot_review_page(self, page: Any, reviewed: Any) -> None:
        """Browse → Required Actions → the run's request, every thumbnail loaded; then back home."""
        from playwright.sync_api import expect

        page.get_by_role("button", name="Browse").click()
        page.get_by_role("menuitem", name="Required Actions").click()
        page.get_by_role("row").filter(has_text=reviewed.run_id).get_by_text("Pick the posters").click()
        expect(page.locator("img[src*='/imagegen/images/']").first).to_be_visible()
        page.wait_for_function(ALL_LOADED, arg="img[src*='/imagegen/images/']")
        page.screenshot(path=self.folder / REVIEW_SHOT, animations="disabled")
        page.goto("/")
        expect(page.get_by_role("button", name="Browse")).to_be_visible()

    def shoot_images_tab(self, page: Any, reviewed: Any, dag_id: str) -> None:
        """The ``generate`` task's Images tab, every thumbnail loaded."""
        from playwright.sync_api import expect

        page.goto(f"/dags/{dag_id}/runs/{reviewed.run_id}/tasks/generate")
        page.get_by_text("Images", exact=True).click()
        expect(page.frame_locator("iframe").locator("[data-testid='imagegen-image']").first).to_be_visible()
        inner = next(frame for frame in page.frames if "/imagegen/task-instances/" in frame.url)
        inner.wait_for_function(ALL_LOADED, arg="img.thumb")
        page.screenshot(path=self.folder / IMAGES_TAB_SHOT, animations="disabled")


def small_png(source: Path, target: Path, box: tuple[int, int, int, int] | None = None) -> None:
    """Crop ``source`` to ``box``, scale it to fit :data:`MAX_SIZE`, save it palette-coded to ``target``."""
    from PIL import Image

    with Image.open(source) as picture:
        image = picture.convert("RGB")
    if box is not None:
        right, bottom = min(box[2], image.width), min(box[3], image.height)
        image = image.crop((box[0], box[1], right, bottom))
    image.thumbnail(MAX_SIZE, Image.Resampling.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def run_browser_tests(folder: Path) -> Any:
    """The browser tests, their screenshots going to ``folder``; returns their conftest module."""
    sys.path.insert(0, str(REPO))  # as `python -m pytest` from the repository root has it
    plugin = RedirectScreenshots(folder)
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-o", "addopts=", *UI_TESTS], plugins=[plugin])
    if code != 0:
        raise SystemExit(f"docs-screenshots: the browser tests failed (pytest exit code {code})")
    return plugin.conftest


def shoot_gallery(conftest: Any, target: Path) -> None:
    """Run the demo, then photograph its gallery page with the browser tests' Chromium."""
    completed = subprocess.run([sys.executable, "-m", "demo"], cwd=REPO, env=ENV, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"docs-screenshots: the demo failed (exit code {completed.returncode})")
    pages = sorted((REPO / "demo-output").rglob("gallery.html"), key=lambda path: path.stat().st_mtime)
    if not pages:
        raise SystemExit("docs-screenshots: the demo wrote no gallery.html")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(conftest.CHROMIUM), args=conftest.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": MAX_SIZE[0], "height": MAX_SIZE[1]})
            page.goto(pages[-1].as_uri())
            page.wait_for_load_state("load")
            assert page.eval_on_selector_all("img", "els => els.every(e => e.complete && e.naturalWidth > 0)")
            page.screenshot(path=target, animations="disabled")
        finally:
            browser.close()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="imagegen-docs-shots-") as tmp:
        folder = Path(tmp)
        conftest = run_browser_tests(folder)
        for name, (source, box) in FROM_TESTS.items():
            small_png(folder / source, OUT / name, box)
        shoot_gallery(conftest, folder / GALLERY)
        small_png(folder / GALLERY, OUT / GALLERY)
    for path in sorted(OUT.glob("*.png")):
        print(f"docs-screenshots: {path.relative_to(REPO)} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
