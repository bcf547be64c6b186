"""``python -m bench``: run every benchmark against local servers, print the table, write the JSON.

Options: ``--only B1,B5`` runs a subset; ``--quick`` runs fewer repetitions (for a smoke test;
the figures are then noisier). Exits 0 when every benchmark ran, whatever the verdicts; 1 if a
benchmark crashed (its traceback is printed and recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from bench._common import REPO_ROOT, RESULTS_DIR, Figure, boto3_client, connection_env, isolate_airflow

if TYPE_CHECKING:
    from collections.abc import Callable

RESULTS = RESULTS_DIR / "latest.json"
ALL = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:.1f} {unit}"


def render_table(figures: list[Figure], errors: dict[str, str]) -> str:
    """The table: figure, what, ours, baseline, ratio, target, PASS/FAIL; then each figure's notes."""
    header = ("fig", "what", "ours", "baseline", "ratio", "target", "result")
    rows = [
        (
            f.key,
            f.title,
            _fmt(f.ours, f.unit),
            _fmt(f.baseline, f.unit),
            f"{f.ratio:.2f}x",
            f.target,
            "PASS" if f.passed else "FAIL",
        )
        for f in figures
    ]
    for key, message in errors.items():
        rows.append((key, "crashed: " + message.splitlines()[-1][:60], "-", "-", "-", "-", "ERROR"))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [
        "  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)),
        line,
        *("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows),
        "",
    ]
    for f in figures:
        out.append(f"{f.key} baseline: {f.baseline_label}")
        out.extend(f"    {note}" for note in f.notes)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; print and save the results."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated figures, e.g. B1,B5")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (noisier)")
    options = parser.parse_args(argv)
    selected = [key.strip().upper() for key in options.only.split(",") if key.strip()]
    unknown = sorted(set(selected) - set(ALL))
    if unknown:
        parser.error(f"unknown figures {unknown}; known: {list(ALL)}")
    quick = options.quick

    isolate_airflow()
    os.chdir(REPO_ROOT)
    started = time.perf_counter()
    figures: list[Figure] = []
    errors: dict[str, str] = {}

    from bench._servers import ServerProcess

    print("starting the emulator and moto in their own processes...", flush=True)
    with ServerProcess("s3") as s3, ServerProcess("emulator") as emulator:
        s3_info = s3.info
        env = connection_env(emulator.connection_json, s3_info)
        os.environ.update(env)
        bucket = f"imagegen-bench-{uuid.uuid4().hex[:8]}"
        boto3_client(s3_info).create_bucket(Bucket=bucket)

        def run(key: str, work: Callable[[], Figure | list[Figure]]) -> None:
            if key not in selected:
                return
            print(f"{key}...", flush=True)
            t0 = time.perf_counter()
            try:
                result = work()
            except Exception:
                errors[key] = traceback.format_exc()
                print(errors[key], file=sys.stderr, flush=True)
                return
            new = result if isinstance(result, list) else [result]
            figures.extend(new)
            for figure in new:
                print(
                    f"  {figure.key}: ours {_fmt(figure.ours, figure.unit)}, baseline "
                    f"{_fmt(figure.baseline, figure.unit)}, {figure.ratio:.2f}x "
                    f"({'PASS' if figure.passed else 'FAIL'}; {time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )

        from bench import batch, deployment, fanout, memory, overhead, parse_cost, triggerer

        run("B1", lambda: overhead.measure(emulator, s3_info, bucket, runs=5 if quick else 9))
        run("B3", lambda: fanout.measure(emulator, s3, bucket, runs=2 if quick else 5))
        run("B4", lambda: batch.measure(emulator, s3, bucket, runs=1 if quick else 3))
        run("B5", lambda: triggerer.measure(emulator, env, runs=1 if quick else 3))

        def b2() -> Figure:
            emulator.configure(noise=True)
            try:
                return memory.measure(emulator.connection_json, env, bucket, runs=1 if quick else 2)
            finally:
                emulator.configure(noise=False)

        run("B2", b2)
        run("B6", lambda: parse_cost.measure(runs=2 if quick else 3))
        run("B7", lambda: deployment.measure(emulator, s3, bucket, env))

    order = {key: i for i, key in enumerate(ALL)}
    figures.sort(key=lambda f: (order.get(f.key[:2], 99), f.key))
    duration = time.perf_counter() - started
    table = render_table(figures, errors)
    print()
    print(table)
    print(f"\n{len(figures)} figures in {duration:.0f} s; results in {RESULTS.relative_to(REPO_ROOT)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "quick": quick,
        "duration_s": round(duration, 1),
        "figures": [f.to_dict() for f in figures],
        "errors": errors,
        "table": table,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
