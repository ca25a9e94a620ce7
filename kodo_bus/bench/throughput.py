"""`throughput`: N no-op executions launched at once; executions per second until all are final.

Launches go through the SDK concurrently; endings are counted from one core subscription to the
status events of this launcher (a push per execution, no consumer per execution), so the reader
does not become the bottleneck being measured. Floor: bare no-op Ray tasks per second.
"""

from __future__ import annotations

import asyncio
import json

from nats.aio.msg import Msg

from .. import subjects
from ..models import TERMINAL_STATUSES
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

    async def on_status(msg: Msg) -> None:
        # Plain JSON, not the Event model: the reader must not be what is measured (every
        # status event of every execution passes here; the executions' tests check the model).
        event = json.loads(msg.data)
        status, execution = event["data"]["status"], event["execution"]
        if status in TERMINAL_STATUSES and execution not in ended:
            ended[execution] = status
            if execution in mine:
                count(1)

    sub = await kb.nc.subscribe(
        subjects.events(kb.user, "*", "status"),
        cb=on_status,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
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
        await sub.unsubscribe()
    failed = sum(1 for e in mine if ended[e] != "finished")
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
