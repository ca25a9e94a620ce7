"""The launch path trimmed for issue 18, at its edges: a worker starts a flow without waiting
for the ack of its `running` (`executor._Start`), so what it sends before that ack carries the
`running`'s condition (`EventPublisher.guard`). A job that reaches its worker after the
execution was ended from outside must still leave nothing behind the ending — whether the flow
emits before the refusal comes back, or ends (and sends its `final`) before it does.

`ExecActor` is driven in this process against the session's nats-server (no Ray), as in
tests/test_execution_handover.py.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from kodo_bus import subjects
from kodo_bus.bus import connect, deliver, ensure_execution_storage, respond
from kodo_bus.client import Client
from kodo_bus.codec import decode_msg
from kodo_bus.config import ConnectSettings
from kodo_bus.executions import read_record, record_key
from kodo_bus.executor import ExecActor, Job, JobBatch, Outcome, OutcomeBatch
from kodo_bus.lifecycle import end_from_outside, envelope, error_of, stored_events
from kodo_bus.models import Ack, Event, ExecutionRecord
from kodo_bus.server import NatsServer

from .test_execution_support import check_well_formed, handmade

pytestmark = pytest.mark.usefixtures("invariants")

NOOP = "kodo_bus.bench.flows:noop"
EMIT = "kodo_bus.bench.flows:emit"
STARTING = [("meta", {}), ("inputs", {}), ("status", {"status": "starting"})]
"""What a runner stores of an execution before it hands the job over."""


@pytest.fixture
async def conn(nats_server: NatsServer) -> AsyncIterator[NATS]:
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    try:
        yield nc
    finally:
        await nc.drain()


@pytest.fixture
async def worker(nats_server: NatsServer, conn: NATS) -> AsyncIterator[tuple[ExecActor, str, str]]:
    await ensure_execution_storage(conn.jetstream(), max_age=3600)
    node, pool = f"launch-path-{time.monotonic_ns()}", "p1"
    jobs, outcomes = subjects.work_jobs(node, pool, 1), subjects.work_outcomes(node, pool)
    settings = ConnectSettings(nats=[nats_server.url]).model_dump(mode="json")
    stdout, stderr = sys.stdout, sys.stderr  # the actor captures them, as in a Ray worker
    actor = ExecActor(settings, list(sys.path), jobs, outcomes)
    try:
        await actor.start()
        yield actor, jobs, outcomes
    finally:
        try:
            await actor.stop()
        finally:
            sys.stdout, sys.stderr = stdout, stderr


async def _outcomes(nc: NATS, subject: str) -> asyncio.Queue[tuple[str, Outcome]]:
    queue: asyncio.Queue[tuple[str, Outcome]] = asyncio.Queue()

    async def on_outcomes(msg: Msg) -> None:
        batch = decode_msg(msg, OutcomeBatch)
        for execution, outcome in batch.outcomes.items():
            queue.put_nowait((execution, outcome))
        await respond(msg, Ack())

    await nc.subscribe(subject, cb=on_outcomes)
    await nc.flush()
    return queue


@pytest.mark.parametrize(
    ("entry", "inputs"),
    [
        ("kodo_bus.bench.flows:noop", {}),  # ends before the refusal of its `running` is back
        ("kodo_bus.bench.flows:emit", {"n": 300}),  # emits while the refusal is on its way
    ],
)
async def test_a_job_that_reaches_its_worker_after_its_ending_adds_nothing(
    conn: NATS, worker: tuple[ExecActor, str, str], entry: str, inputs: dict[str, int]
) -> None:
    """The node was declared lost (its execution ended `lost` from outside) while the job was
    on its way to a worker that still takes it: the worker's events are refused by the
    `running`'s condition, its claim loses, and it reports the ending that won."""
    _, jobs_subject, outcomes_subject = worker
    js = conn.jetstream()
    kv = await ensure_execution_storage(js, max_age=3600)
    record, revision = await handmade(js, kv, STARTING, status="starting", flow="bench")
    lost = await end_from_outside(js, kv, record, "lost", error_of("ExecutionLost", "node gone"))
    assert lost.won
    reported = await _outcomes(conn, outcomes_subject)

    job = Job(record=record, revision=revision, entry=entry, inputs=inputs, seq=len(STARTING))
    await deliver(conn, jobs_subject, JobBatch(jobs=[job]))
    execution, outcome = await asyncio.wait_for(reported.get(), 30)

    assert execution == record.execution
    assert (outcome.status, outcome.ended) == ("lost", True)
    await conn.flush()
    events = sorted(await stored_events(js, record), key=lambda e: e.seq)
    check_well_formed(events)
    assert [e.kind for e in events] == ["meta", "inputs", "status", "error", "status"]
    assert events[-1].data == {"status": "lost"}
    stored = await read_record(kv, record_key(record))
    assert stored is not None and (stored[0].status, stored[0].last_seq) == ("lost", 5)


