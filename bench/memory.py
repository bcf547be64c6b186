"""B2 memory: peak RSS growth while copying one 3840x2160 PNG of at least 20 MB into S3.

Ours is the operator's streaming copy (``ImageGenToS3Operator.execute``: chunks flow from the
download through the verifying reader into a multipart upload). The baseline is
``HttpToS3Operator``'s way, run for real: ``HttpHook.run`` reads the whole body
(``response.content``) and ``S3Hook.load_bytes`` uploads it.

Each measurement runs in a fresh process (so peaks never mix) that first imports everything and
copies a small warm-up image the same way, then measures the peak RSS over the big copy: exactly,
with Linux's ``VmHWM`` reset through ``/proc/self/clear_refs``, else by sampling every millisecond.
The emulator (which renders and holds the image) runs in its own process, so its memory is not
counted.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any
from urllib.parse import urlsplit

from bench._common import Figure, PeakRSS, check, child_print, median, run_child, spread, task_context

PROMPT = "4K incompressible noise for the memory benchmark"
WARMUP_PROMPT = "a small warm-up image"
SIZE = "3840x2160"
MIN_BYTES = 20 * 1024 * 1024
MAX_EXTRA_MB = 16.0
MAX_RATIO = 0.3
_MB = 1024 * 1024


def measure(imagegen_json: str, env: dict[str, str], bucket: str, runs: int = 3) -> Figure:
    """Median peak-RSS growth of ours vs the buffering copy, each in fresh processes."""
    args = {"imagegen_json": imagegen_json, "bucket": bucket}
    ours: list[float] = []
    buffering: list[float] = []
    sizes: set[int] = set()
    method = ""
    for _ in range(runs):
        for mode, sink in (("ours", ours), ("buffering", buffering)):
            answer = run_child("bench.memory", {**args, "mode": mode}, env=env)
            sink.append(answer["growth_bytes"] / _MB)
            sizes.add(answer["size_bytes"])
            method = answer["method"]
    check(all(size >= MIN_BYTES for size in sizes), f"the image is smaller than 20 MB: {sizes}")
    ours_mb, base_mb = median(ours), median(buffering)
    ratio = ours_mb / base_mb if base_mb else float("inf")
    return Figure(
        key="B2",
        title=f"memory: 1 PNG {SIZE}, {max(sizes) / _MB:.1f} MB",
        unit="MB",
        ours=ours_mb,
        baseline=base_mb,
        baseline_label="HttpToS3Operator (body in memory + load_bytes)",
        ratio=ratio,
        target=f"<= {MAX_EXTRA_MB:g} MB and <= {MAX_RATIO}x",
        passed=ours_mb <= MAX_EXTRA_MB and ratio <= MAX_RATIO,
        notes=[
            f"peak RSS growth over the copy ({method}); ours MB {spread(ours)}, buffering MB {spread(buffering)}",
            f"image {sorted(sizes)} bytes; {runs} fresh processes per side",
        ],
        samples={"ours_mb": ours, "buffering_mb": buffering},
    )


# -- the child process ----------------------------------------------------------------------------


def _child(args: dict[str, Any]) -> None:
    from airflow_provider_imagegen.hooks.imagegen import ImageGenHook
    from airflow_provider_imagegen.models import ImageGenerationRequest
    from airflow_provider_imagegen.operators.imagegen import ImageGenToS3Operator

    bucket, mode = args["bucket"], args["mode"]
    base_url = json.loads(args["imagegen_json"])["host"].rstrip("/")
    origin = urlsplit(base_url)
    os.environ["AIRFLOW_CONN_BENCH_HTTP"] = json.dumps(
        {"conn_type": "http", "host": origin.hostname, "port": origin.port, "schema": origin.scheme}
    )

    def ours(prompt: str, size: str) -> int:
        operator = ImageGenToS3Operator(task_id="b2_memory", prompt=prompt, size=size, s3_bucket=bucket)
        # build the clients before measuring: we measure the copy, not client set-up
        operator.hook.client  # noqa: B018
        operator.s3_client  # noqa: B018
        with PeakRSS() as peak:
            result = operator.execute(task_context("b2_memory"))
        check(result[0]["width"] == int(size.split("x")[0]), f"unexpected XCom {result}")
        results.append((peak, result[0]["size_bytes"]))
        return 0

    def buffering(prompt: str, size: str) -> int:
        from airflow.providers.amazon.aws.transfers.http_to_s3 import HttpToS3Operator

        hook = ImageGenHook()
        url = hook.send(ImageGenerationRequest(prompt=prompt, size=size)).image_urls[0]
        key = f"b2-buffering/{os.urandom(6).hex()}.png"
        operator = HttpToS3Operator(
            task_id="b2_buffering",
            http_conn_id="bench_http",
            endpoint=urlsplit(url).path,
            method="GET",
            s3_bucket=bucket,
            s3_key=key,
            replace=True,
        )
        operator.http_hook.get_conn()
        operator.s3_hook.get_conn()
        with PeakRSS() as peak:
            operator.execute({})  # type: ignore[arg-type]
        size_bytes = operator.s3_hook.get_conn().head_object(Bucket=bucket, Key=key)["ContentLength"]
        results.append((peak, size_bytes))
        return 0

    results: list[tuple[PeakRSS, int]] = []
    copy = ours if mode == "ours" else buffering
    copy(WARMUP_PROMPT, "1024x1024")  # imports, thread pools, connection pools
    copy(PROMPT, SIZE)
    peak, size_bytes = results[-1]
    child_print({"growth_bytes": peak.growth, "size_bytes": size_bytes, "method": peak.method})


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
