"""B3 fan-out: ten images of one prompt vs one, with 300 ms emulated latency per image download.

Both sides run ``ImageGenToS3Operator.execute`` the same way (a new operator each run, its clients
built before the clock starts), only ``n`` differs; with the copies overlapped, ten cost little
more than one. The figure uses the operator's default ``upload_concurrency``; a second line shows
``upload_concurrency=10``. The emulator's gauge of downloads in flight confirms the overlap.
"""

from __future__ import annotations

import time
from typing import Any

from bench._common import Figure, check, median, spread, task_context
from bench._servers import ServerCPU, ServerProcess

PROMPT = "a field of sunflowers, ten variations"
DOWNLOAD_LATENCY = 0.3
TARGET = 1.5


def _run(bucket: str, n: int, **kwargs: Any) -> float:
    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

    operator = ImageGenToS3Operator(task_id="b3_fanout", prompt=PROMPT, n=n, s3_bucket=bucket, **kwargs)
    # clients built before the clock, as in B1: building a boto3 client takes 100-400 ms here and
    # varies with the load, which would only blur the comparison of the copies
    operator.s3_client  # noqa: B018
    operator.hook.client  # noqa: B018
    started = time.perf_counter()
    result = operator.execute(task_context("b3_fanout"))
    elapsed = time.perf_counter() - started
    check([image["index"] for image in result] == list(range(n)), f"unexpected XCom {result}")
    return elapsed


def measure(emulator: ServerProcess, s3: ServerProcess, bucket: str, runs: int = 5) -> list[Figure]:
    """B3 with the default upload concurrency, and B3c with ``upload_concurrency=10``."""
    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

    default_concurrency = ImageGenToS3Operator(task_id="probe", prompt="p", s3_bucket=bucket).upload_concurrency
    emulator.configure(download_latency=0.0)
    _run(bucket, 10)  # warm-up: render the ten images once
    emulator.configure(download_latency=DOWNLOAD_LATENCY)
    figures = []
    for key, label, kwargs in (
        ("B3", f"default upload_concurrency={default_concurrency}", {}),
        ("B3c", "upload_concurrency=10", {"upload_concurrency": 10}),
    ):
        one, ten, in_flight = [], [], []
        cpu_one, cpu_ten = ServerCPU(emulator, s3), ServerCPU(emulator, s3)
        _run(bucket, 1, **kwargs)
        for _ in range(runs):
            with cpu_one:
                one.append(_run(bucket, 1, **kwargs))
            emulator.reset()
            with cpu_ten:
                ten.append(_run(bucket, 10, **kwargs))
            in_flight.append(emulator.stats()["max_in_flight_downloads"])
        ratio = median(ten) / median(one)
        figures.append(
            Figure(
                key=key,
                title=f"fan-out: n=10 vs n=1, {DOWNLOAD_LATENCY * 1000:.0f} ms per download, {label}",
                unit="ms",
                ours=median(ten) * 1000,
                baseline=median(one) * 1000,
                baseline_label="n=1",
                ratio=ratio,
                target=f"<= {TARGET}x",
                passed=ratio <= TARGET,
                notes=[
                    f"n=10 s {spread(ten)}, n=1 s {spread(one)} over {runs} alternating runs",
                    f"most downloads in flight at once (emulator): {sorted(set(in_flight))}",
                    f"server CPU in the last run: n=10 {cpu_ten.summary()}; n=1 {cpu_one.summary()}",
                ],
                samples={"n10_s": ten, "n1_s": one, "max_in_flight_downloads": in_flight},
            )
        )
    emulator.configure(download_latency=0.0)
    return figures
