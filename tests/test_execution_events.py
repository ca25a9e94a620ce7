"""Events: output capture per execution, volume, and replay by late readers and after restarts."""

from __future__ import annotations

import asyncio
import time

import pytest

from kodo_bus import subjects
from kodo_bus.bus import connect
from kodo_bus.codec import decode_msg
from kodo_bus.config import ConnectSettings
from kodo_bus.models import Event
from kodo_bus.server import NatsServer

from . import test_execution_support as support
from .test_execution_support import NodeFactory, check_well_formed, read_events, status_of

make_node = support.make_node
pytestmark = pytest.mark.ray


@pytest.mark.parametrize("flow", ["chatty", "chatty-sync"])
async def test_stdout_of_concurrent_executions_not_mixed(make_node: NodeFactory, flow: str) -> None:
    node = await make_node(max_running=4, actors=1)
    first, second = await asyncio.gather(
        node.launch(flow, {"tag": "AAA"}), node.launch(flow, {"tag": "BBB"})
    )
    for reply, tag, other in ((first, "AAA", "BBB"), (second, "BBB", "AAA")):
        events = await read_events(node.js, reply.execution)
        check_well_formed(events)
        out = "".join(e.data for e in events if e.kind == "stdout")
        lines = out.splitlines()
        assert lines == [f"{tag} out {i}" for i in range(20)]
        if flow == "chatty":
            err = "".join(e.data for e in events if e.kind == "stderr").splitlines()
            assert err == [f"{tag} err {i}" for i in range(20)]
        assert other not in out


async def test_10000_events_all_delivered(make_node: NodeFactory) -> None:
    node = await make_node(max_running=2)
    t0 = time.monotonic()
    reply = await node.launch("many", {"n": 10_000})
    events = await read_events(node.js, reply.execution, timeout=120)
    elapsed = time.monotonic() - t0
    check_well_formed(events)
    texts = [e.data for e in events if e.kind == "text"]
    assert texts == [str(i) for i in range(10_000)]
    print(f"10,000 events delivered and read back in {elapsed:.2f} s")


async def test_late_reader_follows_live(make_node: NodeFactory) -> None:
    node = await make_node(max_running=2)
    reply = await node.launch("many", {"n": 3000})
    # join once the execution is under way: history first, then live, in one sequence
    sub = await node.nc.subscribe(subjects.events("local", reply.execution, "text"))
    await sub.next_msg(timeout=30)
    events = await read_events(node.js, reply.execution)
    check_well_formed(events)
    assert len([e for e in events if e.kind == "text"]) == 3000
    # and a reader arriving after the end sees exactly the same events
    again = await read_events(node.js, reply.execution)
    assert [(e.seq, e.kind, e.data) for e in again] == [(e.seq, e.kind, e.data) for e in events]


async def test_reader_after_server_restart(
    fresh_server: NatsServer, make_node: NodeFactory
) -> None:
    # fresh_server first: set up first, torn down last (after the node closed its connection)
    node = await make_node(url=fresh_server.url, max_running=2)
    reply = await node.launch("many", {"n": 500})
    before = await read_events(node.js, reply.execution)
    check_well_formed(before)
    await asyncio.to_thread(fresh_server.restart)
    nc = await connect(ConnectSettings(nats=[fresh_server.url]))
    try:
        after = await read_events(nc.jetstream(), reply.execution)
        assert [e.model_dump() for e in after] == [e.model_dump() for e in before]
        # the node rode out the restart and still runs executions
        again = await node.run("add", {"a": 4})
        assert status_of(again)[-1] == "finished"
    finally:
        await nc.close()


async def test_duplicate_event_is_dropped(make_node: NodeFactory) -> None:
    """Re-sent events (same Nats-Msg-Id) are stored once."""
    node = await make_node(max_running=2)
    events = await node.run("add", {"a": 1})
    sub = await node.js.subscribe(
        subjects.events_of_execution(events[0].execution), ordered_consumer=True
    )
    first = await sub.next_msg(timeout=5)
    ack = await node.js.publish(first.subject, first.data, headers=first.headers)
    assert ack.duplicate
    await sub.unsubscribe()
    assert decode_msg(first, Event).seq == 1
