"""The tables of the docs that restate code or tests, made from that code (Markdown, for MyST pages).

Each function reads its source of truth and returns Markdown; :mod:`imagegen_docs` turns them into
directives, and ``tests/docs`` compares the README's copies with them. Nothing here imports Sphinx.

* :func:`version_table`: ``airflow_provider_imagegen.version_compat.VERSION_DIFFERENCES``;
* :func:`request_values_table`: ``airflow_provider_imagegen.models`` (allowed values, defaults, limits);
* :func:`connection_fields_table`: the provider info's connection form (``get_provider_info``);
* :func:`metrics_table`: ``airflow_provider_imagegen.metrics.METRICS``;
* :func:`exceptions_table`: the classes of ``airflow_provider_imagegen.exceptions``;
* :func:`fault_matrix_table`: ``FAULTS`` of ``tests/reliability/test_fault_matrix.py``, with a
  note per row written in the docs page; a row without a note, or a note without a row, is an error.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

REPO_URL = "https://github.com/airflow-provider-imagegen/airflow-provider-imagegen"
DOCS_URL = f"{REPO_URL}/blob/main/docs"
"""Where the README's links point (absolute: the README is also the PyPI page)."""


def rst_to_markdown(text: str) -> str:
    """The inline RST the code's tables use (````code````) as Markdown (```code```)."""
    return re.sub(r"``(.+?)``", r"`\1`", text)


def _cell(text: Any) -> str:
    return rst_to_markdown(str(text)).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table (what both the README and MyST read)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# -- versions ---------------------------------------------------------------------------------------

VERSION_HEADER = ["", "Airflow 3.1", "Airflow 3.2 and 3.3"]


def version_table() -> str:
    """``VERSION_DIFFERENCES`` as a table: what differs, on 3.1, on 3.2/3.3."""
    from airflow_provider_imagegen.version_compat import VERSION_DIFFERENCES

    return markdown_table(VERSION_HEADER, [list(row) for row in VERSION_DIFFERENCES])


# -- request values -----------------------------------------------------------------------------------


def request_values_table() -> str:
    """Every request parameter of the API contract: what it accepts and its default."""
    from dataclasses import MISSING, fields

    from airflow_provider_imagegen import models

    allowed = {
        "prompt": f"a string of 0 to {models.MAX_PROMPT_CHARS} characters",
        "n": f"1 to {models.MAX_IMAGES} (the API may return fewer)",
        "size": ", ".join(f"``{size}``" for size in models.SIZES),
        "quality": ", ".join(f"``{value}``" for value in models.QUALITIES),
        "background": ", ".join(f"``{value}``" for value in models.BACKGROUNDS),
        "moderation": ", ".join(f"``{value}``" for value in models.MODERATIONS),
        "output_format": ", ".join(
            f"``{value}`` (stored as ``.{models.FILE_EXTENSIONS[value]}``)" for value in models.OUTPUT_FORMATS
        ),
        "output_compression": "0 to 100, jpeg only (with png leave it out or use 100)",
    }
    rows = []
    for item in fields(models.ImageGenerationRequest):
        default = "required" if item.default is MISSING else f"``{item.default!r}``"
        rows.append([f"``{item.name}``", allowed[item.name], default])
    missing = set(allowed) - {item.name for item in fields(models.ImageGenerationRequest)}
    if missing:
        raise ValueError(f"request_values_table describes parameters the request no longer has: {sorted(missing)}")
    return markdown_table(["parameter", "accepted values", "default"], rows)


# -- the connection -----------------------------------------------------------------------------------


def connection_fields_table() -> str:
    """The ``imagegen`` connection form as the provider info declares it."""
    from airflow_provider_imagegen.get_provider_info import CONN_FIELDS, UI_FIELD_BEHAVIOUR

    relabeling, placeholders = UI_FIELD_BEHAVIOUR["relabeling"], UI_FIELD_BEHAVIOUR["placeholders"]
    rows = [
        [relabeling["host"], "host", f"default ``{placeholders['host']}``; a missing scheme means https"],
        [relabeling["password"], "password", "required; sent as ``Authorization: Bearer ...`` to the endpoint only"],
    ]
    for name, field in CONN_FIELDS.items():
        schema = field["schema"]
        if "minimum" in schema and "maximum" in schema:
            bounds = f", {schema['minimum']} to {schema['maximum']}"
        elif "minimum" in schema:
            bounds = f", at least {schema['minimum']}"
        else:
            bounds = ""
        default = f"Default ``{schema['default']}``{bounds}."
        rows.append([field["label"], f"extra ``{name}``", f"{field['description']} {default}"])
    hidden = ", ".join(UI_FIELD_BEHAVIOUR["hidden-fields"])
    rows.append([f"({hidden})", "", "hidden: not used"])
    return markdown_table(["field in the form", "stored as", "meaning"], rows)


# -- metrics --------------------------------------------------------------------------------------------


def metrics_table() -> str:
    """``METRICS``: every metric the provider sends."""
    from airflow_provider_imagegen.metrics import METRICS

    return markdown_table(["name", "kind", "what"], [[f"``{name}``", kind, what] for name, kind, what in METRICS])


# -- exceptions -----------------------------------------------------------------------------------------


def _error_classes() -> list[type]:
    from airflow_provider_imagegen import exceptions

    base = exceptions.ImageGenError
    classes = [
        value
        for value in vars(exceptions).values()
        if inspect.isclass(value) and issubclass(value, base) and value.__module__ == exceptions.__name__
    ]

    def depth_first(cls: type) -> list[type]:
        children = [c for c in classes if cls in c.__bases__]
        return [cls, *(item for child in children for item in depth_first(child))]

    return depth_first(base)


