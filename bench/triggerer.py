"""B5 triggerer: 500 concurrent ``ImageGenTrigger`` runs in one event loop against 2 s API latency.

As in a triggerer process, every trigger is its own task in one asyncio loop, each reading its
connection with the async API and sending its request. The target is that all 500 are done
within twice the API latency. Runs in a fresh process (so its memory is its own) with the
emulator in another; memory per trigger is the peak RSS growth over the run divided by 500.
For context the same process also times the floor: 500 bare POSTs, each from its own
``httpx.AsyncClient`` (as each trigger has its own), with no Airflow in the way.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bench._common import Figure, PeakRSS, check, child_print, imagegen_settings, median, run_child, spread
from bench._servers import ServerCPU, ServerProcess

TRIGGERS = 500
LATENCY = 2.0
TARGET = 2.0
_MB = 1024 * 1024


def measure(emulator: ServerProcess, env: dict[str, str], runs: int = 3) -> Figure:
    """Median time for all triggers to fire, as a multiple of the API latency."""
    emulator.configure(latency=LATENCY)
    answers, in_flight = [], []
    cpu = ServerCPU(emulator)
    for _ in range(runs):
        emulator.reset()
        with cpu:
            answers.append(run_child("bench.triggerer", {"imagegen_json": emulator.connection_json}, env=env))
        in_flight.append(emulator.stats()["max_in_flight_generations"])
    emulator.configure(latency=0.0)
    ours = [a["elapsed_s"] for a in answers]
    floor = [a["floor_s"] for a in answers]
    per_trigger_kb = [a["peak_growth_bytes"] / TRIGGERS / 1024 for a in answers]
    stalls = [a["max_tick_gap_s"] for a in answers]
    ratio = median(ours) / LATENCY
    return Figure(
        key="B5",
        title=f"triggerer: {TRIGGERS} triggers in one loop, {LATENCY:g} s latency",
        unit="s",
        ours=median(ours),
        baseline=LATENCY,
        baseline_label="API latency",
        ratio=ratio,
        target=f"<= {TARGET:g}x latency",
        passed=ratio <= TARGET,
        notes=[
            f"memory per trigger: median {median(per_trigger_kb):.0f} KiB peak RSS growth "
            f"({median([a['peak_growth_bytes'] / _MB for a in answers]):.1f} MB for {TRIGGERS})",
            f"ours s {spread(ours)} over {runs} fresh processes; most generations in flight: {sorted(set(in_flight))}",
            f"floor (500 bare POSTs, an AsyncClient each, no Airflow): median {median(floor):.2f} s",
            f"trigger CPU in the loop: median {median([a['cpu_s'] for a in answers]):.2f} s; "
            f"emulator during the last run (ours and floor): {cpu.summary()}",
            f"longest event-loop stall seen by a 10 ms ticker: {max(stalls) * 1000:.0f} ms; "
            f"of which Python's GC: longest pause {max(a['gc_pause_max_s'] for a in answers) * 1000:.0f} ms, "
            f"total {median([a['gc_pause_total_s'] for a in answers]) * 1000:.0f} ms per run (median)",
        ],
        samples={"ours_s": ours, "floor_s": floor, "kib_per_trigger": per_trigger_kb, "in_flight": in_flight},
    )


# -- the child process ----------------------------------------------------------------------------


async def _main(args: dict[str, Any]) -> dict[str, Any]:
    import asyncio
    import itertools
    import time

    import httpx

    from airflow_provider_imagegen.hooks._client import shared_ssl_context
    from airflow_provider_imagegen.models import ImageGenerationRequest
    from airflow_provider_imagegen.triggers.imagegen import ImageGenTrigger

    body = ImageGenerationRequest(prompt="one prompt for every trigger", quality="low").to_json()

    async def fire(trigger: ImageGenTrigger) -> Any:
        async for event in trigger.run():
            return event.payload
        raise RuntimeError("the trigger fired no event")

    # warm-up: imports, the TLS context, the connection lookup path, the emulator's render cache
    warm = await fire(ImageGenTrigger("imagegen_default", {0: body}))
    check(warm["results"]["0"]["status"] == "success", f"warm-up failed: {warm}")

    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    import gc

    pauses: list[float] = []
    gc_started = [0.0]

    def gc_timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - gc_started[0])

    triggers = [ImageGenTrigger("imagegen_default", {0: body}) for _ in range(TRIGGERS)]
    gc.callbacks.append(gc_timer)
    ticking = asyncio.create_task(ticker())
    with PeakRSS() as peak:
        started, cpu_started = time.perf_counter(), time.process_time()
        payloads = await asyncio.gather(*(fire(trigger) for trigger in triggers))
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    stop.set()
    await ticking
    gc.callbacks.remove(gc_timer)
    failed = [p for p in payloads if p["results"]["0"]["status"] != "success"]
    check(not failed, f"{len(failed)} triggers failed, e.g. {failed[:1]}")
    gaps = [b - a for a, b in itertools.pairwise(ticks)]

    url, headers = imagegen_settings(args["imagegen_json"])
    context = await shared_ssl_context()

    async def bare() -> int:
        async with httpx.AsyncClient(timeout=600, verify=context) as client:
            return (await client.post(url, json=body, headers=headers)).status_code

    started = time.perf_counter()
    statuses = await asyncio.gather(*(bare() for _ in range(TRIGGERS)))
    floor = time.perf_counter() - started
    check(all(status == 200 for status in statuses), "the floor's POSTs failed")
    return {
        "cpu_s": cpu_s,
        "elapsed_s": elapsed,
        "floor_s": floor,
        "peak_growth_bytes": peak.growth,
        "max_tick_gap_s": max(gaps) if gaps else 0.0,
        "gc_pause_total_s": sum(pauses),
        "gc_pause_max_s": max(pauses, default=0.0),
    }


if __name__ == "__main__":
    import asyncio

    child_print(asyncio.run(_main(json.loads(sys.argv[1]))))
