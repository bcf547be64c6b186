"""B6 DAG-parse cost: importing the operator module once ``airflow.sdk`` is already imported.

Every DAG file that uses the operator pays this on every parse. Each import is timed in a fresh
interpreter (a module is imported only once per process), alternating ours with the baseline,
the amazon provider's ``HttpToS3Operator`` module (the nearest stock transfer operator).
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
    for _ in range(runs):
        for module, sink in ((OURS, ours), (BASELINE, baseline)):
            answer = run_child("bench.parse_cost", {"module": module})
            sink.append(answer["import_ms"])
            sdk.append(answer["sdk_ms"])
            modules[module] = answer["new_modules"]
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
            f"ours ms {spread(ours)}, baseline ms {spread(baseline)} over {runs} fresh processes each",
        ],
        samples={"ours_ms": ours, "baseline_ms": baseline, "airflow_sdk_ms": sdk},
    )


def _child(args: dict[str, Any]) -> None:
    import importlib
    import time

    started = time.perf_counter()
    import airflow.sdk  # noqa: F401

    sdk_done = time.perf_counter()
    before = len(sys.modules)
    importlib.import_module(args["module"])
    done = time.perf_counter()
    child_print(
        {
            "sdk_ms": (sdk_done - started) * 1000,
            "import_ms": (done - sdk_done) * 1000,
            "new_modules": len(sys.modules) - before,
        }
    )


if __name__ == "__main__":
    import json

    _child(json.loads(sys.argv[1]))
