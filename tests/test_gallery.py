"""The gallery: image entries of XCom values, their prompts from the manifests, the plugin's image URLs.

No server: S3 is a small in-test fake. The last test guards the layering the module exists for.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from airflow_provider_imagegen import gallery
from airflow_provider_imagegen.gallery import ImageView, describe, image_entries, image_url

PACKAGE = Path(gallery.__file__).parent


def _entry(key: str, bucket: str = "b", **extra) -> dict:
    return {"bucket": bucket, "key": key, "sha256": "ab" * 32, **extra}


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


class _MissingKey(Exception):
    response = {"Error": {"Code": "NoSuchKey"}}


class _ManifestS3:
    """Answers ``get_object`` from a dict of JSON objects; counts the reads."""

    def __init__(self, objects: dict[tuple[str, str], object]) -> None:
        self.objects = objects
        self.reads: list[tuple[str, str]] = []

    def get_object(self, *, Bucket: str, Key: str) -> dict:
        self.reads.append((Bucket, Key))
        if (Bucket, Key) not in self.objects:
            raise _MissingKey(Key)
        value = self.objects[(Bucket, Key)]
        return {"Body": _Body(value if isinstance(value, bytes) else json.dumps(value).encode())}


def test_image_entries_flattens_mapped_lists_and_drops_what_is_not_an_image():
    first, second = _entry("p/00.png"), _entry("q/00.png")
    value = [[first], [second, {"bucket": "b", "key": 3, "sha256": "x"}], "text", None, {"key": "k"}]
    assert image_entries(value) == [first, second]
    assert image_entries(first) == [first]
    assert image_entries((first,)) == [first]
    assert image_entries(42) == []


def test_describe_reads_one_manifest_per_folder_and_keeps_the_entry_order():
    s3 = _ManifestS3({("b", "p/manifest.json"): {"prompt": "a fox", "images": []}})
    entries = [_entry("p/00.png", index=0), _entry("p/01.png", index=1), _entry("q/00.png")]
    views = describe(s3, entries)
    assert [view.key for view in views] == ["p/00.png", "p/01.png", "q/00.png"]
    assert [view.prompt for view in views] == ["a fox", "a fox", None]
    assert s3.reads == [("b", "p/manifest.json"), ("b", "q/manifest.json")]
    assert views[1].index == 1
    assert views[0].s3_uri == "s3://b/p/00.png"


def test_describe_shows_an_unreadable_manifest_as_no_prompt():
    s3 = _ManifestS3({("b", "p/manifest.json"): b"{not json"})
    (view,) = describe(s3, [_entry("p/00.png")])
    assert view.prompt is None


@pytest.mark.parametrize(("width", "shown"), [(512, 512), ("<b>512</b>", None), (True, None), (0, None), (-1, None)])
def test_describe_takes_only_positive_integer_pixel_sizes(width, shown):
    (view,) = describe(_ManifestS3({}), [_entry("p/00.png", width=width, height=width)])
    assert isinstance(view, ImageView)
    assert (view.width, view.height) == (shown, shown)


def test_image_url_quotes_every_part_and_names_the_plugin_route():
    url = image_url("my dag", "manual__2026-01-01T00:00:00+00:00", "a/b c.png", base="https://af.test")
    assert url == (
        "https://af.test/imagegen/images/my%20dag/manual__2026-01-01T00%3A00%3A00%2B00%3A00?key=a%2Fb%20c.png"
    )
    assert image_url("d", "r", "k", thumbnail=True) == "/imagegen/images/d/r?key=k&thumbnail=true"


def test_the_plugin_mounts_its_app_where_the_urls_point():
    from airflow_provider_imagegen.plugins.images import ImageGenPlugin

    (app,) = ImageGenPlugin.fastapi_apps
    assert image_url("d", "r", "k").startswith(app["url_prefix"] + "/images/")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_operator_module_imports_the_plugins():
    for path in sorted((PACKAGE / "operators").glob("*.py")):
        plugin_imports = {
            name for name in _imported_modules(path) if name.startswith("airflow_provider_imagegen.plugins")
        }
        assert not plugin_imports, f"{path.name} imports {plugin_imports}"
