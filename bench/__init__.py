"""``make bench``: the provider's performance figures, each measured beside its baseline in one run.

Run with ``python -m bench`` from the repository root; see ``bench/README.md`` for what each
figure means and how to read the table. Results go to ``bench/results/latest.json``.
"""

from __future__ import annotations
