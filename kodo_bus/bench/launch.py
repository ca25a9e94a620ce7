"""`launch`: sequential launches of the no-op flow through the SDK; launch→final latency.

Each sample is what a user waits for: `await flow.launch({})` then `await execution.result()`
(the request to the node, the record and first events, the hand-over to a Ray actor, the final
event, and the SDK's ordered consumer reading it). Floors: a bare Ray task round trip and a bare
NATS request/reply, the two hops a launch cannot avoid. Then the same launches to a node in a
`kodo-bus run` process of its own, as deployed (issue 18 asks for both).
"""

from __future__ import annotations

import math
import time

from ..execution_ref import status_of
from ..flow_ref import Flow
from . import floors
from .common import ScenarioResult, Stopwatch, percentile
from .env import BenchEnv

PHASES = ("starting", "running", "final")
"""Events whose timestamps split a launch into phases (status events, and the final value).

Sequential launches find a free slot, so they start `starting` (never `pending`)."""

TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
"""Issue 18's targets (Celery 5.7 + Redis on the same machine: p50 1.9 ms, p99 4.1 ms)."""


async def run(env: BenchEnv, *, n: int = 500, warmup: int = 30) -> ScenarioResult:
    watch = Stopwatch()
    result = ScenarioResult(scenario="launch", params={"n": n, "warmup": warmup})
    await env.service()
    kb = await env.client()
    flow = await kb.flow("bench-noop", via=env.service_id)
    total, reply = await _sequential(flow, n, warmup)
    await _phases(result, flow, max(10, min(n, 100)))
    ray_floor = floors.p50_floor("Ray task", await floors.ray_task_round_trip(max(n, 100)))
    nc = await env.nats()
    nats_samples = await floors.nats_request_round_trip(
        nc, max(n, 500), f"kodo-bench.{env.run_id}.echo"
    )
    nats_floor = floors.p50_floor("NATS req/reply", nats_samples)
    ms = [s * 1000 for s in total]
    result.add("launch→final p50", percentile(ms, 50), "ms", floor=ray_floor, target=TARGET_P50_MS)
    result.add("launch→final p95", percentile(ms, 95), "ms", floor=ray_floor)
    result.add("launch→final p99", percentile(ms, 99), "ms", floor=ray_floor, target=TARGET_P99_MS)
    reply_ms = [s * 1000 for s in reply]
    result.add("launch→reply p50", percentile(reply_ms, 50), "ms", floor=nats_floor)
    result.add("launch→reply p99", percentile(reply_ms, 99), "ms", floor=nats_floor)
    async with env.own_node(kb, "bench-noop") as (apart, _):
        total, _ = await _sequential(apart, n, warmup)
    ms = [s * 1000 for s in total]
    for p in (50, 99):
        name = f"launch→final p{p}, node in its own process"
        result.add(name, percentile(ms, p), "ms", floor=ray_floor)
    result.seconds = watch()
    return result


async def _sequential(flow: Flow, n: int, warmup: int) -> tuple[list[float], list[float]]:
    """`n` launches one after the other (after `warmup`): seconds to the final, to the reply."""
    for _ in range(warmup):
        await (await flow.launch({})).result(timeout=60)
    total: list[float] = []
    reply: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        ex = await flow.launch({})
        t1 = time.perf_counter()
        await ex.result(timeout=60)
        t2 = time.perf_counter()
        reply.append(t1 - t0)
        total.append(t2 - t0)
    return total, reply


async def _phases(result: ScenarioResult, flow: Flow, n: int) -> None:
    """Where a launch's time goes: p50 of each phase, from the events' own timestamps.

    Wall-clock stamps from three processes (client, node, Ray worker) on one machine: good to a
    fraction of a millisecond, which is what a phase costs.
    """
    marks: dict[str, list[float]] = {p: [] for p in (*PHASES, "reply", "read")}
    for _ in range(n):
        t0 = time.time()
        ex = await flow.launch({})
        marks["reply"].append(time.time() - t0)
        seen: dict[str, float] = {}
        async for event in ex.events():
            key = status_of(event) or event.kind
            seen.setdefault(key, event.ts - t0)
        marks["read"].append(time.time() - t0)
        for p in PHASES:
            marks[p].append(seen.get(p, math.nan))
    p50 = {k: percentile(v, 50) * 1000 for k, v in marks.items()}
    steps = [("launch→starting", p50["starting"])]
    before = "starting"
    for p in PHASES[1:]:
        steps.append((f"{before}→{p}", p50[p] - p50[before]))
        before = p
    steps.append(("final→SDK reader", p50["read"] - p50["final"]))
    text = ", ".join(f"{name} {ms:.1f}" for name, ms in steps)
    result.notes.append(f"phases, p50 ms: {text} (reply at {p50['reply']:.1f})")
