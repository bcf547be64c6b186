"""Sphinx extension of these docs: the tables that restate code are made from it at build time.

Directives (for the MyST pages; each renders a Markdown table from :mod:`code_tables`):

* ``imagegen-version-table``: ``version_compat.VERSION_DIFFERENCES``;
* ``imagegen-request-values``: the request parameters, their accepted values and defaults (``models``);
* ``imagegen-connection-fields``: the connection form (provider info);
* ``imagegen-metrics``: ``metrics.METRICS``;
* ``imagegen-exceptions``: the error classes of ``exceptions``;
* ``imagegen-fault-matrix``: the rows of ``tests/reliability/test_fault_matrix.py``; its content is
  one ``row id | what the user sees`` line per row, and a row without a line (or a line without a
  row) fails the build.

And one check: a documented class or function of the provider whose docstring lists its parameters
(``:param x:``) but not all of its named ones is a warning (an error under ``make docs``'s ``-W``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import code_tables
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

if TYPE_CHECKING:
    from collections.abc import Callable

    from docutils import nodes
    from sphinx.application import Sphinx

logger = logging.getLogger(__name__)
PACKAGE = "airflow_provider_imagegen"


class _TableDirective(SphinxDirective):
    """A table made by a function of :mod:`code_tables`, parsed as the page's own Markdown."""

    make: ClassVar[Callable[[], str]]

    def table(self) -> str:
        return type(self).make()

    def run(self) -> list[nodes.Node]:
        try:
            text = self.table()
        except Exception as error:
            raise self.error(f"{self.name}: {error}") from error
        return self.parse_text_to_nodes(text)


def _directive(make: Callable[[], str]) -> type[_TableDirective]:
    return type(f"Directive_{make.__name__}", (_TableDirective,), {"make": staticmethod(make)})


class FaultMatrixDirective(_TableDirective):
    """The fault matrix; its content gives the note of every row."""

    has_content = True

    def table(self) -> str:
        return code_tables.fault_matrix_table(code_tables.parse_fault_notes(list(self.content)))


def check_parameters(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Warn about a provider class or function whose docstring leaves a named parameter out."""
    if what not in ("class", "function") or not getattr(obj, "__module__", "").startswith(PACKAGE):
        return
    if not any(":param" in line for line in lines):  # documented as fields or prose, not as parameters
        return
    try:
        missing = code_tables.undocumented_parameters(obj)
    except (TypeError, ValueError):  # no signature to read
        return
    if missing:
        logger.warning(
            "%s: the docstring has no :param: for %s", name, ", ".join(missing), type="imagegen", subtype="param"
        )


def setup(app: Sphinx) -> dict[str, Any]:
    for name, make in (
        ("imagegen-version-table", code_tables.version_table),
        ("imagegen-request-values", code_tables.request_values_table),
        ("imagegen-connection-fields", code_tables.connection_fields_table),
        ("imagegen-metrics", code_tables.metrics_table),
        ("imagegen-exceptions", code_tables.exceptions_table),
    ):
        app.add_directive(name, _directive(make))
    app.add_directive("imagegen-fault-matrix", FaultMatrixDirective)
    app.connect("autodoc-process-docstring", check_parameters)
    if not callable(getattr(SphinxDirective, "parse_text_to_nodes", None)):
        raise ExtensionError("imagegen_docs needs Sphinx >= 7.4 (SphinxDirective.parse_text_to_nodes)")
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
