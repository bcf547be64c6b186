"""Sphinx configuration of the airflow-provider-imagegen docs (``make docs``: warnings are errors)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path[:0] = [str(DOCS / "_ext"), str(REPO)]  # the extension; the package, dags/ and tests/ as in the checkout

# autodoc imports Airflow: give it a throw-away home (no ~/airflow, no airflow.cfg left behind)
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="imagegen-docs-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")

import airflow_provider_imagegen  # noqa: E402

project = "airflow-provider-imagegen"
author = "airflow-provider-imagegen developers"
copyright = "the airflow-provider-imagegen developers, Apache License 2.0"
release = version = airflow_provider_imagegen.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "imagegen_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "screenshots.py"]
root_doc = "index"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- API reference from the docstrings ---------------------------------------------------------------
autoclass_content = "class"  # the parameters are in the class docstring, as in Airflow's providers
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"show-inheritance": True}

# Nitpicky for the provider's own objects; third-party types cannot resolve offline (no intersphinx).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(airflow|httpx|tenacity|botocore|boto3|pendulum|typing_extensions|fastapi|uvicorn)(\..*)?"),
    (r"py:.*", r"(collections\.abc|contextlib|typing|datetime|asyncio|ssl|pathlib|types|dataclasses)\..*"),
    (r"py:.*", r"(Any|Context|TaskDecorator|Connection|BaseHook|BaseOperator|NoneType|Unpack|Iterator)"),
    (r"py:.*", r"(HITLOperator|BaseTrigger|TriggerEvent|AirflowException|ValueError|Exception|OperatorPartial)"),
    (r"py:.*", r"(AsyncIterator|AbstractContextManager|Callable|Sequence|Mapping|Collection)"),
    # the provider's internal types, named in public signatures but not part of its API
    (
        r"py:class",
        r"(airflow_provider_imagegen\.[\w.]+\.)?(download\.)?"
        r"(Plan|PromptJob|ConnectionSettings|RetryPolicy|ImageStream|EmulatorState|RecordedCall|RequestParameters)",
    ),
]

# -- HTML --------------------------------------------------------------------------------------------
# furo, not sphinx-airflow-theme: the latter builds cleanly, but its templates hard-code the Apache
# Software Foundation's site (the Apache Airflow logo and navigation, an "Airflow Summit 2025" banner,
# ASF footer links and analytics), which would present this third-party provider as an ASF page.
html_theme = "furo"
html_title = f"airflow-provider-imagegen {release}"
html_static_path = ["_static"]
html_show_sourcelink = False
