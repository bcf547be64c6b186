"""What Airflow reads about this provider, through the ``apache_airflow_provider`` entry point.

From Airflow 3.2 the Connections UI builds the ``imagegen`` form from ``conn-fields`` and
``ui-field-behaviour`` here, without importing the hook. Airflow 3.1 asks the hook's
``get_connection_form_widgets`` / ``get_ui_field_behaviour`` instead; they translate the same two
dicts below (:func:`connection_form_widgets`, :func:`ui_field_behaviour`), so the form has one
owner. Keep this module free of imports at the top: Airflow loads it on start.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_imagegen import __version__

INTEGRATION = "GPT Image 2"

DEFAULT_CONN_ID = "imagegen_default"
"""The ``imagegen`` connection the hook, the operator and the decorator use when none is named."""

SUPPORTED_AIRFLOW = ">=3.1.2, <4"
"""The ``apache-airflow`` requirement in pyproject.toml (a test keeps the two equal)."""
TESTED_AIRFLOW = ("3.1.2", "3.3.2")
"""The Airflow versions CI runs the whole suite on: ``make test-min`` (the floor) and ``make test`` (the lock)."""

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["login", "schema", "port"],
    "relabeling": {"host": "Base URL", "password": "API Key"},
    "placeholders": {
        "host": "https://api.highwayapi.ai",
        "password": "Your GPT Image 2 API key (sent as a Bearer token)",
        "endpoint": "/v3/gpt-image-2-text-to-image",
        "timeout": "600",
        "max_retries": "3",
    },
}
"""Standard fields hidden, relabelled and given placeholders in the connection form."""

CONN_FIELDS: dict[str, Any] = {
    "endpoint": {
        "label": "Endpoint",
        "description": "Path of the text-to-image endpoint under the Base URL.",
        "schema": {"type": ["string", "null"], "default": "/v3/gpt-image-2-text-to-image"},
    },
    "timeout": {
        "label": "Timeout (seconds)",
        "description": "Read timeout of one generation call; high-quality 4K images take "
        "minutes. Connecting has its own short timeout.",
        "schema": {"type": ["number", "null"], "default": 600, "minimum": 1},
    },
    "max_retries": {
        "label": "Max retries",
        "description": "Retries of rate-limited (429), server-error (5xx) and network-failed "
        "calls, with backoff honouring Retry-After. Rejected requests are never retried.",
        "schema": {"type": ["integer", "null"], "default": 3, "minimum": 0, "maximum": 20},
    },
}
"""The connection's extra fields (stored in ``extra`` under these names)."""


def get_provider_info() -> dict[str, Any]:
    """Return the provider's metadata, validated by Airflow against its provider-info schema."""
    return {
        "package-name": "airflow-provider-imagegen",
        "name": "Image Generation (GPT Image 2)",
        "description": "Templated prompts to images with the GPT Image 2 text-to-image API, landed and verified in S3. "
        f"Supports Apache Airflow {SUPPORTED_AIRFLOW}; tested on Airflow {' and '.join(TESTED_AIRFLOW)}.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://api.highwayapi.ai",
                "tags": ["software"],
            }
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_imagegen.hooks.imagegen"]}],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_provider_imagegen.operators.imagegen"],
            }
        ],
        "triggers": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_provider_imagegen.triggers.imagegen"],
            }
        ],
        "task-decorators": [
            {"name": "imagegen", "class-name": "airflow_provider_imagegen.decorators.imagegen.imagegen_task"},
        ],
        "connection-types": [
            {
                "connection-type": "imagegen",
                "hook-class-name": "airflow_provider_imagegen.hooks.imagegen.ImageGenHook",
                "hook-name": "GPT Image 2",
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
                "conn-fields": CONN_FIELDS,
            }
        ],
    }


def ui_field_behaviour() -> dict[str, Any]:
    """:data:`UI_FIELD_BEHAVIOUR` in the form Airflow 3.1 takes from ``get_ui_field_behaviour``."""
    return {key.replace("-", "_"): value for key, value in UI_FIELD_BEHAVIOUR.items()}


def connection_form_widgets() -> dict[str, Any]:
    """:data:`CONN_FIELDS` as the wtforms fields Airflow 3.1 takes from ``get_connection_form_widgets``.

    Airflow 3.1 accepts only string, integer, password and boolean fields: a ``number`` is an
    integer field there (whole seconds in the form; the hook still reads fractions from ``extra``).
    """
    from wtforms import IntegerField, StringField

    widgets: dict[str, Any] = {}
    for name, field in CONN_FIELDS.items():
        types = field["schema"]["type"]
        field_class = IntegerField if {"integer", "number"} & set(types) else StringField
        default = field["schema"].get("default")
        widgets[name] = field_class(
            field["label"],
            description=field["description"],
            default=default if field_class is IntegerField or default is None else str(default),
        )
    return widgets