async def test_a_short_flow_ends_with_its_running_and_final_in_order(
    conn: NATS, worker: tuple[ExecActor, str, str]
) -> None:
    """The ordinary case of the same path: `running`, the flow's events, `final`, `finished`,
    seqs in a row — the `final` sent before `running` was acknowledged is stored, and the
    terminal status (sent once the guard is dropped) too."""
    _, jobs_subject, outcomes_subject = worker
    js = conn.jetstream()
    kv = await ensure_execution_storage(js, max_age=3600)
    reported = await _outcomes(conn, outcomes_subject)
    jobs = []
    for entry, inputs in (
        ("kodo_bus.bench.flows:noop", {}),
        ("kodo_bus.bench.flows:emit", {"n": 5}),
    ):
        record, revision = await handmade(js, kv, STARTING, status="starting", flow="bench")
        jobs.append(Job(record=record, revision=revision, entry=entry, inputs=inputs, seq=3))
    await deliver(conn, jobs_subject, JobBatch(jobs=jobs))
    outcomes = dict([await asyncio.wait_for(reported.get(), 30) for _ in jobs])
    for job, markdown in zip(jobs, (0, 5), strict=True):
        assert outcomes[job.record.execution].status == "finished"
        events = sorted(await stored_events(js, job.record), key=lambda e: e.seq)
        check_well_formed(events)
        kinds = [e.kind for e in events]
        assert kinds == [
            *(k for k, _ in STARTING),
            "status",
            *["markdown"] * markdown,
            "final",
            "status",
        ]
        assert events[3].data == {"status": "running"}
        assert events[-1].data == {"status": "finished"}


async def test_the_final_is_on_the_wire_before_the_claim(
    conn: NATS, worker: tuple[ExecActor, str, str]
) -> None:
    """A worker hands its `final` to its publisher, then claims the record through nats-py
    directly: the claim must not overtake the `final` on their one connection (it did, being
    written before the publisher's task ran), or a repair that reads the claimed record before
    the `final` is stored stores an `error` in its place. A core subscriber on both subjects
    sees one connection's messages in the order the server got them."""
    _, jobs_subject, outcomes_subject = worker
    js = conn.jetstream()
    kv = await ensure_execution_storage(js, max_age=3600)
    reported = await _outcomes(conn, outcomes_subject)
    jobs = []
    for _ in range(5):
        record, revision = await handmade(js, kv, STARTING, status="starting", flow="bench")
        jobs.append(Job(record=record, revision=revision, entry=NOOP, inputs={}, seq=3))
    seen: dict[str, list[str]] = {job.record.execution: [] for job in jobs}

    async def on_msg(msg: Msg) -> None:
        parts = msg.subject.split(".")
        if parts[0] == "kodo":
            seen[parts[3]].append(parts[4])
        elif parts[-1] in seen:  # the record's key ends with the execution id
            seen[parts[-1]].append("record")

    await conn.subscribe(subjects.events("local", "*", "*"), cb=on_msg)
    await conn.subscribe(subjects.kv_subject(subjects.BUCKET_EXECUTIONS, ">"), cb=on_msg)
    await conn.flush()
    for job in jobs:
        await deliver(conn, jobs_subject, JobBatch(jobs=[job]))
        execution, outcome = await asyncio.wait_for(reported.get(), 30)
        assert (execution, outcome.status) == (job.record.execution, "finished")
    await conn.flush()
    for job in jobs:
        assert seen[job.record.execution] == ["status", "final", "record", "status"]


