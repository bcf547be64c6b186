"""The Images tab and the image review, in headless Chromium against a real Airflow deployment.

One deployment for the module (api-server, scheduler, triggerer, dag-processor, LocalExecutor,
SQLite), with the emulator and a moto S3 server on 127.0.0.1 and ``[operators] default_deferrable``
on (the generation runs through the triggerer). One run of ``imagegen_review_and_publish`` serves
every test: the reviewer opens Browse → Required Actions, sees the three thumbnails loaded, keeps
two and submits; the run must finish with exactly those two under ``published/``. The Images tab of
its ``generate`` task shows every image loaded with the right sha256, a task without images shows
the empty state, and the plugin refuses requests without valid credentials. Screenshots land in
``test-artifacts/ui/images-*.png``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import httpx
import pytest
from deployment.components import AirflowDeployment, call_failed, wait_until

from airflow_provider_imagegen.testing import connection_env
from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_2_PLUS

from .conftest import CHROMIUM_ARGS, UI_TIMEOUT_MS, VIEWPORT

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.ui

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
DAG_ID = "imagegen_review_and_publish"
N_IMAGES = 3
KEEP = (1, 3)
"""The images the reviewer keeps (1-based)."""
READY_TIMEOUT = 180.0
RUN_TIMEOUT = 180.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REVIEWER = "reviewer"
PASSWORD = uuid.uuid4().hex


class Reviewed:
    """The module's deployment and its one DAG run."""

    def __init__(self, deployment: AirflowDeployment, token: str, bucket: str, run_id: str, s3: Any) -> None:
        self.deployment, self.token, self.bucket, self.run_id, self.s3 = deployment, token, bucket, run_id, s3
        self.run_url = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"

    def api(self, path: str) -> Any:
        with self.deployment.client(self.token) as client:
            response = client.get(path)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def ti_state(self, task_id: str) -> str | None:
        return self.api(f"{self.run_url}/taskInstances/{task_id}").get("state")

    def generated(self) -> list[dict[str, Any]]:
        value = self.api(f"{self.run_url}/taskInstances/generate/xcomEntries/return_value")["value"]
        return json.loads(value) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory, _emulator_server: Any, s3_server: Any) -> Iterator[Reviewed]:
    """A deployment, and a run of imagegen_review_and_publish waiting for its reviewer."""
    env = connection_env(_emulator_server.connection_json(), s3_server)
    env.update(
        {
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__CORE__PARALLELISM": "4",
        }
    )
    # Real authentication: the shared default (all admins) lets every request in, Airflow's own API too.
    home = tmp_path_factory.mktemp("airflow-images-home")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({REVIEWER: PASSWORD}))
    env.update(
        {
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{REVIEWER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        }
    )
    deployment = AirflowDeployment(home, extra_env=env)
    started = time.monotonic()
    failed = False
    try:
        bucket = f"imagegen-ui-{uuid.uuid4().hex[:12]}"
        s3_server.client().create_bucket(Bucket=bucket)
        _emulator_server.reset(clear_images=True)
        deployment.start_all()
        with deployment.client() as client:
            login = client.post("/auth/token", json={"username": REVIEWER, "password": PASSWORD})
            assert login.status_code in (200, 201), login.text
            token = login.json()["access_token"]
            assert client.get(f"/api/v2/dags/{DAG_ID}").status_code == 401, "Airflow itself must want credentials"
        with deployment.client(token) as client:
            wait_until(
                lambda: client.get(f"/api/v2/dags/{DAG_ID}").status_code == 200,
                timeout=READY_TIMEOUT,
                what=f"the dag-processor to parse {DAG_ID}",
                alive=deployment.check_alive,
            )
            assert client.patch(f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
            run_id = f"ui_review_{uuid.uuid4().hex[:8]}"
            created = client.post(
                f"/api/v2/dags/{DAG_ID}/dagRuns",
                json={"dag_run_id": run_id, "logical_date": None, "conf": {"bucket": bucket, "n": N_IMAGES}},
            )
            assert created.status_code == 200, created.text
        run = Reviewed(deployment, token, bucket, run_id, s3_server.client())
        wait_until(
            lambda: run.ti_state("review") in ("awaiting_input", "deferred", "failed", "skipped"),
            timeout=RUN_TIMEOUT,
            what="the review task to wait for its reviewer",
            interval=0.5,
            alive=deployment.check_alive,
        )
        assert run.ti_state("generate") == "success"
        assert run.ti_state("review") in ("awaiting_input", "deferred")
        deployment.timings["run waiting for the reviewer (at)"] = time.monotonic() - started
        yield run
    except BaseException:
        failed = True
        raise
    finally:
        print(f"\ndeployment timings: {deployment.timings}")
        if failed:
            print(deployment.logs())
        deployment.stop()


@pytest.fixture
def page(chromium: Path, reviewed: Reviewed, artifacts: Path, request: pytest.FixtureRequest) -> Any:
    """Headless Chromium on the module's deployment (logged in by the simple auth manager on first visit)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(base_url=reviewed.deployment.base_url, viewport=VIEWPORT)
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto("/")  # the simple auth manager's login form
            page.get_by_placeholder("Username").or_(page.get_by_label("Username")).first.fill(REVIEWER)
            page.get_by_placeholder("Password").or_(page.get_by_label("Password")).first.fill(PASSWORD)
            page.get_by_role("button", name="Sign in").or_(page.get_by_role("button", name="Login")).first.click()
            expect(page.get_by_role("button", name="Browse")).to_be_visible()
            yield page
            if call_failed(request):
                page.screenshot(path=artifacts / f"images-zz-failure-{request.node.name}.png", full_page=True)
                print(reviewed.deployment.logs())
        finally:
            browser.close()


@pytest.fixture
def artifacts() -> Path:
    """``test-artifacts/ui/`` (git-ignored); the Connections test clears its own PNGs, these are ``images-*``."""
    from .conftest import artifacts_dir

    return artifacts_dir()


def _loaded_images(scope: Any, selector: str) -> list[dict[str, Any]]:
    return scope.eval_on_selector_all(
        selector,
        "els => els.map(e => ({src: e.getAttribute('src'), complete: e.complete, width: e.naturalWidth}))",
    )


def test_review_in_required_actions_publishes_exactly_the_chosen_images(page: Any, reviewed: Reviewed, artifacts):
    from playwright.sync_api import expect

    images = reviewed.generated()
    assert len(images) == N_IMAGES

    # -- Browse → Required Actions → the request -------------------------------------------------------
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Required Actions").click()
    # Airflow 3.1's table shows no run id: there the row is found by its subject, the run by the URL
    rows = page.get_by_role("row").filter(has_text="Pick the posters")
    row = rows.filter(has_text=reviewed.run_id) if AIRFLOW_V_3_2_PLUS else rows
    expect(row).to_have_count(1)
    page.screenshot(path=artifacts / "images-01-required-actions.png", full_page=True)
    row.get_by_text("Pick the posters").click()
    page.wait_for_url(lambda url: reviewed.run_id in unquote(url))

    # -- every thumbnail loaded, through the plugin, with its sha256 beside it --------------------------
    thumbs = page.locator("img[src*='/imagegen/images/']")
    expect(thumbs).to_have_count(N_IMAGES)
    for i in range(N_IMAGES):
        thumbs.nth(i).scroll_into_view_if_needed()
        expect(thumbs.nth(i)).to_have_js_property("complete", True)
    loaded = _loaded_images(page, "img[src*='/imagegen/images/']")
    assert all(image["width"] > 0 for image in loaded), loaded
    assert [image["src"].split("key=")[1].split("&")[0] for image in loaded] == [
        quote(image["key"], safe="") for image in images
    ]
    for image in images:
        expect(page.get_by_text(image["sha256"])).to_be_visible()
    page.screenshot(path=artifacts / "images-02-review-request.png", full_page=True)

    # -- keep two of three, respond -----------------------------------------------------------------
    options = page.get_by_role("combobox").last
    for number in KEEP:
        options.click()
        page.get_by_role("option", name=f"Image {number}", exact=True).click()
    page.keyboard.press("Escape")
    page.screenshot(path=artifacts / "images-03-review-chosen.png", full_page=True)
    page.get_by_role("button", name="Respond").click()

    final = wait_until(
        lambda: (state := reviewed.api(reviewed.run_url)["state"]) in ("success", "failed") and state,
        timeout=RUN_TIMEOUT,
        what="the run to finish after the review",
        interval=0.5,
        alive=reviewed.deployment.check_alive,
    )
    assert final == "success", reviewed.api(f"{reviewed.run_url}/taskInstances")
    kept = [images[number - 1] for number in KEEP]
    value = reviewed.api(f"{reviewed.run_url}/taskInstances/review/xcomEntries/return_value")["value"]
    assert (json.loads(value) if isinstance(value, str) else value) == kept

    listed = reviewed.s3.list_objects_v2(Bucket=reviewed.bucket, Prefix="published/").get("Contents", [])
    published = {item["Key"].rsplit("/", 1)[-1]: item["Key"] for item in listed}
    assert sorted(published) == sorted(image["key"].rsplit("/", 1)[-1] for image in kept)
    for image in kept:
        body = reviewed.s3.get_object(Bucket=reviewed.bucket, Key=published[image["key"].rsplit("/", 1)[-1]])
        assert hashlib.sha256(body["Body"].read()).hexdigest() == image["sha256"]
    page.reload()
    page.screenshot(path=artifacts / "images-04-review-done.png", full_page=True)


def test_images_tab_shows_every_image_loaded_with_its_sha256(page: Any, reviewed: Reviewed, artifacts):
    from playwright.sync_api import expect

    images = reviewed.generated()
    page.goto(f"/dags/{DAG_ID}/runs/{reviewed.run_id}/tasks/generate")
    page.get_by_text("Images", exact=True).click()  # the plugin's tab, beside Logs, XCom, ...
    frame = page.frame_locator("iframe")
    cards = frame.locator("[data-testid='imagegen-image']")
    expect(cards).to_have_count(len(images))
    for i, image in enumerate(images):
        card = cards.nth(i)
        expect(card).to_have_attribute("data-sha256", image["sha256"])
        expect(card.locator(".sha256")).to_have_text(image["sha256"])
        expect(card.locator(".s3-uri")).to_have_text(image["s3_uri"])
        expect(card).to_contain_text("Poster of a lighthouse at dawn")
        expect(card).to_contain_text(f"{image['width']}x{image['height']} px")
        card.scroll_into_view_if_needed()
        expect(card.locator("img.thumb")).to_have_js_property("complete", True)
    inner = next(f for f in page.frames if "/imagegen/task-instances/" in f.url)
    loaded = _loaded_images(inner, "[data-testid='imagegen-image'] img.thumb")
    assert len(loaded) == len(images)
    assert all(image["width"] > 0 for image in loaded), loaded
    page.screenshot(path=artifacts / "images-05-images-tab.png", full_page=True)

    # click for full size: the stored image, at its own pixel size
    cards.first.locator("img.thumb").click()
    full = frame.locator("#full-1 img")
    expect(full).to_be_visible()
    expect(full).to_have_js_property("complete", True)
    assert full.evaluate("e => e.naturalWidth") == images[0]["width"]
    page.screenshot(path=artifacts / "images-06-full-size.png", full_page=True)
    response = page.request.get(full.get_attribute("src"))  # the browser's session, as the <img> had
    assert response.status == 200
    assert hashlib.sha256(response.body()).hexdigest() == images[0]["sha256"]

    # a task instance without images: the empty state
    page.goto(f"/imagegen/task-instances/{DAG_ID}/{reviewed.run_id}/no_such_task/-1")
    expect(page.get_by_test_id("imagegen-empty")).to_contain_text("No images for this task instance")
    page.screenshot(path=artifacts / "images-07-empty-state.png", full_page=True)


def test_the_plugin_refuses_requests_without_valid_credentials(reviewed: Reviewed):
    image = reviewed.generated()[0]
    image_path = f"/imagegen/images/{DAG_ID}/{reviewed.run_id}?key={quote(image['key'], safe='')}"
    page_path = f"/imagegen/task-instances/{DAG_ID}/{reviewed.run_id}/generate/-1"
    base = reviewed.deployment.base_url
    with httpx.Client(base_url=base, trust_env=False, timeout=30) as anonymous:
        for path in (image_path, image_path + "&thumbnail=true", page_path):
            for headers in ({}, {"Authorization": "Bearer not-a-jwt"}):
                response = anonymous.get(path, headers=headers)
                assert response.status_code in (401, 403), (path, headers, response.status_code)
                assert PNG_MAGIC not in response.content
                assert image["sha256"] not in response.text
            response = anonymous.get(path, cookies={"_token": "forged"})
            assert response.status_code in (401, 403), (path, "cookie", response.status_code)
    # control: the same requests with a valid token are served
    with reviewed.deployment.client(reviewed.token) as client:
        full = client.get(image_path)
        assert full.status_code == 200
        assert hashlib.sha256(full.content).hexdigest() == image["sha256"]
        assert full.headers["content-type"] == "image/png"
        thumb = client.get(image_path + "&thumbnail=true")
        assert thumb.status_code == 200
        assert thumb.content.startswith(PNG_MAGIC)
        assert len(thumb.content) < len(full.content)
        assert client.get(page_path).status_code == 200
        # a key that is in no XCom of the run is not served, even to an admin
        other = client.get(f"/imagegen/images/{DAG_ID}/{reviewed.run_id}?key=published%2Fsecret.png")
        assert other.status_code == 404
