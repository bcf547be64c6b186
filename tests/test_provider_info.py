"""What Airflow reads about the provider: valid against Airflow's schemas, importable, and understood."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import json
import warnings

import jsonschema
import pytest

from airflow_provider_imagegen import __version__
from airflow_provider_imagegen.get_provider_info import connection_form_widgets, get_provider_info, ui_field_behaviour
from airflow_provider_imagegen.version_compat import AIRFLOW_V_3_2_PLUS

PACKAGE = "airflow-provider-imagegen"
HOOK_CLASS = "airflow_provider_imagegen.hooks.imagegen.ImageGenHook"


def _airflow_schema(name: str) -> dict:
    return json.loads(importlib.resources.files("airflow").joinpath(name).read_text())


@pytest.fixture(scope="module")
def info() -> dict:
    return get_provider_info()


@pytest.fixture(scope="module")
def imagegen_type(info) -> dict:
    (conn_type,) = [c for c in info["connection-types"] if c["connection-type"] == "imagegen"]
    return conn_type


def test_valid_against_airflows_runtime_schema(info):
    """The schema Airflow checks every installed provider's info against on start."""
    jsonschema.validate(info, _airflow_schema("provider_info.schema.json"))


def test_sections_valid_against_airflows_provider_yaml_schema(info):
    """The stricter provider.yaml schema (kebab-case keys, enums for tags and hidden fields, conn-fields)."""
    schema = _airflow_schema("provider.yaml.schema.json")
    for section in ("integrations", "hooks", "operators", "triggers", "connection-types", "task-decorators"):
        jsonschema.validate(info[section], schema["properties"][section])
    for key in ("package-name", "name", "description", "versions"):
        jsonschema.validate(info[key], schema["properties"][key])


def test_ui_field_behaviour_valid_against_airflows_form_schema(imagegen_type):
    behaviour = imagegen_type["ui-field-behaviour"]
    as_airflow_reads_it = {
        "hidden_fields": behaviour.get("hidden-fields", []),
        "relabeling": behaviour.get("relabeling", {}),
        "placeholders": behaviour.get("placeholders", {}),
    }
    jsonschema.validate(as_airflow_reads_it, _airflow_schema("customized_form_field_behaviours.schema.json"))


def test_package_name_and_version_match_the_installed_distribution(info):
    distribution = importlib.metadata.distribution(info["package-name"])
    assert distribution.metadata["Name"] == info["package-name"] == PACKAGE
    assert distribution.version == __version__
    assert info["versions"] == [__version__]


def test_entry_point_returns_this_info(info):
    (entry_point,) = [
        ep
        for ep in importlib.metadata.entry_points(group="apache_airflow_provider")
        if ep.dist is not None and ep.dist.name == PACKAGE
    ]
    assert entry_point.load()() == info


def test_every_listed_module_imports_and_the_hook_class_resolves(info, imagegen_type):
    modules = [
        m for section in ("hooks", "operators", "triggers") for entry in info[section] for m in entry["python-modules"]
    ]
    assert len(modules) == 3
    for module in modules:
        importlib.import_module(module)
    module_name, _, class_name = imagegen_type["hook-class-name"].rpartition(".")
    hook_class = getattr(importlib.import_module(module_name), class_name)
    assert imagegen_type["hook-class-name"] == HOOK_CLASS
    assert hook_class.conn_type == imagegen_type["connection-type"] == "imagegen"
    assert hook_class.hook_name == imagegen_type["hook-name"]
    for entry in info["hooks"] + info["operators"] + info["triggers"]:
        assert entry["integration-name"] in {i["integration-name"] for i in info["integrations"]}


def test_connection_form_labels_and_hidden_fields(imagegen_type):
    behaviour = imagegen_type["ui-field-behaviour"]
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API Key"}
    assert sorted(behaviour["hidden-fields"]) == ["login", "port", "schema"]
    assert "host" not in behaviour["hidden-fields"]
    assert "password" not in behaviour["hidden-fields"]
    placeholders = behaviour["placeholders"]
    assert placeholders["host"].startswith("https://")
    for name in ("password", "endpoint", "timeout", "max_retries"):
        assert placeholders[name]