def _event(record: ExecutionRecord, seq: int, kind: str, data: Any) -> Event:
    return Event(seq=seq, ts=time.time(), kind=kind, data=data, **envelope(record))


def test_a_live_ending_is_trusted_only_when_it_is_clear() -> None:
    """`result()` heard live takes the terminal status and the one `final`/`error` right
    before it; anything less clear (two different endings at that seq — a worker whose claim
    lost sent a refused `final` beside the winner's `error` —, none) is left to the follow,
    which reads what the stream stored; so is an `error` before `finished` (a repair's
    `ResultLost`, or a refused `error` heard beside a stored `final` on a lagging replica). An
    error ending has no value (`_NO_FINAL`)."""
    from kodo_bus.execution_ref import _NO_FINAL, _ending_of

    now = time.time()
    r = ExecutionRecord(
        execution="e" * 32, flow="f", node="n", launcher="local", status="running",
        created=now, updated=now,
    )  # fmt: skip
    final, finished = _event(r, 4, "final", 7), _event(r, 5, "status", {"status": "finished"})
    lost = _event(r, 5, "status", {"status": "lost"})
    error = _event(r, 4, "error", {"type": "ExecutionLost", "message": "gone"})
    assert _ending_of([final, finished]) == ("finished", 7, {})
    assert _ending_of([final, final, finished, finished]) == ("finished", 7, {})  # copies
    assert _ending_of([error, lost]) == ("lost", _NO_FINAL, error.data)
    assert _ending_of([final, error, lost]) is None
    assert _ending_of([error, finished]) is None
    assert _ending_of([finished]) is None
    assert _ending_of([_event(r, 3, "final", 7), finished]) is None
    assert _ending_of([final]) is None
    assert _ending_of([final, finished, _event(r, 6, "status", {"status": "error"})]) is None


async def test_the_result_of_a_running_execution_needs_no_consumer(
    nats_server: NatsServer, conn: NATS, worker: tuple[ExecActor, str, str]
) -> None:
    """`result()` of an execution of one's own that is still running hears its ending live
    (core subscriptions): no JetStream consumer is made (one per result cost the SDK and the
    server more CPU than the rest of a short execution, issue 18)."""
    _, jobs_subject, outcomes_subject = worker
    js = conn.jetstream()
    kv = await ensure_execution_storage(js, max_age=3600)
    reported = await _outcomes(conn, outcomes_subject)
    record, revision = await handmade(js, kv, STARTING, status="starting", flow="bench")
    job = Job(record=record, revision=revision, entry=EMIT, inputs={"n": 20}, seq=3)
    async with Client(nats_server.url, user="local") as kb:
        ex = kb.execution(record.execution)
        result = asyncio.ensure_future(ex.result(timeout=30))
        consumers = []
        while not result.done():
            info = await js.stream_info(subjects.STREAM_EVENTS)
            consumers.append(info.state.consumer_count)
            if len(consumers) == 5:  # the result waits meanwhile
                await deliver(conn, jobs_subject, JobBatch(jobs=[job]))
            await asyncio.wait({result}, timeout=0.01)
        assert await result == 20
    await asyncio.wait_for(reported.get(), 30)
    assert len(consumers) >= 5 and max(consumers) == 0
