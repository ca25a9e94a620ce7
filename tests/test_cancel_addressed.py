"""A cancel reaches the node that holds the execution, and no other node does any work for it."""

from __future__ import annotations

import pytest

from kodo_bus import Client, subjects
from kodo_bus.bus import request
from kodo_bus.errors import RemoteError
from kodo_bus.models import Ack, Empty
from kodo_bus.server import NatsServer

from . import test_execution_support as support
from .invariants import Watch
from .test_execution_support import Node, NodeFactory, eventually, read_events, status_of

pytestmark = [pytest.mark.usefixtures("invariants"), pytest.mark.ray]

NODES = 4

make_node = support.make_node


def _traffic(nodes: list[Node]) -> list[tuple[int, int]]:
    """Messages each node's connection sent (every JetStream API request is one) and got."""
    return [(n.nc.stats["out_msgs"], n.nc.stats["in_msgs"]) for n in nodes]


async def _settled(nodes: list[Node]) -> None:
    """A round trip on each connection: whatever the server sent it before has arrived."""
    for n in nodes:
        await n.nc.flush()


async def test_a_cancel_reaches_its_node_and_no_other(
    make_node: NodeFactory, nats_server: NatsServer, invariants: Watch
) -> None:
    nodes: list[Node] = [await make_node() for _ in range(NODES)]
    holder, others = nodes[1], nodes[:1] + nodes[2:]
    reply = await holder.launch("sleeper", {"seconds": 60})
    live = holder.runner._live
    await eventually(
        lambda: reply.execution in live and live[reply.execution].state == "running", 60
    )
    async with Client(nats_server.url) as kb:
        ex = kb.execution(reply.execution)
        await ex.record()  # the SDK learns the node from the record, before the count starts
        await _settled(others)
        before = _traffic(others)
        await ex.cancel()
        events = await read_events(kb.js, reply.execution, timeout=30)
        assert status_of(events)[-1] == "cancelled"
        await _settled(others)
        assert _traffic(others) == before, "a node that does not hold the execution did work"

        # ended: its node says so, still alone
        with pytest.raises(RemoteError) as ended:
            await ex.cancel()
        assert ended.value.kind == "not_found"
        await _settled(others)
        assert _traffic(others) == before, "a node that does not hold the execution did work"

        # a raw client on the public subject: whichever node gets it hands it to the holder
        for _ in range(3):
            launched = await holder.launch("sleeper", {"seconds": 60})
            ack = await request(
                kb.nc, subjects.exec_cancel("local", launched.execution), Empty(), Ack, timeout=10
            )
            assert ack.ok
            events = await read_events(kb.js, launched.execution, timeout=30)
            assert status_of(events)[-1] == "cancelled"

        # no process of its node is up: any node answers from the record, as before
        await holder.runner.stop()
        with pytest.raises(RemoteError) as gone:
            await ex.cancel()
        assert gone.value.kind == "not_found"
        assert "already ended" in gone.value.message