def _mark(cls: type, name: str) -> str:
    value = inspect.getattr_static(cls, name)
    if isinstance(value, property):
        return "per error"
    return "yes" if value else "no"


def exceptions_table() -> str:
    """Every error class: its parent, what it means, whether the hook retries it, whether it is permanent."""
    rows = []
    for cls in _error_classes():
        depth = len([base for base in cls.__mro__ if base.__name__.startswith("ImageGen")]) - 1
        summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        name = "&nbsp;&nbsp;" * depth + ("└ " if depth else "") + f"{{class}}`~{cls.__module__}.{cls.__name__}`"
        rows.append([name, summary, _mark(cls, "retryable"), _mark(cls, "permanent")])
    header = ["class", "meaning", "retried by the hook", "permanent (no Airflow retry)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# -- the fault matrix -------------------------------------------------------------------------------------


def fault_rows() -> list[Any]:
    """``FAULTS`` of the fault-matrix test, unwrapped from ``pytest.param``."""
    from tests.reliability import test_fault_matrix

    return [row.values[0] if hasattr(row, "values") else row for row in test_fault_matrix.FAULTS]


def fault_matrix_max_retries() -> int:
    """The connection's ``max_retries`` in every row of the matrix."""
    from tests.reliability import test_fault_matrix

    return int(test_fault_matrix.MAX_RETRIES)


def parse_fault_notes(lines: list[str]) -> dict[str, str]:
    """``row id | what the user sees`` lines (the docs page's) as a dict; blank lines ignored."""
    notes: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            continue
        row_id, separator, note = line.partition(" | ")
        if not separator:
            raise ValueError(f"a fault-matrix note must read 'row id | note': {line!r}")
        if row_id.strip() in notes:
            raise ValueError(f"two notes for the fault-matrix row {row_id.strip()!r}")
        notes[row_id.strip()] = note.strip()
    return notes


def fault_matrix_problems(notes: dict[str, str]) -> list[str]:
    """How the docs' notes and the test's rows differ (none: every row has exactly one note)."""
    ids = [row.id for row in fault_rows()]
    problems = [f"the fault-matrix row {row_id!r} has no note in the docs" for row_id in ids if row_id not in notes]
    problems += [f"the docs note {row_id!r} matches no row of FAULTS" for row_id in notes if row_id not in ids]
    return problems


def _outcome(row: Any) -> str:
    if row.error is None:
        return "success"
    if row.cause is not None:
        return f"``{row.error.__name__}`` from ``{row.cause.__name__}``: not retried"
    if row.error is SystemExit:
        return "the worker dies"
    return f"``{row.error.__name__}``: Airflow retries"


def _left(row: Any) -> str:
    done = f"{row.images} image(s) + manifest"
    if row.error is None:
        return done
    left = ", ".join(f"``{name}``" for name in sorted(row.left, key=lambda name: (name.endswith(".png"), name)))
    left = left or "nothing"
    return f"{left}; after the next try: {done}" if row.retry else left


def fault_matrix_table(notes: dict[str, str]) -> str:
    """Every row of the fault matrix: the note, the outcome, what is left under the prefix, calls paid."""
    problems = fault_matrix_problems(notes)
    if problems:
        raise ValueError("; ".join(problems))
    rows = []
    for row in fault_rows():
        calls = f"{row.calls} in all" if row.retry else str(row.calls)
        rows.append([row.id, notes[row.id], _outcome(row), _left(row), calls])
    return markdown_table(["fault", "what you see", "the try ends", "left under the prefix", "calls paid"], rows)


# -- example DAGs ---------------------------------------------------------------------------------------


def marker_region(path: Any, name: str) -> str:
    """The lines of an example DAG between ``# [START name]`` and ``# [END name]``, dedented."""
    import textwrap
    from pathlib import Path

    lines = Path(path).read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == f"# [START {name}]"]
    ends = [i for i, line in enumerate(lines) if line.strip() == f"# [END {name}]"]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"{path}: expected one '# [START {name}]' before one '# [END {name}]'")
    return textwrap.dedent("\n".join(lines[starts[0] + 1 : ends[0]])).strip("\n") + "\n"


README_DAG = (
    ("dags/imagegen_daily_content.py", "howto_operator_imagegen_to_s3_import"),
    ("dags/imagegen_daily_content.py", "howto_operator_imagegen_to_s3"),
)
"""The marker regions the README's DAG snippet is a copy of, in order (PyPI cannot include files)."""


def readme_dag_snippet(repo: Any) -> str:
    """The README's Python snippet as the example DAG has it: the regions of :data:`README_DAG`."""
    from pathlib import Path

    return "\n".join(marker_region(Path(repo) / path, name) for path, name in README_DAG)


# -- docstrings ---------------------------------------------------------------------------------------------

_PARAM = re.compile(r":param\s+(?:[^:]+\s)?(\w+):")


def undocumented_parameters(obj: Any) -> list[str]:
    """The named parameters of a class's constructor (or a function) that its docstring has no ``:param:`` for."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    documented = set(_PARAM.findall(inspect.getdoc(obj) or ""))
    if inspect.isclass(obj):
        documented |= set(_PARAM.findall(inspect.getdoc(target) or ""))
    parameters = inspect.signature(target).parameters.values()
    named = [
        p.name for p in parameters if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return [name for name in named if name not in documented]
