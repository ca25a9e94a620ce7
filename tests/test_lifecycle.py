"""`lifecycle`: the races between enders, played step by step on a real nats-server.

Each test interleaves an owner (the worker, which stores its `final` before it claims the
record) and an outsider (a registry or runner, which claims first) at one precise point, then
checks what the stream and the record hold: one `final`/`error`, then one terminal status, the
record equal to it — whoever wins.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from kodo_bus import Client, ExecutionLost
from kodo_bus.bus import connect, ensure_execution_storage
from kodo_bus.cli.exec_cmd import EXIT_BY_STATUS, follow
from kodo_bus.config import ConnectSettings
from kodo_bus.executions import event_message, read_record, record_key
from kodo_bus.lifecycle import (
    RESULT_LOST,
    Message,
    claim,
    conclude,
    end_from_outside,
    error_of,
    mark_lost,
    publish,
    repair,
    stored_events,
)
from kodo_bus.models import TERMINAL_STATUSES, Event, ExecutionRecord
from kodo_bus.server import NatsServer

from .invariants import check_executions
from .test_execution_support import FIRST_EVENTS, check_well_formed, handmade

Bus = tuple[NATS, JetStreamContext, KeyValue]


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    try:
        js = nc.jetstream()
        yield nc, js, await ensure_execution_storage(js, max_age=3600)
    finally:
        await nc.close()


async def _running(js: JetStreamContext, kv: KeyValue) -> tuple[ExecutionRecord, int]:
    """A running execution with events 1..3 stored (meta, inputs, status running)."""
    return await handmade(js, kv, FIRST_EVENTS)


async def _check(js: JetStreamContext, kv: KeyValue, record: ExecutionRecord, status: str) -> None:
    events = sorted(await stored_events(js, record), key=lambda e: e.seq)
    check_well_formed(events)
    terminal = [e for e in events if e.kind == "status" and e.data["status"] in TERMINAL_STATUSES]
    assert [e.data["status"] for e in terminal] == [status]
    stored = await read_record(kv, record_key(record))
    assert stored is not None
    assert (stored[0].status, stored[0].last_seq) == (status, events[-1].seq)


LOST = error_of("ExecutionLost", "node gone")


async def test_an_outsider_ends_between_the_owners_final_and_its_claim(bus: Bus) -> None:
    """The owner stored `final` (seq 4) and is about to claim; a registry ends it `lost`."""
    _, js, kv = bus
    record, revision = await _running(js, kv)

    async def store_then_race(messages: list[Message]) -> None:
        await publish(js, messages)
        if b'"final"' in messages[0][1]:
            outside = await end_from_outside(js, kv, record, "lost", LOST)
            assert outside.won

    owner = await conclude(
        js, kv, record, 3, "finished", final=42, known=(record, revision), store=store_then_race
    )
    assert (owner.won, owner.status) == (False, "lost")
    await _check(js, kv, record, "lost")


async def test_an_owner_behind_the_tail_is_fenced_after_an_outside_ending(bus: Bus) -> None:
    """The runner's own ending after an outsider's, numbered from what the runner knows (seq
    3) while the tail went on (a worker's event at 4): only the fence refuses it. Without its
    condition the runner's `error` would store a second seq 4 after the terminal status (its
    Msg-Id, `<execution>:4:end`, matches nothing the duplicate window holds). This is a node
    resumed after a registry ended its queued execution, without the minutes a real resume
    past the duplicate window takes."""
    _, js, kv = bus
    record, revision = await _running(js, kv)
    worker = Event(
        seq=4, ts=time.time(), kind="markdown", data="still running",
        execution=record.execution, node=record.node, flow="f", launcher="local",
    )  # fmt: skip
    await publish(js, [event_message(worker)])
    outside = await end_from_outside(js, kv, record, "lost", LOST)
    assert outside.won and outside.last_seq == 6
    stopping = error_of("Cancelled", "the node stopped")
    owner = await conclude(js, kv, record, 3, "cancelled", error=stopping, known=(record, revision))
    assert (owner.won, owner.status, owner.last_seq) == (False, "lost", 6)
    await _check(js, kv, record, "lost")


async def test_an_outsider_ends_before_the_owner_stores_its_final(bus: Bus) -> None:
    """The outsider numbered its `error` 4 before the owner's `final` 4 was stored: one of the
    two copies of seq 4 is kept (same Msg-Id), the outsider's status 5 ends it."""
    _, js, kv = bus
    record, revision = await _running(js, kv)

    async def race_then_store(messages: list[Message]) -> None:
        if b'"final"' in messages[0][1]:
            assert (await end_from_outside(js, kv, record, "lost", LOST)).won
        await publish(js, messages)

    owner = await conclude(
        js, kv, record, 3, "finished", final=42, known=(record, revision), store=race_then_store
    )
    assert (owner.won, owner.status) == (False, "lost")
    await _check(js, kv, record, "lost")


async def test_the_owner_wins_and_the_outsider_learns_it(bus: Bus) -> None:
    _, js, kv = bus
    record, revision = await _running(js, kv)
    owner = await conclude(js, kv, record, 3, "finished", final=42, known=(record, revision))
    assert owner.won and owner.last_seq == 5
    outside = await end_from_outside(js, kv, record, "lost", LOST)
    assert (outside.won, outside.status, outside.last_seq) == (False, "finished", 5)
    await _check(js, kv, record, "finished")


