"""B1 overhead: one 1024x1024 PNG through ``ImageGenToS3Operator.execute`` vs the floor.

The floor is the least any task could do for the same result: one bare httpx POST to the
generation endpoint, one GET of the returned URL and one boto3 ``put_object`` of the bytes, against
the same emulator and the same moto server.

Every run of either side uses new clients (a new operator, so new hooks, for ours; a new
``httpx.Client`` and a new boto3 session and client for the floor), as a task process does. The
figure (B1) builds those clients *before* the clock starts on both sides, so it compares the work
itself: everything ``execute`` does against POST + GET + put_object. B1c includes building the
clients on both sides; building a boto3 client costs 100-400 ms here and varies with the machine's
load, which dilutes and blurs that ratio, so it is context. B1 has the emulator answer at once, so
it isolates the provider's own work; B1r repeats it with 1 s of API latency, still shorter than a
real generation, to show what that work weighs next to the API. Runs alternate ours/floor; each ratio
is of the medians. One extra instrumented run of each side says where the time goes (client
set-up, each S3 call with its duration, the rest).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench._common import Figure, boto3_client, check, imagegen_settings, median, spread, task_context

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SIZE = "1024x1024"
TARGET = 1.15
REALISTIC_LATENCY = 1.0  # B1r: still far below a real generation (several seconds and more)


def _operator(bucket: str, **kwargs: Any) -> Any:
    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

    return ImageGenToS3Operator(task_id="b1_overhead", prompt=PROMPT, size=SIZE, s3_bucket=bucket, **kwargs)


def run_ours(bucket: str, *, prebuilt: bool, operator: Any = None) -> float:
    """Seconds for one ``execute`` of a new operator; with ``prebuilt`` its clients exist beforehand."""
    operator = operator or _operator(bucket)
    if prebuilt:
        operator.s3_client  # noqa: B018 - S3Hook → Airflow connection → boto3 session → client
        operator.hook.client  # noqa: B018 - the hook's pooled httpx.Client
    context = task_context("b1_overhead")
    started = time.perf_counter()
    result = operator.execute(context)
    elapsed = time.perf_counter() - started
    check(len(result) == 1 and result[0]["width"] == 1024, f"unexpected XCom {result}")
    return elapsed


class Floor:
    """POST + GET + put_object with nothing else, on new clients each run."""

    def __init__(self, imagegen_json: str, s3_info: dict[str, Any], bucket: str) -> None:
        self.url, self.headers = imagegen_settings(imagegen_json)
        self.s3_info, self.bucket = s3_info, bucket
        self.body = {
            "prompt": PROMPT,
            "n": 1,
            "size": SIZE,
            "quality": "medium",
            "background": "auto",
            "moderation": "auto",
            "output_format": "png",
        }

    def run(self, *, prebuilt: bool) -> float:
        """Seconds for one bare copy; with ``prebuilt`` the clients are built before the clock starts."""
        import httpx

        if prebuilt:
            http, s3 = httpx.Client(timeout=600), boto3_client(self.s3_info)
        started = time.perf_counter()
        if not prebuilt:
            http, s3 = httpx.Client(timeout=600), boto3_client(self.s3_info)
        with http:
            response = http.post(self.url, json=self.body, headers=self.headers)
            response.raise_for_status()
            image = http.get(response.json()["images"][0])
            image.raise_for_status()
            data = image.content
        s3.put_object(Bucket=self.bucket, Key=f"b1-floor/{uuid.uuid4().hex}.png", Body=data, ContentType="image/png")
        elapsed = time.perf_counter() - started
        check(data[:8] == b"\x89PNG\r\n\x1a\n", "the floor did not get a PNG")
        return elapsed


def breakdown(imagegen_json: str, s3_info: dict[str, Any], bucket: str) -> list[str]:
    """Where the time of one cold run of each side goes: client set-up, each S3 call, the rest."""
    import threading

    import httpx

    def timed_s3_calls(client: Any) -> list[tuple[str, float]]:
        calls: list[tuple[str, float]] = []
        local = threading.local()

        def before(model: Any, **_: Any) -> None:
            local.started = time.perf_counter()

        def after(model: Any, **_: Any) -> None:
            calls.append((model.name, time.perf_counter() - local.started))

        client.meta.events.register("before-call.s3", before)
        client.meta.events.register("after-call.s3", after)
        return calls

    operator = _operator(bucket)
    t0 = time.perf_counter()
    s3 = operator.s3_client  # S3Hook: Airflow connection → boto3 session → client
    t1 = time.perf_counter()
    operator.hook.client  # noqa: B018 - the pooled httpx.Client (a TLS context is built for it)
    t2 = time.perf_counter()
    calls = timed_s3_calls(s3)
    total = run_ours(bucket, prebuilt=True, operator=operator) + (t2 - t0)
    s3_total = sum(duration for _, duration in calls)
    rest = total - (t2 - t0) - s3_total

    f0 = time.perf_counter()
    floor_s3 = boto3_client(s3_info)
    f1 = time.perf_counter()
    http = httpx.Client(timeout=600)
    f2 = time.perf_counter()
    floor_calls = timed_s3_calls(floor_s3)
    url, headers = imagegen_settings(imagegen_json)
    body = {"prompt": PROMPT, "n": 1, "size": SIZE}
    data = http.get(http.post(url, json=body, headers=headers).json()["images"][0]).content
    f3 = time.perf_counter()
    floor_s3.put_object(Bucket=bucket, Key=f"b1-floor/{uuid.uuid4().hex}.png", Body=data)
    f4 = time.perf_counter()
    http.close()

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.0f} ms"

    per_call = ", ".join(f"{name} {ms(duration)}" for name, duration in calls)
    return [
        f"one cold run, ours {ms(total)} vs floor {ms(f4 - f0)}:",
        f"  S3 client creation: ours (S3Hook + Airflow connection) {ms(t1 - t0)}, floor (boto3) {ms(f1 - f0)}",
        f"  httpx.Client creation (TLS context): ours {ms(t2 - t1)}, floor {ms(f2 - f1)}",
        f"  S3 calls: ours {len(calls)} = {ms(s3_total)} ({per_call}); "
        f"floor {len(floor_calls)} = {ms(sum(d for _, d in floor_calls))}",
        f"  the rest (API POST + image GET, verification, thread pools): ours {ms(rest)}, floor {ms(f3 - f2)}",
    ]


def measure(emulator: Any, s3_info: dict[str, Any], bucket: str, runs: int = 9) -> list[Figure]:
    """B1 (clients built before the clock), B1c (client creation included), B1r (1 s API latency)."""
    imagegen_json = emulator.connection_json
    floor = Floor(imagegen_json, s3_info, bucket)
    for _ in range(2):  # warm-up: imports, the emulator's render cache, moto's first writes
        run_ours(bucket, prebuilt=False)
        floor.run(prebuilt=False)
    ours, base, ours_cold, base_cold = [], [], [], []
    for _ in range(runs):
        ours.append(run_ours(bucket, prebuilt=True))
        base.append(floor.run(prebuilt=True))
        ours_cold.append(run_ours(bucket, prebuilt=False))
        base_cold.append(floor.run(prebuilt=False))
    parts = breakdown(imagegen_json, s3_info, bucket)
    emulator.configure(latency=REALISTIC_LATENCY)
    try:
        ours_slow, base_slow = [], []
        for _ in range(max(3, runs // 2)):
            ours_slow.append(run_ours(bucket, prebuilt=True))
            base_slow.append(floor.run(prebuilt=True))
    finally:
        emulator.configure(latency=0.0)
    figures = []
    for key, title, o, f in (
        ("B1", "overhead: 1 PNG 1024x1024 (clients built beforehand)", ours, base),
        ("B1c", "overhead: 1 PNG 1024x1024, client creation included", ours_cold, base_cold),
        ("B1r", f"overhead: as B1 with {REALISTIC_LATENCY:g} s API latency", ours_slow, base_slow),
    ):
        ratio = median(o) / median(f)
        figures.append(
            Figure(
                key=key,
                title=title,
                unit="ms",
                ours=median(o) * 1000,
                baseline=median(f) * 1000,
                baseline_label="bare POST+GET+put_object",
                ratio=ratio,
                target=f"<= {TARGET:.2f}x",
                passed=ratio <= TARGET,
                notes=[
                    f"ours s {spread(o)}, floor s {spread(f)} over {runs} alternating runs",
                    f"added by ours: {(median(o) - median(f)) * 1000:.0f} ms (difference of the medians)",
                ],
                samples={"ours_s": o, "floor_s": f},
            )
        )
    figures[0].notes.extend(parts)
    return figures
