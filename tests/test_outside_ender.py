"""An outsider ends an execution whose worker is alive (issue 18's review: a node frozen past
its ttl while its Ray actor runs on, so a registry ends its executions `lost`).

The promise attacked: every execution ends exactly once — seqs 1..n each stored once, one
terminal status with nothing after it, the record equal to it (the `invariants` fixture checks
every execution these tests made) — even when the worker stores events between the
outsider's read of the tail and its ending, and goes on emitting after it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from kodo_bus import lifecycle, subjects
from kodo_bus.bus import deliver, ensure_execution_storage
from kodo_bus.client import Client
from kodo_bus.errors import ExecutionLost
from kodo_bus.executions import last_seq, read_record, record_key
from kodo_bus.executor import ExecActor, Job, JobBatch
from kodo_bus.lifecycle import end_from_outside, error_of, fence, stored_events
from kodo_bus.models import TERMINAL_STATUSES, ExecutionRecord
from kodo_bus.server import NatsServer
from kodo_bus.tracer import Tracer

from . import test_launch_path as launch_path
from .test_execution_support import handmade
from .test_launch_path import STARTING, _outcomes

pytestmark = pytest.mark.usefixtures("invariants")

conn = launch_path.conn
worker = launch_path.worker

LOST = error_of("ExecutionLost", "node gone")
EMIT = "kodo_bus.bench.flows:emit"
CHATTER = f"{__name__}:chatter"


async def chatter(inputs: dict[str, Any], tracer: Tracer) -> int:
    """Emits as fast as it can for up to a minute, yielding between events (the worker shares
    this test's event loop, and so does the outsider)."""
    deadline = asyncio.get_running_loop().time() + 60
    count = 0
    while asyncio.get_running_loop().time() < deadline:
        await tracer.markdown(f"event {count}")
        count += 1
        await asyncio.sleep(0)
    return count


async def _record_agrees(js: Any, kv: Any, record: ExecutionRecord) -> int:
    """The record names the terminal status stored, at its seq, and nothing follows it; that
    seq."""
    events = sorted(await stored_events(js, record), key=lambda e: e.seq)
    terminal = [e for e in events if e.kind == "status" and e.data["status"] in TERMINAL_STATUSES]
    assert len(terminal) == 1, [(e.seq, e.kind) for e in events]
    assert events[-1] is terminal[0]
    stored = await read_record(kv, record_key(record))
    assert stored is not None
    assert (stored[0].status, stored[0].last_seq) == (terminal[0].data["status"], events[-1].seq)
    return events[-1].seq


async def _stored(js: Any, record: ExecutionRecord, seq: int) -> None:
    """Wait until events up to `seq` are stored."""
    deadline = asyncio.get_running_loop().time() + 10
    while await last_seq(js, record.execution) < seq:
        assert asyncio.get_running_loop().time() < deadline, f"seq {seq} never stored"
        await asyncio.sleep(0.002)


@pytest.mark.parametrize(("entry", "n"), [("kodo_bus.bench.flows:noop", 0), (EMIT, 3)])
async def test_a_worker_that_starts_between_the_outsiders_read_and_its_ending(
    nats_server: NatsServer,
    conn: NATS,
    worker: tuple[ExecActor, str, str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    entry: str,
    n: int,
) -> None:
    """The job reaches the worker after the outsider read the tail and before it claims: the
    worker's `running` (and for a short flow more) is stored where the outsider's `error` was
    to go. The outsider's ending moves behind it. Before the fix, seq 4 was stored twice and
    the terminal status was dropped as a duplicate of the worker's `final`."""
    _, jobs_subject, outcomes_subject = worker
    js = conn.jetstream()
    kv = await ensure_execution_storage(js, max_age=3600)
    record, revision = await handmade(js, kv, STARTING, status="starting", flow="bench")
    reported = await _outcomes(conn, outcomes_subject)
    job = Job(record=record, revision=revision, entry=entry, inputs={"n": n}, seq=len(STARTING))
    real_claim = lifecycle.claim

    async def claim_once_the_worker_runs(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(lifecycle, "claim", real_claim)
        await deliver(conn, jobs_subject, JobBatch(jobs=[job]))
        await _stored(js, record, len(STARTING) + 1)  # its `running`
        return await real_claim(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "claim", claim_once_the_worker_runs)
    async with Client(nats_server.url, user="local") as kb:
        result = asyncio.ensure_future(kb.execution(record.execution).result(timeout=30))
        ending = await end_from_outside(js, kv, record, "lost", LOST)
        _, outcome = await asyncio.wait_for(reported.get(), 30)
        if ending.won:  # the outsider claimed first (the worker may have stored its `final`)
            with pytest.raises(ExecutionLost):
                await result
        else:  # the short flow's claim came first
            assert await result == n
    assert outcome.ended and outcome.status == ending.status
    assert ending.last_seq == await _record_agrees(js, kv, record) > len(STARTING) + 2


@pytest.mark.parametrize("enders", [1, 3])
async def test_a_worker_emitting_at_full_speed_is_ended_from_outside(
    conn: NATS, worker: tuple[ExecActor, str, str], enders: int
) -> None:
    """A flow emitting as fast as it can, ended `lost` from outside mid-run by one or several
    enders at once (a registry, and the runner that saw its worker die): the ending is stored
    after the last event the worker got in, exactly once, and the worker's next event is
    refused, which stops its flow."""
    _, jobs_subject, outcomes_subject = worker
    js = conn.jetstream()
    kv = await ensure_execution_storage(js, max_age=3600)
    record, revision = await handmade(js, kv, STARTING, status="starting", flow="bench")
    reported = await _outcomes(conn, outcomes_subject)
    job = Job(record=record, revision=revision, entry=CHATTER, inputs={}, seq=3)
    await deliver(conn, jobs_subject, JobBatch(jobs=[job]))
    await _stored(js, record, 500)

    endings = await asyncio.gather(
        *(end_from_outside(js, kv, record, "lost", LOST) for _ in range(enders))
    )
    _, outcome = await asyncio.wait_for(reported.get(), 30)  # the flow was stopped

    assert sum(e.won for e in endings) == 1
    assert (outcome.status, outcome.ended) == ("lost", True)
    events = sorted(await stored_events(js, record), key=lambda e: e.seq)
    assert [e.kind for e in events[-2:]] == ["error", "status"]
    await conn.flush()
    last = await _record_agrees(js, kv, record)
    assert {(e.status, e.last_seq) for e in endings} == {("lost", last)}


async def test_a_fence_goes_with_a_retained_executions_events(conn: NATS) -> None:
    """A flow's `retention` takes its events away early; the fence of an outside ending goes
    with them (`Nats-TTL`), or a later launch of the id would have every event refused."""
    js = conn.jetstream()
    kv = await ensure_execution_storage(js, max_age=3600)
    record, _ = await handmade(js, kv, STARTING, status="starting", retention=30.0)
    ending = await end_from_outside(js, kv, record, "lost", LOST)
    assert ending.won
    fence = await js.get_last_msg(subjects.STREAM_EVENTS, subjects.fence(record.execution))
    assert (fence.headers or {}).get("Nats-TTL") == "30"


async def test_a_job_fenced_while_its_record_is_live_is_reported_not_ended(
    conn: NATS, worker: tuple[ExecActor, str, str]
) -> None:
    """A fence without an ending (its ender died in between, or one left from an ending long
    gone): the worker's `running` is refused, and it tells its runner the execution did not
    end, so the runner ends it, instead of forgetting a record that stays live for good."""
    _, jobs_subject, outcomes_subject = worker
    js = conn.jetstream()
    kv = await ensure_execution_storage(js, max_age=3600)
    record, revision = await handmade(js, kv, STARTING, status="starting", flow="bench")
    await fence(js, record)
    reported = await _outcomes(conn, outcomes_subject)
    job = Job(record=record, revision=revision, entry=CHATTER, inputs={}, seq=len(STARTING))
    await deliver(conn, jobs_subject, JobBatch(jobs=[job]))
    _, outcome = await asyncio.wait_for(reported.get(), 30)  # the refusal stopped the flow
    assert not outcome.ended
    assert await last_seq(js, record.execution) == len(STARTING)  # nothing of it stored
    await end_from_outside(js, kv, record, "error", error_of("WorkerFailure", "refused"))
