"""B6 DAG-parse cost: importing the operator module once ``airflow.sdk`` is already imported.

Every DAG file that uses the operator pays this on every parse. Each sample is a fresh interpreter
(a module is imported only once per process) that imports ``airflow.sdk``, then times the import of
ours and of the baseline, the amazon provider's ``HttpToS3Operator`` module (the nearest stock
transfer operator), in alternating order from one process to the next. The two share nothing
beyond ``airflow.sdk`` (ours adds four modules), so one does not speed up the other.
"""

from __future__ import annotations

import sys
from typing import Any

from bench._common import Figure, child_print, median, run_child, spread

OURS = "airflow_provider_imagegen.operators.imagegen"
BASELINE = "airflow.providers.amazon.aws.transfers.http_to_s3"
TARGET_MS = 50.0


def measure(runs: int = 5) -> Figure:
    """Median extra import time of our operator module vs the baseline module, fresh process each."""
    ours: list[float] = []
    baseline: list[float] = []
    sdk: list[float] = []
    modules: dict[str, int] = {}
    for run in range(runs):
        order = [OURS, BASELINE] if run % 2 == 0 else [BASELINE, OURS]
        answer = run_child("bench.parse_cost", {"modules": order})
        ours.append(answer["import_ms"][OURS])
        baseline.append(answer["import_ms"][BASELINE])
        sdk.append(answer["sdk_ms"])
        modules = answer["new_modules"]
    ours_ms, base_ms = median(ours), median(baseline)
    return Figure(
        key="B6",
        title="DAG-parse cost (import after airflow.sdk)",
        unit="ms",
        ours=ours_ms,
        baseline=base_ms,
        baseline_label="HttpToS3Operator module",
        ratio=ours_ms / base_ms if base_ms else float("inf"),
        target=f"<= {TARGET_MS:g} ms extra",
        passed=ours_ms <= TARGET_MS,
        notes=[
            f"import airflow.sdk itself: median {median(sdk):.0f} ms",
            f"new modules loaded: ours {modules.get(OURS)}, baseline {modules.get(BASELINE)}",
            f"ours ms {spread(ours)}, baseline ms {spread(baseline)} over {runs} fresh processes",
        ],
        samples={"ours_ms": ours, "baseline_ms": baseline, "airflow_sdk_ms": sdk},
    )


def _child(args: dict[str, Any]) -> None:
    import importlib
    import time

    started = time.perf_counter()
    import airflow.sdk  # noqa: F401

    sdk_ms = (time.perf_counter() - started) * 1000
    import_ms: dict[str, float] = {}
    new_modules: dict[str, int] = {}
    for module in args["modules"]:
        before, started = len(sys.modules), time.perf_counter()
        importlib.import_module(module)
        import_ms[module] = (time.perf_counter() - started) * 1000
        new_modules[module] = len(sys.modules) - before
    child_print({"sdk_ms": sdk_ms, "import_ms": import_ms, "new_modules": new_modules})


if __name__ == "__main__":
    import json

    _child(json.loads(sys.argv[1]))
