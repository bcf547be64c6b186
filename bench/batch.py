"""B4 batch: 64 prompts in one task, 1 s API latency, ``max_concurrency=16``, vs the ideal 4 s.

Ideal: 64 / 16 = 4 waves of 1 s. Ours is ``ImageGenToS3Operator(prompts=[...]).execute`` (each
prompt generated, copied and committed with its manifest). For context, the same run also measures
the floor: 64 bare POST + GET + put_object on 16 threads against the same servers, which shows how
much of any excess is the emulator and moto rather than the operator.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench._common import (
    Figure,
    PoolOverflowCounter,
    boto3_client,
    check,
    imagegen_settings,
    median,
    spread,
    task_context,
)
from bench._servers import ServerCPU, ServerProcess

PROMPTS = [f"catalogue item {i:02d}: a ceramic mug, studio light" for i in range(64)]
LATENCY = 1.0
CONCURRENCY = 16
IDEAL = len(PROMPTS) / CONCURRENCY * LATENCY
TARGET = 1.25


def _run(bucket: str) -> float:
    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

    operator = ImageGenToS3Operator(task_id="b4_batch", prompts=PROMPTS, s3_bucket=bucket, max_concurrency=CONCURRENCY)
    started = time.perf_counter()
    result = operator.execute(task_context("b4_batch"))
    elapsed = time.perf_counter() - started
    check([image["prompt_index"] for image in result] == list(range(len(PROMPTS))), "results out of order")
    return elapsed


def _floor(imagegen_json: str, s3_info: dict[str, Any], bucket: str) -> float:
    import httpx

    url, headers = imagegen_settings(imagegen_json)
    s3 = boto3_client(s3_info)

    def one(prompt: str) -> None:
        response = http.post(url, json={"prompt": prompt, "n": 1, "size": "1024x1024"}, headers=headers)
        response.raise_for_status()
        data = http.get(response.json()["images"][0]).content
        s3.put_object(Bucket=bucket, Key=f"b4-floor/{uuid.uuid4().hex}.png", Body=data)

    started = time.perf_counter()
    with (
        httpx.Client(timeout=600, limits=httpx.Limits(max_connections=CONCURRENCY)) as http,
        ThreadPoolExecutor(CONCURRENCY) as pool,
    ):
        list(pool.map(one, PROMPTS))
    return time.perf_counter() - started


def measure(emulator: ServerProcess, s3: ServerProcess, bucket: str, runs: int = 3) -> Figure:
    """Median wall time of the 64-prompt task vs the ideal, with the measured floor beside it."""
    emulator.configure(latency=0.0)
    _run(bucket)  # warm-up: render the 64 images once
    emulator.configure(latency=LATENCY)
    ours, floor, in_flight = [], [], []
    own_ours, own_floor = [], []  # CPU of this process (all its threads)
    cpu_ours, cpu_floor = ServerCPU(emulator, s3), ServerCPU(emulator, s3)
    overflows = []
    for _ in range(runs):
        emulator.reset()
        with cpu_ours, PoolOverflowCounter() as overflow:
            started = time.process_time()
            ours.append(_run(bucket))
            own_ours.append(time.process_time() - started)
        overflows.append(overflow.count)
        in_flight.append(emulator.stats()["max_in_flight_generations"])
        with cpu_floor:
            started = time.process_time()
            floor.append(_floor(emulator.connection_json, s3.info, bucket))
            own_floor.append(time.process_time() - started)
    emulator.configure(latency=0.0)
    ratio = median(ours) / IDEAL
    return Figure(
        key="B4",
        title=f"batch: {len(PROMPTS)} prompts, {LATENCY:g} s latency, max_concurrency={CONCURRENCY}",
        unit="s",
        ours=median(ours),
        baseline=IDEAL,
        baseline_label="ideal 64/16 x 1 s",
        ratio=ratio,
        target=f"<= {TARGET}x",
        passed=ratio <= TARGET,
        notes=[
            f"ours s {spread(ours)} over {runs} runs; most generations in flight (emulator): {sorted(set(in_flight))}",
            f"measured floor (bare POST+GET+put_object, 16 threads): median {median(floor):.2f} s "
            f"= {median(floor) / IDEAL:.2f}x ideal",
            f"CPU of the task's own process: ours {median(own_ours):.1f} s, floor {median(own_floor):.1f} s; "
            f"servers in the last run: ours {cpu_ours.summary()}; floor {cpu_floor.summary()}",
            f"boto3 'connection pool is full, discarding connection' warnings per run of ours: {overflows}",
        ],
        samples={"ours_s": ours, "floor_s": floor, "max_in_flight_generations": in_flight},
    )