def test_connection_extra_fields(imagegen_type):
    from airflow_provider_imagegen.hooks._client import DEFAULT_ENDPOINT, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT

    fields = imagegen_type["conn-fields"]
    assert set(fields) == {"endpoint", "timeout", "max_retries"}
    for name, field in fields.items():
        assert field["label"], name
        assert len(field["description"]) > 20, name
        assert field["schema"]["type"], name
    assert fields["endpoint"]["schema"]["default"] == DEFAULT_ENDPOINT
    assert fields["timeout"]["schema"]["default"] == DEFAULT_TIMEOUT
    assert "number" in fields["timeout"]["schema"]["type"]
    assert fields["max_retries"]["schema"]["default"] == DEFAULT_MAX_RETRIES
    assert "integer" in fields["max_retries"]["schema"]["type"]
    assert fields["max_retries"]["schema"]["minimum"] == 0


def test_form_defaults_are_accepted_by_the_hook(imagegen_type):
    """What the form stores (its defaults, in extra under the plain names) is what the hook accepts."""
    from airflow_provider_imagegen.hooks._client import MAX_RETRIES_LIMIT, settings_from_connection

    fields = imagegen_type["conn-fields"]
    extra = {name: field["schema"]["default"] for name, field in fields.items()}
    settings = settings_from_connection("c", imagegen_type["ui-field-behaviour"]["placeholders"]["host"], "k", extra)
    assert settings.url == "https://api.highwayapi.ai/v3/gpt-image-2-text-to-image"
    assert fields["max_retries"]["schema"]["maximum"] == MAX_RETRIES_LIMIT
    settings_from_connection("c", None, "k", {"max_retries": MAX_RETRIES_LIMIT})


def test_get_provider_info_imports_nothing_heavy():
    """Airflow calls it on start for every command: it must not import the hook, httpx or the SDK."""
    import subprocess
    import sys

    code = (
        "import sys; from airflow_provider_imagegen.get_provider_info import get_provider_info; get_provider_info();"
        "heavy = [m for m in ('httpx', 'tenacity', 'airflow', 'airflow.sdk', 'airflow_provider_imagegen.hooks') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def providers_manager():
    from airflow.providers_manager import ProvidersManager

    return ProvidersManager()


def test_providers_manager_lists_the_provider(providers_manager):
    provider = providers_manager.providers[PACKAGE]
    assert provider.version == __version__
    assert provider.data["package-name"] == PACKAGE


def test_providers_manager_knows_the_hook(providers_manager):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ProvidersManager.hooks is deprecated for the task runtime's twin
        hook_info = providers_manager.hooks["imagegen"]
    assert hook_info is not None
    assert hook_info.hook_class_name == HOOK_CLASS
    assert hook_info.connection_id_attribute_name == "imagegen_conn_id"
    assert hook_info.package_name == PACKAGE
    assert hook_info.hook_name == "GPT Image 2"
    assert hook_info.connection_testable is True  # the hook defines test_connection


def test_task_sdk_providers_manager_knows_the_hook(providers_manager):
    """What tasks resolve hooks with: the task SDK's own from Airflow 3.2, core's before."""
    if AIRFLOW_V_3_2_PLUS:
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

        hook_info = ProvidersManagerTaskRuntime().hooks["imagegen"]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hook_info = providers_manager.hooks["imagegen"]
    assert hook_info is not None
    assert hook_info.hook_class_name == HOOK_CLASS


def test_providers_manager_field_behaviours_and_widgets(providers_manager):
    behaviour = providers_manager.field_behaviours["imagegen"]
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API Key"}
    assert set(behaviour["hidden_fields"]) == {"login", "schema", "port"}
    assert behaviour["placeholders"]["extra__imagegen__timeout"] == "600"
    widgets = providers_manager.connection_form_widgets
    for name in ("endpoint", "timeout", "max_retries"):
        widget = widgets[f"extra__imagegen__{name}"]
        assert widget.field_name == name
        assert widget.is_sensitive is False
        if AIRFLOW_V_3_2_PLUS:  # from provider info's conn-fields
            assert widget.hook_class_name == HOOK_CLASS
            assert widget.field["description"]
            assert widget.field["schema"]["title"]
        else:  # Airflow 3.1: the hook's wtforms fields (the API server turns them into the same schema)
            assert widget.hook_class_name == "ImageGenHook"
            assert widget.field.kwargs["description"]
            assert widget.field.args[0]
    max_retries = widgets["extra__imagegen__max_retries"].field
    assert (max_retries["value"] if AIRFLOW_V_3_2_PLUS else max_retries.kwargs["default"]) == 3


def test_connection_json_resolves_through_the_hook(monkeypatch):
    """The ``AIRFLOW_CONN_IMAGEGEN_DEFAULT`` JSON form, as users and the demo set it."""
    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_IMAGEGEN_DEFAULT",
        json.dumps(
            {
                "conn_type": "imagegen",
                "host": "http://127.0.0.1:8765/",
                "password": "sk-provider-info-test",
                "extra": {"endpoint": "v3/gpt-image-2-text-to-image", "timeout": 90, "max_retries": 1},
            }
        ),
    )
    settings = ImageGenHook().settings
    assert settings.url == "http://127.0.0.1:8765/v3/gpt-image-2-text-to-image"
    assert settings.api_key == "sk-provider-info-test"
    assert (settings.timeout, settings.max_retries) == (90.0, 1)
    named = ImageGenHook(imagegen_conn_id="imagegen_default").settings
    assert named == settings