async def test_an_owner_that_died_after_its_claim_is_repaired(bus: Bus) -> None:
    """`final` stored and the record claimed, then the owner died: the next ender stores the
    status the record holds (and the outsider's own ending is not used)."""
    _, js, kv = bus
    record, revision = await _running(js, kv)
    final = Event(
        seq=4,
        ts=time.time(),
        kind="final",
        data=42,
        execution=record.execution,
        node=record.node,
        flow="f",
        launcher="local",
    )
    await publish(js, [event_message(final, f"{record.execution}:4:end")])
    won = await claim(
        kv, record_key(record), "finished", last_seq=5, error=None, known=(record, revision)
    )
    assert won.won
    outside = await end_from_outside(js, kv, record, "lost", LOST)
    assert (outside.won, outside.status) == (False, "finished")
    await _check(js, kv, record, "finished")


async def test_an_outsider_that_died_after_its_claim_is_repaired(bus: Bus) -> None:
    _, js, kv = bus
    record, revision = await _running(js, kv)
    won = await claim(
        kv, record_key(record), "lost", last_seq=5, error="node gone", known=(record, revision)
    )
    assert won.won
    stored = await read_record(kv, record_key(record))
    assert stored is not None
    again = await repair(js, kv, stored[0])
    assert (again.won, again.status, again.last_seq) == (False, "lost", 5)
    await repair(js, kv, stored[0])  # twice: nothing more stored
    await _check(js, kv, record, "lost")


@pytest.mark.parametrize("stored_error", [True, False])
async def test_mark_lost_repairs_an_ending_its_dead_node_left_half_stored(
    bus: Bus, stored_error: bool
) -> None:
    """CI (invariants under faults): a node killed while ending an execution had claimed the
    record `cancelled` but its terminal status was never sent; the registry that ends the dead
    node's executions skipped the terminal record, and the stream never got its status."""
    _, js, kv = bus
    record, revision = await _running(js, kv)
    if stored_error:
        error = Event(
            seq=4, ts=time.time(), kind="error", data=error_of("Cancelled", "cancelled"),
            execution=record.execution, node=record.node, flow="f", launcher="local",
        )  # fmt: skip
        await publish(js, [event_message(error, f"{record.execution}:4:end")])
    won = await claim(
        kv, record_key(record), "cancelled", last_seq=5, error="cancelled",
        known=(record, revision),
    )  # fmt: skip
    assert won.won
    assert await mark_lost(js, record.node) == 0  # nothing left to end: it repairs
    await _check(js, kv, record, "cancelled")


async def test_a_finished_claim_whose_final_was_never_stored_reads_as_lost(
    bus: Bus, nats_server: NatsServer
) -> None:
    """The worker claimed `finished` with its `final` still unacknowledged, then died (a server
    restart lost the `final`): the repair cannot store a value only the worker had. It stores
    `error` `ResultLost` and the `finished` the record holds, and `result()` raises
    `ExecutionLost`, live and from the record — never None as if the flow had returned it;
    `kodo-bus launch`'s follow exits as for `lost`."""
    _, js, kv = bus
    record, revision = await _running(js, kv)
    won = await claim(
        kv, record_key(record), "finished", last_seq=5, error=None, known=(record, revision)
    )
    assert won.won
    async with Client(nats_server.url) as client:
        ex = client.execution(record.execution)
        with pytest.raises(ExecutionLost, match="its result"):
            await ex.result(timeout=30)  # from the record: no terminal event is stored yet
        stored = await read_record(kv, record_key(record))
        assert stored is not None
        assert (await repair(js, kv, stored[0])).status == "finished"
        with pytest.raises(ExecutionLost, match="its result"):
            await ex.result(timeout=30)  # from the stored ending
        tree = await ex.workflow(timeout=30)
        assert tree.result is None and tree.error and "not in the stream" in tree.error
        assert await follow(ex, as_json=True, interactive=False) == EXIT_BY_STATUS["lost"]
    events = sorted(await stored_events(js, record), key=lambda e: e.seq)
    assert [e.kind for e in events[-2:]] == ["error", "status"]
    assert events[-2].data["type"] == RESULT_LOST
    report = await check_executions(js, executions=[record.execution])
    assert report.rules() == {"result-lost"}, report  # well formed, the value named lost
    stored = await read_record(kv, record_key(record))
    assert stored is not None and (stored[0].status, stored[0].last_seq) == ("finished", 5)


async def test_a_follower_keeps_a_final_it_read_when_only_the_status_is_missing(
    bus: Bus, nats_server: NatsServer
) -> None:
    """The worker stored its `final` and claimed `finished`, then died before its status: the
    value is in the stream. `result()` (a follow: nothing is heard live) gives it once the
    record's grace is over — not `ExecutionLost`, which it raised while dropping the `final`
    it had read; `events()` still raises, saying what is missing: the terminal status."""
    _, js, kv = bus
    record, revision = await _running(js, kv)
    final = Event(
        seq=4, ts=time.time(), kind="final", data=42,
        execution=record.execution, node=record.node, flow="f", launcher="local",
    )  # fmt: skip
    await publish(js, [event_message(final, f"{record.execution}:4:end")])
    won = await claim(
        kv, record_key(record), "finished", last_seq=5, error=None, known=(record, revision)
    )
    assert won.won
    async with Client(nats_server.url) as client:
        ex = client.execution(record.execution)
        assert await ex.result(timeout=60) == 42
        with pytest.raises(ExecutionLost, match="terminal status is not in the stream"):
            async for _ in ex.events():
                pass
