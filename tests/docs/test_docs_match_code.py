"""The docs and the README say what the code says.

``make docs`` (in ``make test``) builds the site with warnings as errors, and its tables are made
from the code at build time. These tests cover what a build cannot: the README (PyPI shows it as it
is, so its version table and its DAG snippet are copies), the metric names the code really sends,
the fault-matrix notes, the code map in CONTRIBUTING.md, and every page being reachable.
"""

from __future__ import annotations

import re
from pathlib import Path

import code_tables
import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = (REPO / "README.md").read_text(encoding="utf-8")
PAGES = sorted(path.stem for path in DOCS.glob("*.md"))
REQUIRED_PAGES = {
    "installation": "installation, with the supported Airflow versions",
    "connection": "the connection",
    "operator": "ImageGenToS3Operator",
    "decorator": "@task.imagegen",
    "review": "the review step",
    "images-tab": "the Images tab",
    "hook": "the hook",
    "trigger": "the trigger",
    "deferrable": "deferrable mode",
    "assets-metrics": "assets, lineage, cost and metrics",
    "reliability": "reliability: the promises, the fault matrix, what is verified on which store",
    "security": "security",
    "testing": "testing your own DAGs with the emulator",
    "celery": "running on Celery",
    "performance": "performance, with the bench figures and which mode to pick",
    "changelog": "changelog",
    "api": "the API reference",
}


NAMED_FILE = r"\b((?:tests|dags|bench|airflow_provider_imagegen)/[\w/.-]+\.(?:py|j2))(::(\w+))?"
"""A file of the repository named in the docs, with an optional ``::test_name``."""


def _fenced(text: str, opening: str) -> list[str]:
    """The bodies of the fenced blocks that open with ``opening`` (e.g. "```python")."""
    return re.findall(rf"^{re.escape(opening)}\n(.*?)^```$", text, flags=re.M | re.S)


# -- the site ---------------------------------------------------------------------------------------


def test_every_page_the_issue_asks_for_exists():
    assert set(REQUIRED_PAGES) <= set(PAGES), sorted(set(REQUIRED_PAGES) - set(PAGES))


def test_every_page_is_in_a_toctree_and_every_entry_is_a_page():
    entries = []
    for page in PAGES:
        for block in _fenced((DOCS / f"{page}.md").read_text(encoding="utf-8"), "```{toctree}"):
            entries += [line.strip() for line in block.splitlines() if line.strip() and not line.startswith(":")]
    assert sorted(entries) == sorted(set(entries)), "a page is listed twice"
    assert set(entries) == set(PAGES) - {"index"}


def test_the_screenshots_the_pages_show_are_committed():
    shown = set()
    for page in PAGES:
        shown |= set(re.findall(r"_static/screenshots/([\w.-]+\.png)", (DOCS / f"{page}.md").read_text()))
    assert {"connection-form.png", "images-tab.png", "review-page.png", "demo-gallery.png"} <= shown
    for name in shown:
        picture = DOCS / "_static" / "screenshots" / name
        assert picture.is_file(), f"{name}: run `make docs-screenshots`"
        assert picture.stat().st_size < 200_000, f"{name} is {picture.stat().st_size} bytes: keep screenshots small"


def test_the_generated_tables_are_used_not_restated():
    """The pages call the directives, and no page writes a metric name or a size list by hand."""
    text = {page: (DOCS / f"{page}.md").read_text(encoding="utf-8") for page in PAGES}
    assert "```{imagegen-version-table}" in text["installation"]
    assert "```{imagegen-request-values}" in text["operator"]
    assert "```{imagegen-connection-fields}" in text["connection"]
    assert "```{imagegen-metrics}" in text["assets-metrics"]
    assert "```{imagegen-exceptions}" in text["hook"]
    assert "```{imagegen-fault-matrix}" in text["reliability"]
    from airflow_provider_imagegen.metrics import METRICS
    from airflow_provider_imagegen.models import SIZES

    for page, body in [*text.items(), ("README", README)]:
        for name, _kind, _what in METRICS:
            assert name.split("<")[0].rstrip(".") not in body, f"{page} restates the metric {name}"
        assert " ".join(SIZES[:4]) not in body, f"{page} lists the sizes"
        assert ", ".join(SIZES[:4]) not in body, f"{page} lists the sizes"


def test_the_fault_matrix_notes_match_its_rows():
    (block,) = _fenced((DOCS / "reliability.md").read_text(encoding="utf-8"), "```{imagegen-fault-matrix}")
    notes = code_tables.parse_fault_notes(block.splitlines())
    assert code_tables.fault_matrix_problems(notes) == []
    table = code_tables.fault_matrix_table(notes)
    assert len(table.splitlines()) == 2 + len(code_tables.fault_rows())


