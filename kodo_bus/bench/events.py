"""`events`: one flow emits N small markdown events; how fast do SDK readers get them, in order?

The live reader starts `execution.events()` right after the launch reply, as a dashboard would;
the late reader attaches once the execution has ended and replays it from JetStream. Both check
that every markdown event arrived exactly once and in order (seq strictly consecutive). Floors: a
bare nats-py ordered consumer over the same stored events (replay) and over a second run of the
same flow (live); bare nats-py publish→subscribe of a message of the same size, without and with
the event's headers, in one process — what any Python reader of this wire format starts from.
"""

from __future__ import annotations

import time
from typing import Any

from .. import subjects
from ..execution_ref import Execution
from ..executions import event_message
from ..models import Event
from . import floors
from .common import Floor, ScenarioResult, Stopwatch
from .env import BenchEnv

TARGET_LIVE_PER_S = 60_000.0
TARGET_REPLAY_PER_S = 80_000.0


class _Tally:
    """Counts markdown events, spots gaps and reordering, times first → last arrival."""

    def __init__(self) -> None:
        self.count = 0
        self.out_of_order = 0
        self.last_seq = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.first_ts = 0.0
        self.last_ts = 0.0

    def see(self, event: Event) -> None:
        now = time.perf_counter()
        if event.seq <= self.last_seq:
            self.out_of_order += 1
        self.last_seq = event.seq
        if event.kind != "markdown":
            return
        if not self.count:
            self.first_at, self.first_ts = now, event.ts
        self.count += 1
        self.last_at, self.last_ts = now, event.ts

    def rate(self) -> float:
        span = self.last_at - self.first_at
        return (self.count - 1) / span if self.count > 1 and span > 0 else float("nan")


async def _read(ex: Execution) -> _Tally:
    tally = _Tally()
    async for event in ex.events():
        tally.see(event)
    return tally


def _sample(n: int) -> tuple[bytes, dict[str, str]]:
    """A markdown event (body, headers) as the tracer encodes it, for floors of the same size."""
    event = Event(
        execution="0" * 32,
        seq=n,
        ts=time.time(),
        kind="markdown",
        node="bench-000000",
        flow="bench-emit",
        launcher="local",
        data=f"event {n}",
        root="0" * 32,
    )
    _, body, headers = event_message(event)
    return body, headers


async def run(env: BenchEnv, *, n: int = 100_000) -> ScenarioResult:
    watch = Stopwatch()
    result = ScenarioResult(scenario="events", params={"n": n})
    await env.service()
    kb = await env.client()
    flow = await kb.flow("bench-emit", via=env.service_id)
    await (await flow.launch({"n": 100})).result(timeout=60)  # warm the actor and the path

    ex = await flow.launch({"n": n})
    live = await _read(ex)
    outcome: Any = await ex.result(timeout=60)
    replay = await _read(kb.execution(ex.id))

    nc = await env.nats()
    body, headers = _sample(n)
    subject = f"kodo-bench.{env.run_id}.events"
    pubsub = await floors.nats_pubsub_rate(nc, n, subject, body)
    floor = Floor(name=f"nats-py pub→sub, {len(body)} B", value=pubsub, unit="/s")
    with_headers = await floors.nats_pubsub_rate(nc, n, subject, body, headers)
    stored = await floors.js_replay_rate(nc, subjects.events_of_execution(ex.id))
    js_floor = Floor(name="bare ordered consumer, same msgs", value=stored, unit="/s")
    # the same flow again, read live by a bare ordered consumer: the live reader's floor
    again = await flow.launch({"n": n})
    bare_live = await floors.js_replay_rate(nc, subjects.events_of_execution(again.id))
    await again.result(timeout=60)
    live_floor = Floor(name="bare ordered consumer, live", value=bare_live, unit="/s")

    result.add(
        "live reader",
        live.rate(),
        "/s",
        better="higher",
        floor=live_floor,
        target=TARGET_LIVE_PER_S,
    )
    result.add(
        "late reader (replay)",
        replay.rate(),
        "/s",
        better="higher",
        floor=js_floor,
        target=TARGET_REPLAY_PER_S,
    )
    result.add(
        "bare pub→sub with the event headers", with_headers, "/s", better="higher", floor=floor
    )
    emitted = (n - 1) / (live.last_ts - live.first_ts) if live.last_ts > live.first_ts else 0.0
    result.add("emitted by the flow", emitted, "/s", better="higher", floor=floor)
    lost = max(0, n - live.count) + max(0, n - replay.count)
    result.add("lost (live + replay)", lost, "events", target=0)
    result.add(
        "out of order (live + replay)", live.out_of_order + replay.out_of_order, "events", target=0
    )
    if outcome != n:
        result.notes.append(f"the flow returned {outcome!r}, expected {n}")
    result.seconds = watch()
    return result
