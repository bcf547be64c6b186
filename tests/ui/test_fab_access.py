"""Per-DAG access to the Images tab, its images and the image review, under the FAB auth manager.

One real deployment for the module (api-server, scheduler, dag-processor, LocalExecutor, SQLite) with
``[core] auth_manager`` = FAB, the emulator and a moto S3 server on 127.0.0.1. Two DAGs each ran
``ImageGenToS3Operator`` for real; DAG A's prompt is HTML with a ``<script>``, and its ``review``
(``ImageReviewOperator``) waits under *Required Actions*. The admin (``airflow users create``) makes
the roles and users with FAB's own REST API (``/auth/fab/v1``), as an operator of a managed Airflow
would: a per-DAG reader of DAG A (FAB permission ``can_read`` on ``DAG:<A>``, plus the global
``can_read`` on "DAG Runs", "Task Instances", "XComs" that ``requires_access_dag(GET, TASK_INSTANCE)``
and ``(GET, XCOM)`` map to), and readers of DAG A that lack one of those. Each user logs in through
FAB's ``/auth/login/`` form in headless Chromium and requests the plugin's URLs with the browser's
session (the ``_token`` cookie).

Proven: the reader of A gets A's page, images (sha256 of the stored bytes) and thumbnails, and a 403
with no image bytes for B's (both runs have the same run id, so only the DAG id keeps B's images out
of A's URLs); a reader of A without "XComs" or "Task Instances" gets nothing of A
either; the HTML prompt shows as text in the Images tab and on the review page, and nothing in it runs;
nor does markup in an XCom's other fields (a forged pixel size). No triggerer: nobody answers the review.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from deployment.components import FAB_AUTH_MANAGER, AirflowDeployment, call_failed, wait_until

from airflow_provider_imagegen.testing import connection_env

from .conftest import CHROMIUM_ARGS, UI_TIMEOUT_MS, VIEWPORT

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.ui

DAG_A = "imagegen_fab_a"
DAG_B = "imagegen_fab_b"
XSS_PROMPT = (
    "<img src=x onerror=window.__pwned=1;alert(1)><script>window.__pwned=1;alert(2)</script> a red fox & <b>co</b>"
)
PLAIN_PROMPT = "a blue whale, watercolour"
XSS_WIDTH = "<img src=x onerror=window.__pwned=1;alert(3)>"
REVIEW_SUBJECT = "Pick the foxes to keep"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
READY_TIMEOUT = 120.0
RUN_TIMEOUT = 150.0
ADMIN = "fab_admin"
PASSWORD = uuid.uuid4().hex

DAG_FILE = """
from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator
from airflow_provider_imagegen.operators.review import ImageReviewOperator

for dag_id, prompt in (({dag_a!r}, {xss!r}), ({dag_b!r}, {plain!r})):
    with DAG(dag_id=dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False):
        generate = ImageGenToS3Operator(task_id="generate", prompt=prompt, s3_bucket={bucket!r}, quality="low")
        if dag_id == {dag_a!r}:
            ImageReviewOperator(task_id="review", images=generate.output, subject={subject!r})
