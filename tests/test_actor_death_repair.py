"""A Ray actor that dies right after reporting an execution ended, its terminal status still on
its way (a server restart, then the actor killed: test_invariants_faults found it), leaves a
terminal record without its status. The runner ends from outside only what a dead actor had
not reported ended, so the pool tells it what the actor reported lately, and it repairs those.

Real nats-server, in-process runner, real Ray actor killed with `ray.kill`. The race itself
is not deterministic, so the test stands it in: an execution ended (`final` stored, record
claimed `finished`) whose status never got there, reported ended by the actor just before
it is killed.
"""

from __future__ import annotations

import asyncio

import pytest
import ray

from kodo_bus import subjects
from kodo_bus.executions import record_key
from kodo_bus.lifecycle import claim, stored_ending

from . import test_execution_support as support
from .test_execution_support import NodeFactory, handmade, read_events

pytestmark = [pytest.mark.usefixtures("invariants"), pytest.mark.ray]

make_node = support.make_node

TRAIL = [("meta", {}), ("inputs", {}), ("status", {"status": "running"}), ("final", 3)]


async def test_a_status_lost_with_its_actor_is_stored_again(make_node: NodeFactory) -> None:
    node = await make_node(actors=1)
    reply = await node.launch("add", {"a": 1, "b": 2})  # the actor is up
    await read_events(node.js, reply.execution)
    kv = await node.js.key_value(subjects.BUCKET_EXECUTIONS)
    record, revision = await handmade(node.js, kv, TRAIL, node=node.id, flow="add")
    won = await claim(
        kv, record_key(record), "finished", last_seq=5, error=None, known=(record, revision)
    )
    assert won.won and won.record is not None
    pool = node.runner._pool
    assert pool is not None
    worker = pool._workers[0]
    worker.ended.append((asyncio.get_running_loop().time(), won.record))  # reported ended

    ray.kill(worker.handle)

    deadline = asyncio.get_running_loop().time() + 30
    while (again := await stored_ending(node.js, won.record)) is None:
        assert asyncio.get_running_loop().time() < deadline, "the status was never repaired"
        await asyncio.sleep(0.1)
    assert (again.status, again.seq) == ("finished", 5)
