"""`throughput`: N no-op executions launched at once; executions per second until all are final.

Launches go through the SDK concurrently; endings are counted from core subscriptions to the
`final` and `error` events of this launcher — every execution ends with exactly one of them, so
that is one push per execution and no consumer per execution: the reader must not become what
is measured. Floor: bare no-op Ray tasks per second.
"""

from __future__ import annotations

import asyncio
import json

from nats.aio.msg import Msg

from .. import subjects
from . import floors
from .common import Floor, ScenarioResult, Stopwatch
from .env import BenchEnv, BenchError

TARGET_PER_S = 500.0


async def run(env: BenchEnv, *, n: int = 2000, warmup: int = 50) -> ScenarioResult:
    watch = Stopwatch()
    result = ScenarioResult(
        scenario="throughput",
        params={"n": n, "max_running": env.settings.max_running},
    )
    await env.service()
    kb = await env.client()
    flow = await kb.flow("bench-noop", via=env.service_id)
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
    finally:
        for s in subs:
            await s.unsubscribe()
    failed = sum(1 for e in mine if ended[e] != "final")
    ray_floor = Floor(name="bare Ray tasks", value=await floors.ray_tasks_per_second(n), unit="/s")
    result.add(
        "executions/s (all final)",
        n / elapsed,
        "/s",
        better="higher",
        floor=ray_floor,
        target=TARGET_PER_S,
    )
    result.add("launches accepted/s", n / accepted, "/s", better="higher", floor=ray_floor)
    if failed:
        result.notes.append(f"{failed} of {n} executions did not finish")
    result.seconds = watch()
    return result