def test_missing_connection_is_a_clear_error(monkeypatch):
    from airflow.exceptions import AirflowNotFoundException

    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

    monkeypatch.delenv("AIRFLOW_CONN_IMAGEGEN_NOPE", raising=False)
    with pytest.raises(AirflowNotFoundException, match="imagegen_nope"):
        ImageGenHook("imagegen_nope").settings  # noqa: B018


# -- @task.imagegen and the Images plugin --------------------------------------------------------------

DECORATOR_CLASS = "airflow_provider_imagegen.decorators.imagegen.imagegen_task"
PLUGIN_CLASS = "airflow_provider_imagegen.plugins.images:ImageGenPlugin"


def test_task_decorator_is_registered_and_resolves(info):
    from airflow.sdk.definitions.decorators import task

    from airflow_provider_imagegen.decorators.imagegen import imagegen_task

    assert info["task-decorators"] == [{"name": "imagegen", "class-name": DECORATOR_CLASS}]
    module_name, _, name = DECORATOR_CLASS.rpartition(".")
    assert getattr(importlib.import_module(module_name), name) is imagegen_task
    assert task.imagegen is imagegen_task  # what `@task.imagegen` in a DAG file finds


def test_plugin_is_an_airflow_plugins_entry_point_not_a_provider_info_plugin(info):
    """Registered once: Airflow 3.3 loads provider-info plugins only with lazy_discover_providers=False,
    and a plugin registered both ways is refused the second time with an import error."""
    (entry_point,) = [
        ep
        for ep in importlib.metadata.entry_points(group="airflow.plugins")
        if ep.dist is not None and ep.dist.name == PACKAGE
    ]
    assert entry_point.value == PLUGIN_CLASS
    plugin_class = entry_point.load()
    assert plugin_class.name == "imagegen"
    assert "plugins" not in info


def _plugins_in_a_fresh_process(lazy: str) -> dict:
    import subprocess
    import sys

    loaded = (  # Airflow 3.1 keeps what it loaded in module globals; 3.2+ returns it
        "plugins, errors = pm._get_plugins();views, _ = pm._get_ui_plugins(); apps, _ = pm.get_fastapi_plugins();"
        if AIRFLOW_V_3_2_PLUS
        else "pm.ensure_plugins_loaded(); pm.initialize_ui_plugins(); pm.initialize_fastapi_plugins();"
        "plugins, errors, views, apps = pm.plugins, pm.import_errors, pm.external_views, pm.fastapi_apps;"
    )
    code = (
        "import json, sys; from airflow import plugins_manager as pm;"
        + loaded
        + "print(json.dumps({'names': [p.name for p in plugins], 'errors': errors,"
        "'views': [{k: v for k, v in view.items()} for view in views],"
        "'apps': [{'url_prefix': a['url_prefix'], 'name': a['name']} for a in apps],"
        "'fastapi_imported': 'airflow_provider_imagegen.plugins._app' in sys.modules}))"
    )
    env = {**__import__("os").environ, "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": lazy}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("lazy", ["True", "False"])