"""

# What the plugin's checks need (FAB's mapping of DagAccessEntity.TASK_INSTANCE and .XCOM, GET),
# on top of can_read on DAG:<id>; the rest is what a per-DAG viewer needs for the UI around them
# ("Plugins": the UI lists the Images tab from /api/v2/plugins; "HITL Detail": Required Actions).
PLUGIN_NEEDS = ["DAG Runs", "Task Instances", "XComs"]
UI_NEEDS = ["Website", "Plugins", "HITL Detail", "Task Logs", "DAG Code", "DAG Versions", "DAG Warnings"]
MENUS = ["Browse", "DAGs", "DAG Runs", "Task Instances", "HITL Detail"]
USERS = {
    # user: the global read permissions its role lacks (each also may read DAG A, and only DAG A)
    "reader_a": [],
    "reader_a_no_xcom": ["XComs"],
    "reader_a_no_ti": ["Task Instances"],
}


def _role(name: str, lacks: list[str]) -> dict[str, Any]:
    perms = [("can_read", f"DAG:{DAG_A}")]
    perms += [("can_read", resource) for resource in PLUGIN_NEEDS + UI_NEEDS if resource not in lacks]
    perms += [("menu_access", menu) for menu in MENUS]
    return {"name": name, "actions": [{"action": {"name": a}, "resource": {"name": r}} for a, r in perms]}


class Deployed:
    """The module's deployment, one finished run of each DAG, and the images they stored."""

    def __init__(self, deployment: AirflowDeployment, admin_token: str, runs: dict[str, str]) -> None:
        self.deployment, self.admin_token, self.runs = deployment, admin_token, runs

    def api(self, path: str) -> Any:
        with self.deployment.client(self.admin_token) as client:
            response = client.get(path)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def ti_state(self, dag_id: str, task_id: str) -> str | None:
        return self.api(f"/api/v2/dags/{dag_id}/dagRuns/{self.runs[dag_id]}/taskInstances/{task_id}").get("state")

    def images(self, dag_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{self.runs[dag_id]}/taskInstances/generate/xcomEntries/return_value"
        value = self.api(path)["value"]
        return json.loads(value) if isinstance(value, str) else value

    def urls(self, dag_id: str) -> dict[str, str]:
        """The Images tab page, and the full image and thumbnail of the run's first image."""
        run, key = self.runs[dag_id], quote(self.images(dag_id)[0]["key"], safe="")
        return {
            "page": f"/imagegen/task-instances/{dag_id}/{run}/generate/-1",
            "image": f"/imagegen/images/{dag_id}/{run}?key={key}",
            "thumbnail": f"/imagegen/images/{dag_id}/{run}?key={key}&thumbnail=true",
        }


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, _emulator_server: Any, s3_server: Any) -> Iterator[Deployed]:
    """A FAB deployment, a finished ``generate`` in both DAGs (A's review waiting), and the roles and users."""
    home = tmp_path_factory.mktemp("airflow-fab-home")
    bucket = f"imagegen-fab-{uuid.uuid4().hex[:12]}"
    dags = home / "dags"
    dags.mkdir()
    (dags / "imagegen_fab_dags.py").write_text(
        DAG_FILE.format(
            dag_a=DAG_A, dag_b=DAG_B, xss=XSS_PROMPT, plain=PLAIN_PROMPT, bucket=bucket, subject=REVIEW_SUBJECT
        )
    )
    env = connection_env(_emulator_server.connection_json(), s3_server)
    env.update(
        {
            "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
        }
    )
    deployment = AirflowDeployment(home, extra_env=env)
    started = time.monotonic()
    failed = False
    try:
        from airflow_provider_imagegen.emulator import EmulatorConfig

        defaults = EmulatorConfig()
        _emulator_server.configure(**{k: getattr(defaults, k) for k in vars(defaults) if k != "api_key"})
        _emulator_server.reset(clear_images=True)
        s3_server.client().create_bucket(Bucket=bucket)
        deployment.run_migrate()  # not the shared template: FAB's tables too
        deployment.timings["db migrate (FAB)"] = time.monotonic() - started
        deployment.cli(
            "users", "create", "--username", ADMIN, "--password", PASSWORD, "--role", "Admin",
            "--firstname", "Fab", "--lastname", "Admin", "--email", "admin@example.invalid",
        )  # fmt: skip
        deployment.timings["admin created (at)"] = time.monotonic() - started
        deployment.start_api_server()
        deployment.start("scheduler", "--skip-serve-logs")
        deployment.start("dag-processor")
        deployment.wait_api_ready()
        admin = deployment.password_token(ADMIN, PASSWORD)
        with deployment.client(admin) as client:
            for dag_id in (DAG_A, DAG_B):
                wait_until(
                    lambda dag_id=dag_id: client.get(f"/api/v2/dags/{dag_id}").status_code == 200,
                    timeout=READY_TIMEOUT,
                    what=f"the dag-processor to parse {dag_id}",
                    alive=deployment.check_alive,
                )
            # one run id for both: only the DAG id tells their XComs (and images) apart
            runs = dict.fromkeys((DAG_A, DAG_B), f"fab_{uuid.uuid4().hex[:8]}")
            for dag_id in (DAG_A, DAG_B):
                created = client.post(
                    f"/api/v2/dags/{dag_id}/dagRuns", json={"dag_run_id": runs[dag_id], "logical_date": None}
                )
                assert created.status_code == 200, created.text
            # While the runs run: the roles (DAG:<A> exists once A is parsed) and their users.
            for user, lacks in USERS.items():
                role = client.post("/auth/fab/v1/roles", json=_role(f"role_{user}", lacks))
                assert role.status_code in (200, 201), role.text
                body = {
                    "username": user,
                    "password": PASSWORD,
                    "email": f"{user}@example.invalid",
                    "first_name": user,
                    "last_name": "Test",
                    "roles": [{"name": f"role_{user}"}],
                }
                created_user = client.post("/auth/fab/v1/users", json=body)
                assert created_user.status_code in (200, 201), created_user.text
        run = Deployed(deployment, admin, runs)
        states = {(DAG_A, "generate"): "success", (DAG_B, "generate"): "success", (DAG_A, "review"): "deferred"}

        def settled() -> bool:
            now = {where: run.ti_state(*where) for where in states}
            stuck = {where: state for where, state in now.items() if state in ("failed", "upstream_failed", "skipped")}
            logs = "\n".join(_task_log(home, dag_id, runs[dag_id], task_id) for dag_id, task_id in stuck)
            assert not stuck, f"task instances ended badly: {stuck}\n{logs}"
            return all(now[where] in (state, "awaiting_input") for where, state in states.items())

        wait_until(settled, timeout=RUN_TIMEOUT, what=f"the runs to settle at {states}", interval=0.5)
        deployment.timings["runs settled (at)"] = time.monotonic() - started
        yield run
    except BaseException:
        failed = True
        raise
    finally:
        print(f"\ndeployment timings: {deployment.timings}")
        if failed:
            print(deployment.logs())
        deployment.stop()


