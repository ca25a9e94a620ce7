"""A registry behind on reading judges no node by the silence of its own backlog.

In `kodo-bus bench federation` (a chain of 5 buses, 2,000 nodes each) a middle registry fell
tens of seconds behind reading its subscriptions; heartbeats of live nodes sat in its queue
while its liveness clock ran, and it turned 68 of its own nodes offline (and back), each flip a
change sent down the chain. Here a flood of announcements puts a live node's heartbeats behind
a backlog several ttls long: the node must never be written offline.
"""

from __future__ import annotations

import asyncio
import time

import msgpack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from kodo_bus import subjects
from kodo_bus.codec import encode
from kodo_bus.models import Catalog, FlowInfo, Heartbeat
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .test_federation import eventually, info, nc, nodes

__all__ = ["nc"]

TTL = 1.0
FLOOD = 150_000
"""Heartbeats of another node queued ahead of the live node's: seconds of work for the
registry, several times its ttl."""


async def test_a_registry_behind_on_reading_turns_no_live_node_offline(
    procs: Processes, fresh_server: NatsServer, nc: NATS
) -> None:
    procs.start(
        "run", "--nats", fresh_server.url, "--id", "reg", "--role", "registry",
        "--heartbeat", "0.25", "--ttl", str(TTL), "--cache-reset", "--log-level", "WARNING",
        cwd=REPO,
    )  # fmt: skip
    await eventually(lambda: info(nc, "reg"), lambda i: True)
    live = Catalog(node="live", revision=1, flows=[FlowInfo(name="f")])
    body, headers = encode(live)
    await nc.publish(subjects.node_catalog("live"), body, headers=headers)

    async def beat() -> None:
        while True:
            hb, hb_headers = encode(Heartbeat(node="live", revision=1, ts=time.time()))
            await nc.publish(subjects.node_heartbeat("live"), hb, headers=hb_headers)
            await asyncio.sleep(0.1)  # the node's own heartbeat period, not a wait

    beating = asyncio.create_task(beat())
    written: list[str] = []

    async def on_put(msg: Msg) -> None:
        if msg.data:
            written.append(msgpack.unpackb(msg.data)["status"])

    key = subjects.kv_subject(subjects.bucket_view("reg"), "node.live")
    sub = await nc.subscribe(key, cb=on_put)
    try:
        await eventually(lambda: nodes(nc, "reg"), lambda p: p.total == 1, timeout=10)
        await eventually(lambda: asyncio.sleep(0, written), lambda w: "online" in w)

        # the flood: another node's heartbeats, far more than the registry reads in a ttl
        other, other_headers = encode(Heartbeat(node="other", revision=1, ts=time.time()))
        for _ in range(FLOOD):
            await nc.publish(subjects.node_heartbeat("other"), other, headers=other_headers)
        await nc.flush()
        flooded = time.time()
        # the backlog is read once a beat of the live node sent after the flood has counted
        await eventually(
            lambda: nodes(nc, "reg"),
            lambda p: bool(p.items) and p.items[0].last_seen > flooded,
            timeout=60,
        )
        await asyncio.sleep(3 * TTL)  # a window for a late judgement to show, not a condition
        assert "offline" not in written, written
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
        await sub.unsubscribe()