def test_airflow_loads_the_plugin_once_on_either_discovery_setting(lazy):
    found = _plugins_in_a_fresh_process(lazy)
    assert found["names"].count("imagegen") == 1, found
    assert not [error for error in found["errors"].values() if "imagegen" in error], found["errors"]
    (view,) = [view for view in found["views"] if view.get("url_route") == "imagegen_images"]
    assert view["destination"] == "task_instance"
    assert view["name"] == "Images"
    assert view["href"] == "/imagegen/task-instances/{DAG_ID}/{RUN_ID}/{TASK_ID}/{MAP_INDEX}"
    assert {"url_prefix": "/imagegen", "name": "Image generation"} in found["apps"]
    assert found["fastapi_imported"] is False, "loading the plugin must not build its app"


def test_hook_form_methods_translate_the_provider_info(imagegen_type):
    """Airflow 3.1 asks the hook; what it gets is the provider info's form, field for field."""
    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook

    behaviour = ImageGenHook.get_ui_field_behaviour()
    assert behaviour == ui_field_behaviour()
    assert behaviour["hidden_fields"] == imagegen_type["ui-field-behaviour"]["hidden-fields"]
    assert behaviour["relabeling"] == imagegen_type["ui-field-behaviour"]["relabeling"]
    assert behaviour["placeholders"] == imagegen_type["ui-field-behaviour"]["placeholders"]
    widgets = ImageGenHook.get_connection_form_widgets()
    assert set(widgets) == set(imagegen_type["conn-fields"]) == set(connection_form_widgets())
    for name, field in imagegen_type["conn-fields"].items():
        widget = widgets[name]
        assert widget.kwargs["description"] == field["description"]
        assert widget.args[0] == field["label"]
        assert str(widget.kwargs["default"]) == str(field["schema"]["default"])
    assert widgets["max_retries"].field_class.__name__ == "IntegerField"


def test_no_deprecation_warning_for_the_hook_form_on_3_2_plus():
    """3.2+ reads the form from provider info and never calls (nor warns about) the hook's methods."""
    import subprocess
    import sys

    code = (
        "import warnings; warnings.simplefilter('always');"
        "from airflow.providers_manager import ProvidersManager\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    pm = ProvidersManager(); pm.field_behaviours; pm.connection_form_widgets\n"
        "mine = [str(w.message) for w in caught if 'ImageGenHook' in str(w.message)]\n"
        "print(mine); print(sorted(pm.field_behaviours['imagegen']))\n"
        "raise SystemExit(1 if mine else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hidden_fields" in result.stdout  # the form was loaded (from provider info or the hook)


def test_supported_and_tested_versions_are_what_ci_runs(info):
    """Provider info names the floor in pyproject.toml, make test-min's Airflow and the lock's."""
    import re
    from pathlib import Path

    import tomllib

    from airflow_provider_imagegen.get_provider_info import SUPPORTED_AIRFLOW, TESTED_AIRFLOW

    root = Path(__file__).resolve().parents[1]
    requires = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    (airflow,) = [r for r in requires if re.match(r"apache-airflow[<>=]", r)]
    assert sorted(airflow.removeprefix("apache-airflow").split(",")) == sorted(
        part.replace(" ", "") for part in SUPPORTED_AIRFLOW.split(",")
    )
    floor = re.search(r"^MIN_AIRFLOW := (\S+)$", (root / "Makefile").read_text(), re.MULTILINE)
    assert floor, "MIN_AIRFLOW not found in the Makefile"
    # the lock may hold older releases for older Pythons (markers): the newest is what make test runs
    locked = re.findall(r'name = "apache-airflow"\nversion = "([^"]+)"', (root / "uv.lock").read_text())
    assert locked, "apache-airflow not found in uv.lock"
    newest = max(locked, key=lambda version: tuple(map(int, version.split("."))))
    assert (floor.group(1), newest) == TESTED_AIRFLOW
    assert f">={floor.group(1)}" in airflow
    assert all(version in info["description"] for version in TESTED_AIRFLOW)