def _task_log(home: Path, dag_id: str, run_id: str, task_id: str) -> str:
    """The end of a task instance's last log (its error, for a failure message)."""
    logs = sorted((home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}").glob("*.log"))
    return f"===== {dag_id}.{task_id}: " + (logs[-1].read_text(errors="replace")[-3000:] if logs else "(no log)")


class Browser:
    """Headless Chromium for the module, one logged-in context per user (FAB allows 5 logins per 40 s by default)."""

    def __init__(self, browser: Any, deployed: Deployed) -> None:
        self.browser, self.deployed, self.contexts = browser, deployed, {}
        self.dialogs: list[str] = []

    def context(self, user: str) -> Any:
        """A browser context of ``user``, logged in through FAB's login form."""
        if user not in self.contexts:
            context = self.browser.new_context(base_url=self.deployed.deployment.base_url, viewport=VIEWPORT)
            context.set_default_timeout(UI_TIMEOUT_MS)
            page = context.new_page()
            page.goto("/auth/login/")
            page.locator("#username").fill(user)
            page.locator("#password").fill(PASSWORD)
            page.locator("input[type=submit]").click()
            wait_until(
                lambda: any(cookie["name"] == "_token" for cookie in context.cookies()),
                timeout=UI_TIMEOUT_MS / 1000,
                what=f"FAB's login form to log {user} in",
            )
            page.close()
            self.contexts[user] = context
        return self.contexts[user]

    def page(self, user: str) -> Any:
        """A new page of ``user``'s context that records every dialog (and dismisses it)."""
        page = self.context(user).new_page()
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        return page


@pytest.fixture(scope="module")
def browser(deployed: Deployed) -> Iterator[Browser]:
    from playwright.sync_api import expect, sync_playwright

    from .conftest import CHROMIUM

    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with .ci/install-system-deps", pytrace=False)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield Browser(chromium, deployed)
        finally:
            chromium.close()


@pytest.fixture
def artifacts() -> Path:
    """``test-artifacts/ui/`` (git-ignored); this module's screenshots are ``fab-*.png``."""
    from .conftest import artifacts_dir

    return artifacts_dir()


@pytest.fixture
def shots(browser: Browser, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[list[Any]]:
    """Pages a test opens: each is screenshotted if the test fails."""
    pages: list[Any] = []
    yield pages
    if call_failed(request):
        for number, page in enumerate(pages):
            page.screenshot(path=artifacts / f"fab-zz-failure-{request.node.name}-{number}.png", full_page=True)
    for page in pages:
        page.close()


def _assert_no_image(response: Any, image: dict[str, Any], what: str) -> None:
    body = response.body()
    assert response.status == 403, f"{what}: {response.status} {body[:200]!r}"
    assert PNG_MAGIC not in body, what
    assert image["sha256"].encode() not in body, what


def test_reader_of_a_gets_a_images_and_thumbnails(browser: Browser, deployed: Deployed):
    from PIL import Image

    request = browser.context("reader_a").request
    images = deployed.images(DAG_A)
    assert images, "DAG A stored no images"
    page = request.get(deployed.urls(DAG_A)["page"])
    assert page.status == 200, page.text()
    for image in images:
        assert image["sha256"] in page.text()
        url = f"/imagegen/images/{DAG_A}/{deployed.runs[DAG_A]}?key={quote(image['key'], safe='')}"
        full = request.get(url)
        assert full.status == 200, full.text()
        assert full.headers["content-type"] == image["content_type"] == "image/png"
        assert hashlib.sha256(full.body()).hexdigest() == image["sha256"]
        thumb = request.get(url + "&thumbnail=true")
        assert thumb.status == 200, thumb.text()
        assert thumb.body().startswith(PNG_MAGIC)
        with Image.open(io.BytesIO(thumb.body())) as picture:
            assert 0 < max(picture.size) <= 320 < image["width"]


def test_reader_of_a_gets_nothing_of_b(browser: Browser, deployed: Deployed):
    image_b = deployed.images(DAG_B)[0]
    urls = deployed.urls(DAG_B)
    reader = browser.context("reader_a").request
    token = deployed.deployment.password_token("reader_a", PASSWORD)
    for name, url in urls.items():
        _assert_no_image(reader.get(url), image_b, f"reader_a's session, B's {name}")
        _assert_no_image(
            reader.get(url, headers={"Authorization": f"Bearer {token}"}), image_b, f"reader_a's token, B's {name}"
        )
        # "~" (every DAG, in Airflow's REST API) passes a "may read some DAG" check: still nothing of B
        sneaky = reader.get(url.replace(f"/{DAG_B}/", "/~/"))
        assert sneaky.status in (403, 404) or name == "page", (name, sneaky.status)
        assert PNG_MAGIC not in sneaky.body(), name
        assert image_b["sha256"] not in sneaky.text(), name
    # B's image through A's URL (same run id, A's check passes): not listed in A's XCom, so not served
    mixed = reader.get(urls["image"].replace(f"/{DAG_B}/", f"/{DAG_A}/"))
    assert mixed.status == 404, mixed.text()
    assert PNG_MAGIC not in mixed.body()
    # control: B's URLs do serve B's image, to someone who may read B
    with deployed.deployment.client(deployed.admin_token) as admin:
        full = admin.get(urls["image"])
        assert full.status_code == 200
        assert hashlib.sha256(full.content).hexdigest() == image_b["sha256"]
        assert admin.get(urls["thumbnail"]).content.startswith(PNG_MAGIC)
        assert image_b["sha256"] in admin.get(urls["page"]).text


@pytest.mark.parametrize("user", [user for user, lacks in USERS.items() if lacks])
def test_reader_of_a_without_task_instances_or_xcoms_gets_nothing(browser: Browser, deployed: Deployed, user: str):
    image_a = deployed.images(DAG_A)[0]
    request = browser.context(user).request
    # control: the user is logged in and may read DAG A itself
    dag = request.get(f"/api/v2/dags/{DAG_A}")
    assert dag.status == 200, dag.text()
    assert request.get(f"/api/v2/dags/{DAG_B}").status == 403
    for name, url in deployed.urls(DAG_A).items():
        _assert_no_image(request.get(url), image_a, f"{user} (lacks {USERS[user]}), A's {name}")


def _assert_nothing_ran(browser: Browser, page: Any) -> None:
    for frame in page.frames:
        assert frame.evaluate("() => typeof window.__pwned") == "undefined", frame.url
        assert frame.locator("img[src='x']").count() == 0, frame.url
        assert frame.locator("script", has_text="__pwned").count() == 0, frame.url
    assert browser.dialogs == []


def test_html_prompt_is_text_in_the_images_tab(browser: Browser, deployed: Deployed, shots: list[Any], artifacts):
    from playwright.sync_api import expect

    images = deployed.images(DAG_A)
    page = browser.page("reader_a")
    shots.append(page)
    page.goto(f"/dags/{DAG_A}/runs/{deployed.runs[DAG_A]}/tasks/generate")
    page.get_by_text("Images", exact=True).click()  # the plugin's tab
    frame = page.frame_locator("iframe")
    cards = frame.locator("[data-testid='imagegen-image']")
    expect(cards).to_have_count(len(images))
    for i, image in enumerate(images):
        card = cards.nth(i)
        expect(card).to_have_attribute("data-sha256", image["sha256"])
        expect(card.locator(".prompt")).to_have_text(XSS_PROMPT)
        expect(card).to_contain_text(f"{image['width']}x{image['height']} px")
        expect(card.locator("img.thumb")).to_have_js_property("complete", True)
        assert card.locator("img.thumb").evaluate("e => e.naturalWidth") > 0
    expect(frame.get_by_text("<script>window.__pwned=1;alert(2)</script>")).to_be_visible()
    page.screenshot(path=artifacts / "fab-01-images-tab.png", full_page=True)
    _assert_nothing_ran(browser, page)
    # the page on its own (not framed) too
    page.goto(deployed.urls(DAG_A)["page"])
    expect(page.locator(".prompt").first).to_have_text(XSS_PROMPT)
    _assert_nothing_ran(browser, page)


def test_html_prompt_is_text_in_the_review_page(browser: Browser, deployed: Deployed, shots: list[Any], artifacts):
    from playwright.sync_api import expect

    images = deployed.images(DAG_A)
    page = browser.page("reader_a")
    shots.append(page)
    page.goto("/")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Required Actions").click()
    row = page.get_by_role("row").filter(has_text=DAG_A).filter(has_text=REVIEW_SUBJECT)  # 3.1 shows no run id
    expect(row).to_have_count(1)
    row.get_by_text(REVIEW_SUBJECT).click()
    expect(page).to_have_url(re.compile(f"/dags/{DAG_A}/runs/{deployed.runs[DAG_A]}/tasks/review/"))
    thumbs = page.locator("img[src*='/imagegen/images/']")
    expect(thumbs).to_have_count(len(images))
    expect(thumbs.first).to_have_js_property("complete", True)
    assert thumbs.first.evaluate("e => e.naturalWidth") > 0  # reader_a's session fetched the thumbnail
    prompt = page.locator("p").filter(has_text=XSS_PROMPT)
    expect(prompt).to_have_count(1)
    expect(prompt).to_be_visible()
    expect(prompt).to_contain_text("<script>window.__pwned=1;alert(2)</script>")
    page.screenshot(path=artifacts / "fab-02-review-page.png", full_page=True)
    _assert_nothing_ran(browser, page)


def test_xcom_fields_are_text_in_the_images_tab(browser: Browser, deployed: Deployed, shots: list[Any], artifacts):
    """The page's other fields come from XCom, which whoever may write DAG A's XComs sets: never markup either."""
    from playwright.sync_api import expect

    run = deployed.runs[DAG_A]
    planted = dict(deployed.images(DAG_A)[0], width=XSS_WIDTH, height=1)  # the real image, a forged pixel size
    with deployed.deployment.client(deployed.admin_token) as admin:  # stands in for any XCom writer of DAG A
        created = admin.post(
            f"/api/v2/dags/{DAG_A}/dagRuns/{run}/taskInstances/review/xcomEntries",
            json={"key": "return_value", "value": [planted], "map_index": -1},
        )
        assert created.status_code in (200, 201), created.text
    page = browser.page("reader_a")
    shots.append(page)
    page.goto(f"/imagegen/task-instances/{DAG_A}/{run}/review/-1")
    card = page.get_by_test_id("imagegen-image")
    expect(card).to_have_count(1)
    expect(card).to_have_attribute("data-sha256", planted["sha256"])
    expect(card.locator("img.thumb")).to_have_js_property("complete", True)
    page.screenshot(path=artifacts / "fab-03-forged-xcom.png", full_page=True)
    _assert_nothing_ran(browser, page)
