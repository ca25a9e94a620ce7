"""Queueing, busy, cancel, timeout and dying workers, against real nats-server and Ray."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from kodo_bus import subjects
from kodo_bus.bus import request
from kodo_bus.errors import Busy, RemoteError
from kodo_bus.executions import read_record
from kodo_bus.models import Ack, Empty

from . import test_execution_support as support
from .test_execution_support import (
    NodeFactory,
    check_well_formed,
    eventually,
    read_events,
    status_of,
)

make_node = support.make_node
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("invariants")]


async def test_200_concurrent_launches_max_running_2(make_node: NodeFactory) -> None:
    node = await make_node(max_running=2)
    t0 = time.monotonic()
    replies = await asyncio.gather(
        *(node.launch("sleeper", {"seconds": 0, "tag": str(i)}) for i in range(200))
    )
    results = await asyncio.gather(*(read_events(node.js, r.execution) for r in replies))
    elapsed = time.monotonic() - t0
    for events in results:
        check_well_formed(events)
        assert status_of(events)[-1] == "finished"
    assert sorted(int(ev[-2].data) for ev in results) == list(range(200))
    await eventually(lambda: node.runner.load() == (0, 0, 2))
    print(f"200 launches with max_running=2 in {elapsed:.2f} s")


async def test_fifo_and_busy(make_node: NodeFactory) -> None:
    node = await make_node(max_running=1, max_queue=2)
    first = await node.launch("sleeper", {"seconds": 1.5, "tag": "a"})
    second = await node.launch("sleeper", {"seconds": 0, "tag": "b"})
    third = await node.launch("sleeper", {"seconds": 0, "tag": "c"})
    with pytest.raises(Busy):
        await node.launch("sleeper", {"seconds": 0, "tag": "d"})
    assert node.runner.load() == (1, 2, 1)
    ends = [await read_events(node.js, r.execution) for r in (first, second, third)]
    finished = [ev[-1].ts for ev in ends]
    assert finished == sorted(finished)
    assert status_of(ends[1])[0] == "pending"


async def _record_is(kv: Any, execution: str, status: str) -> None:
    """Records are written right after the terminal events: wait for it, with a deadline."""
    deadline = time.monotonic() + 5
    while True:
        rec = await read_record(kv, subjects.record_key("local", execution))
        if rec is not None and rec[0].status == status:
            return
        assert time.monotonic() < deadline, f"record of {execution} is {rec}"
        await asyncio.sleep(0.02)


async def _cancel(node: support.Node, execution: str, user: str = "local") -> Ack:
    return await request(node.nc, subjects.exec_cancel(user, execution), Empty(), Ack)


@pytest.mark.parametrize("flow", ["sleeper", "sleeper-sync"])
async def test_cancel_running(make_node: NodeFactory, flow: str) -> None:
    node = await make_node(max_running=2)
    reply = await node.launch(flow, {"seconds": 30})
    kv = await node.js.key_value(subjects.BUCKET_EXECUTIONS)
    sub = await node.nc.subscribe(subjects.events("local", reply.execution, "status"))
    while (await sub.next_msg(timeout=20)).data.find(b'"running"') < 0:
        pass
    t0 = time.monotonic()
    await _cancel(node, reply.execution)
    events = await read_events(node.js, reply.execution, timeout=5)
    assert time.monotonic() - t0 < 2.0
    check_well_formed(events)
    assert status_of(events)[-1] == "cancelled"
    await _record_is(kv, reply.execution, "cancelled")


async def test_cancel_pending(make_node: NodeFactory) -> None:
    node = await make_node(max_running=1)
    blocker = await node.launch("sleeper", {"seconds": 2})
    waiting = await node.launch("sleeper", {"seconds": 0})
    await _cancel(node, waiting.execution)
    events = await read_events(node.js, waiting.execution, timeout=10)
    check_well_formed(events)
    assert status_of(events) == ["pending", "cancelled"]
    assert status_of(await read_events(node.js, blocker.execution))[-1] == "finished"


async def test_cancel_only_by_the_launcher_and_an_ended_one_says_so(
    make_node: NodeFactory,
) -> None:
    """One cancel subscription per node: the user in the subject must be the launcher, and a
    cancel that comes too late is told the execution ended (not left to time out)."""
    node = await make_node(max_running=2)
    reply = await node.launch("sleeper", {"seconds": 30})
    sub = await node.nc.subscribe(subjects.events("local", reply.execution, "status"))
    while (await sub.next_msg(timeout=20)).data.find(b'"running"') < 0:
        pass
    with pytest.raises(RemoteError) as foreign:  # mallory has no execution of that id
        await request(
            node.nc, subjects.exec_cancel("mallory", reply.execution), Empty(), Ack, timeout=5
        )
    assert foreign.value.kind == "not_found"
    assert node.runner.load()[0] == 1  # still running
    await _cancel(node, reply.execution)
    events = await read_events(node.js, reply.execution, timeout=5)
    assert status_of(events)[-1] == "cancelled"
    await eventually(lambda: node.runner.load()[0] == 0)  # its outcome reached the node
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="already ended") as late:
        await _cancel(node, reply.execution)
    assert late.value.kind == "not_found"
    assert time.monotonic() - t0 < 1.0


async def test_timeouts(make_node: NodeFactory) -> None:
    node = await make_node(max_running=2)
    per_flow = await node.launch("slow", {})
    per_launch = await node.launch("sleeper", {"seconds": 30}, timeout=0.5)
    for reply in (per_flow, per_launch):
        events = await read_events(node.js, reply.execution, timeout=20)
        check_well_formed(events)
        assert status_of(events)[-1] == "timeout"
        assert events[-2].data["type"] == "Timeout"


async def test_killed_worker_ends_error(make_node: NodeFactory) -> None:
    node = await make_node(max_running=2, actors=1)
    events = await node.run("die", {})
    check_well_formed(events)
    assert status_of(events)[-1] == "error"
    assert events[-2].data["type"] == "WorkerDied"
    kv = await node.js.key_value(subjects.BUCKET_EXECUTIONS)
    await _record_is(kv, events[0].execution, "error")
    # the pool replaced the dead actor: the node still runs executions
    after = await node.run("add", {"a": 1})
    assert status_of(after)[-1] == "finished"
