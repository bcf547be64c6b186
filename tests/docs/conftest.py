"""The docs' own code (``docs/_ext/code_tables.py``) importable by the tests; no Sphinx needed."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for path in (REPO / "docs" / "_ext", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
