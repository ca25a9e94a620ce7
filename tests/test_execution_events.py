"""Events: output capture per execution, volume, and replay by late readers and after restarts."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from nats.aio.msg import Msg

from kodo_bus import subjects
from kodo_bus.bus import connect, ensure_execution_storage
from kodo_bus.codec import decode_msg
from kodo_bus.config import ConnectSettings
from kodo_bus.executions import last_seq
from kodo_bus.models import Event
from kodo_bus.server import NatsServer

from . import test_execution_support as support
from .invariants import Watch, check_bus
from .test_execution_support import NodeFactory, check_well_formed, read_events, status_of

make_node = support.make_node
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("invariants")]


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
        (await check_bus(fresh_server.url)).assert_ok()
    finally:
        await nc.close()


async def test_duplicate_event_is_dropped(make_node: NodeFactory) -> None:
    """Re-sent events (same Nats-Msg-Id) are stored once."""
    node = await make_node(max_running=2)
    events = await node.run("add", {"a": 1})
    sub = await node.js.subscribe(
        subjects.events_of_execution(events[0].execution), ordered_consumer=True
    )
    for _ in range(4):  # the worker's first event (the node's three are conditional publishes)
        first = await sub.next_msg(timeout=5)
    ack = await node.js.publish(first.subject, first.data, headers=first.headers)
    assert ack.duplicate
    await sub.unsubscribe()
    assert decode_msg(first, Event).seq == 4


async def test_bursts_travel_as_arrays_and_status_alone(make_node: NodeFactory) -> None:
    """A burst of output events is stored in fewer messages than events (JSON arrays of
    consecutive seqs, one subject each); status events always travel alone; readers see each
    event once, in order."""
    node = await make_node(max_running=2)
    reply = await node.launch("many", {"n": 5000})
    events = await read_events(node.js, reply.execution, timeout=120)
    check_well_formed(events)
    assert [e.data for e in events if e.kind == "text"] == [str(i) for i in range(5000)]

    sub = await node.js.subscribe(
        subjects.events_of_execution(reply.execution), ordered_consumer=True
    )
    messages: list[Msg] = []
    try:
        while (
            not messages
            or not messages[-1].subject.endswith(".status")
            or (json.loads(messages[-1].data)["data"]["status"] != "finished")
        ):
            messages.append(await sub.next_msg(timeout=30))
    finally:
        await sub.unsubscribe()
    bodies = [json.loads(m.data) for m in messages]
    arrays = [(m, b) for m, b in zip(messages, bodies, strict=True) if isinstance(b, list)]
    assert arrays, "a burst of 5,000 text events travelled one per message"
    assert len(messages) < len(events)
    for msg, body in arrays:
        assert msg.subject.endswith(".text")
        seqs = [e["seq"] for e in body]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == f"{reply.execution}:{seqs[0]}-{seqs[-1]}"
    for msg, body in zip(messages, bodies, strict=True):
        if msg.subject.endswith(".status"):
            assert isinstance(body, dict)


async def test_last_seq_reads_the_end_of_a_burst(
    nats_server: NatsServer, invariants: Watch
) -> None:
    """`last_seq` (and so `mark_lost`, which numbers after it) sees into an array message."""
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    try:
        js = nc.jetstream()
        await ensure_execution_storage(js, max_age=3600)
        execution = f"{time.monotonic_ns():032x}"[-32:]
        invariants.ignore(execution, "hand-made: three text events, never ended")
        burst = [
            Event(
                execution=execution,
                seq=seq,
                ts=time.time(),
                kind="text",
                node="n",
                flow="f",
                launcher="local",
                data=str(seq),
            )
            for seq in (1, 2, 3)
        ]
        body = ("[" + ",".join(e.model_dump_json(exclude_none=True) for e in burst) + "]").encode()
        await js.publish(subjects.events("local", execution, "text"), body)
        assert await last_seq(js, execution) == 3
    finally:
        await nc.close()
