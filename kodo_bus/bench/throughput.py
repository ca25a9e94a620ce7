"""`throughput`: N no-op executions launched at once; executions per second until all are final.

Launches go through the SDK concurrently; endings are counted from core subscriptions to the
`final` and `error` events of this launcher — every execution ends with exactly one of them, so
that is one push per execution and no consumer per execution: the reader must not become what
is measured. Floor: bare no-op Ray tasks per second.

Also reported: CPU time per execution of each process taking part, over the timed run — this
process (the SDK launching, the node accepting and handing over), the Ray processes it started
(the actors running the flows, and Ray's own) and the embedded nats-server. On two cores they
are what bounds the rate: their sum per execution is what a no-op execution costs.

The same run is then made with the node in a `kodo-bus run` process of its own (its actors on
the same Ray), as deployed — the first figures have the SDK and the node share this process
(issue 18 asks for both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import psutil
from nats.aio.msg import Msg

from .. import subjects
from ..client import Client
from ..flow_ref import Flow
from . import floors
from .common import Floor, ScenarioResult, Stopwatch, cpu_seconds
from .env import BenchEnv, BenchError

TARGET_PER_S = 1000.0
TARGET_RAY_RATIO = 0.8
"""Issue 18: executions/s at least this share of bare Ray tasks/s measured in the same run."""


async def run(env: BenchEnv, *, n: int = 2000, warmup: int = 50) -> ScenarioResult:
    watch = Stopwatch()
    result = ScenarioResult(
        scenario="throughput",
        params={"n": n, "max_running": env.settings.max_running},
    )
    await env.service()
    kb = await env.client()
    flow = await kb.flow("bench-noop", via=env.service_id)
    elapsed, accepted, cpu_used, failed = await _measure(
        kb, flow, n, warmup, lambda: _processes(env)
    )
    ray_floor = Floor(name="bare Ray tasks", value=await floors.ray_tasks_per_second(n), unit="/s")
    _add_figures(
        result, n=n, elapsed=elapsed, accepted=accepted, ray_floor=ray_floor, cpu_used=cpu_used
    )
    if failed:
        result.notes.append(f"{failed} of {n} executions did not finish")
    await _separate(env, kb, result, n=n, warmup=warmup, ray_floor=ray_floor)
    result.seconds = watch()
    return result


async def _separate(
    env: BenchEnv, kb: Client, result: ScenarioResult, *, n: int, warmup: int, ray_floor: Floor
) -> None:
    """The same run with the node in a process of its own (`kodo-bus run`, its actors on this
    run's Ray), as a deployment has it: the figures above share one process and one event loop
    between the SDK and the node, which saves a NATS hop's worth of work but makes them compete
    for one core."""
    async with env.own_node(kb, "bench-noop") as (flow, node):

        def parts() -> dict[str, list[psutil.Process]]:
            found = _processes(env)
            found["SDK (this process)"] = found.pop("SDK + node (this process)")
            found["node (its own process)"] = [psutil.Process(node.pid)]
            return found

        elapsed, _, cpu_used, failed = await _measure(kb, flow, n, warmup, parts)
    name = "executions/s (all final), node in its own process"
    result.add(name, n / elapsed, "/s", better="higher", floor=ray_floor, target=TARGET_PER_S)
    result.add(
        f"{name} / bare Ray tasks/s",
        n / elapsed / ray_floor.value,
        "x",
        better="higher",
        target=TARGET_RAY_RATIO,
    )
    for part, seconds in cpu_used.items():
        result.add(f"CPU per execution, node in its own process: {part}", seconds * 1000 / n, "ms")
    total = sum(cpu_used.values()) * 1000 / n
    result.add("CPU per execution, node in its own process, all of them", total, "ms")
    if failed:
        result.notes.append(f"node in its own process: {failed} of {n} did not finish")


async def _measure(
    kb: Client,
    flow: Flow,
    n: int,
    warmup: int,
    processes: Callable[[], dict[str, list[psutil.Process]]],
) -> tuple[float, float, dict[str, float], int]:
    """Launch `n` at once (after `warmup`): seconds until all ended, seconds until all were
    accepted, CPU seconds of each part, how many did not finish. The parts are listed after
    the warm-up: a node starts its actors (Ray worker processes) at its first launch."""
    warm = await asyncio.gather(*(flow.launch({}) for _ in range(warmup)))
    await asyncio.gather(*(ex.result(timeout=60) for ex in warm))

    ended: dict[str, str] = {}
    mine: set[str] = set()
    counted = 0
    all_final: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def count(k: int) -> None:
        nonlocal counted
        counted += k
        if counted == n and not all_final.done():
            all_final.set_result(None)

    async def on_end(msg: Msg) -> None:
        # Plain JSON, not the Event model (the executions' own tests check the model).
        event = json.loads(msg.data)
        execution = event["execution"]
        if execution not in ended:
            ended[execution] = event["kind"]
            if execution in mine:
                count(1)

    subs = [
        await kb.nc.subscribe(
            subjects.events(kb.user, "*", kind),
            cb=on_end,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        for kind in ("final", "error")
    ]
    await kb.nc.flush()
    parts = processes()
    cpu_before = _cpu(parts)
    try:
        watch_run = Stopwatch()
        launched = await asyncio.gather(*(flow.launch({}) for _ in range(n)))
        accepted = watch_run()
        mine.update(ex.id for ex in launched)
        count(sum(1 for e in mine if e in ended))
        try:
            await asyncio.wait_for(all_final, timeout=max(120.0, n / 10))
        except TimeoutError:
            missing = len(mine - ended.keys())
            raise BenchError(f"throughput: {missing} of {n} executions did not end") from None
        elapsed = watch_run()
        cpu_used = {k: v - cpu_before.get(k, 0.0) for k, v in _cpu(parts).items()}
    finally:
        for s in subs:
            await s.unsubscribe()
    failed = sum(1 for e in mine if ended[e] != "final")
    return elapsed, accepted, cpu_used, failed


def _add_figures(
    result: ScenarioResult,
    *,
    n: int,
    elapsed: float,
    accepted: float,
    ray_floor: Floor,
    cpu_used: dict[str, float],
) -> None:
    result.add(
        "executions/s (all final)",
        n / elapsed,
        "/s",
        better="higher",
        floor=ray_floor,
        target=TARGET_PER_S,
    )
    result.add(
        "executions/s (all final) / bare Ray tasks/s",
        n / elapsed / ray_floor.value,
        "x",
        better="higher",
        target=TARGET_RAY_RATIO,
    )
    result.add("launches accepted/s", n / accepted, "/s", better="higher", floor=ray_floor)
    for name, seconds in cpu_used.items():
        result.add(f"CPU per execution: {name}", seconds * 1000 / n, "ms")
    total = sum(cpu_used.values()) * 1000 / n
    result.add("CPU per execution, all of them", total, "ms")


def _processes(env: BenchEnv) -> dict[str, list[psutil.Process]]:
    """This process, the Ray processes below it (a local Ray started here), the nats-server.

    A Ray or a bus given from outside is not this run's to measure: its group is left out."""
    me = psutil.Process()
    server = env.server_pid
    others = env.service_pids
    children = [p for p in me.children(recursive=True) if p.pid not in others]
    parts = {"SDK + node (this process)": [me]}
    ray = [p for p in children if p.pid != server]
    if ray:
        parts["Ray (actors and Ray's own)"] = ray
    if server is not None:
        parts["nats-server"] = [p for p in children if p.pid == server]
    return parts


def _cpu(parts: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each group (a process gone counts 0)."""
    used: dict[str, float] = {}
    for name, procs in parts.items():
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += cpu_seconds(proc)
        used[name] = total
    return used