# -- what the docs are made from ----------------------------------------------------------------------


def test_every_metric_sent_is_listed_and_every_listed_metric_is_sent():
    from airflow_provider_imagegen.exceptions import ImageGenRateLimitError
    from airflow_provider_imagegen.metrics import METRICS, TryTally
    from airflow_provider_imagegen.models import CopiedImage

    class Stats:
        def __init__(self) -> None:
            self.names: list[str] = []

        def incr(self, name: str, count: int = 1, tags: object = None) -> None:
            self.names.append(name)

        def timing(self, name: str, value: float, tags: object = None) -> None:
            self.names.append(name)

    class Log:
        def warning(self, *args: object) -> None:
            raise AssertionError(args)

    image = CopiedImage(0, "bucket", "key", "image/png", 10, "0" * 64, 1, 1)
    tally, stats = TryTally(Log()), Stats()  # type: ignore[arg-type]
    tally._stats = stats
    tally.generated(requested=1, received=1, seconds=0.1)
    tally.failed(ImageGenRateLimitError("429", status_code=429), seconds=0.1)
    tally.stored([image], seconds=0.1)
    tally.reused([image])
    patterns = {
        name: re.compile(re.escape(name).replace(re.escape("<outcome>"), r"\w+") + "$") for name, _, _ in METRICS
    }
    for sent in stats.names:
        assert any(pattern.match(sent) for pattern in patterns.values()), f"{sent} is sent but not in METRICS"
    for name, pattern in patterns.items():
        assert any(pattern.match(sent) for sent in stats.names), f"{name} is in METRICS but never sent"


@pytest.mark.parametrize(
    "documented",
    [
        "airflow_provider_imagegen.operators.imagegen.ImageGenToS3Operator",
        "airflow_provider_imagegen.operators.review.ImageReviewOperator",
        "airflow_provider_imagegen.hooks.imagegen.ImageGenHook",
        "airflow_provider_imagegen.triggers.imagegen.ImageGenTrigger",
        "airflow_provider_imagegen.decorators.imagegen.imagegen_task",
    ],
)
def test_the_public_classes_document_every_argument(documented: str):
    """The docs' argument lists are these docstrings (``make docs`` fails on the same check)."""
    import importlib

    module, _, name = documented.rpartition(".")
    assert code_tables.undocumented_parameters(getattr(importlib.import_module(module), name)) == []


# -- the README, which PyPI shows as it is --------------------------------------------------------------


def test_the_readme_is_a_front_page():
    lines = README.splitlines()
    assert len(lines) <= 120, f"README.md has {len(lines)} lines"
    assert lines[0] == "# airflow-provider-imagegen"
    assert "pip install airflow-provider-imagegen" in README
    assert "pip install 'airflow-provider-imagegen[emulator,testing]'" in README
    assert "make demo" in README
    assert "make test" in README


def test_the_readme_version_table_is_version_differences():
    assert code_tables.version_table() in README, "regenerate it: print(code_tables.version_table())"


def test_the_readme_dag_is_the_example_dag():
    expected = code_tables.readme_dag_snippet(REPO)
    assert expected in _fenced(README, "```python"), f"the README's DAG snippet must read:\n{expected}"


def test_the_readme_links_are_absolute_and_point_at_files_of_this_repository():
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    assert links
    for link in links:
        assert link.startswith("https://"), link
        for prefix in (f"{code_tables.REPO_URL}/blob/main/", f"{code_tables.REPO_URL}/tree/main/"):
            if link.startswith(prefix):
                assert (REPO / link.removeprefix(prefix).split("#")[0]).exists(), link


# -- contributor material -------------------------------------------------------------------------------


def test_the_code_map_lists_every_module():
    (code_map,) = [block for block in _fenced((REPO / "CONTRIBUTING.md").read_text(), "```text")]
    listed = {line.split()[0] for line in code_map.splitlines() if line.strip()}
    package = REPO / "airflow_provider_imagegen"
    modules = {
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if "__pycache__" not in path.parts and (path.name != "__init__.py" or path.read_text().strip())
    }
    assert modules - listed == set(), "add these to CONTRIBUTING.md's code map"
    assert listed - modules == set(), "the code map lists modules that do not exist"


def test_every_file_and_test_the_docs_name_exists():
    texts = [(path, path.read_text(encoding="utf-8")) for path in [*DOCS.glob("*.md"), REPO / "CONTRIBUTING.md"]]
    for path, text in texts:
        for file, _, test in re.findall(NAMED_FILE, text):
            assert (REPO / file).is_file(), f"{path.name} names {file}, which does not exist"
            if test:
                defined = re.search(rf"^def {test}\(", (REPO / file).read_text(), flags=re.M)
                assert defined, f"{path.name} names {file}::{test}, which does not exist"
