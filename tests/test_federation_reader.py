"""A registry reads other registries' views on a NATS connection of its own (issue 18, the 5-bus
chain at 2,000 nodes per bus): views arriving faster than it takes them in used to queue on the
connection that also brings its nodes' heartbeats, so heartbeats waited behind megabytes of
views until the registry turned its own live nodes offline (and back, each flip one more
changed entry down the chain). Real nats-server, a real `kodo-bus run` registry, simulated
nodes beating on a test connection, and a flood of views from a made-up registry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgpack
import nats
import pytest
from nats.aio.msg import Msg

from kodo_bus import subjects
from kodo_bus.bench.simnodes import SimNodes
from kodo_bus.codec import encode
from kodo_bus.models import Catalog, FlowInfo, NodeEntry, NodesPage, RegistryView
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .test_federation import eventually, nodes

pytestmark = pytest.mark.slow

BEAT = 0.5
TTL = 2.0
FLOOD_MESSAGES = 120
"""~30 MB of views at once: seconds of reading for the registry, under the server's 64 MB
max_pending (a cut is not needed to hold heartbeats back, only a backlog)."""


def flood_view(seq: int, count: int) -> tuple[bytes, dict[str, str]]:
    """A `changes` message of a made-up registry: `count` nodes of 20 flows each, every
    catalog at revision `seq` (new bytes, so each message costs the registry real decoding)."""
    view = RegistryView(
        registry="flood",
        organization="other",
        kind="changes",
        epoch="e",
        seq=seq,
        nodes=[
            NodeEntry(
                catalog=Catalog(
                    node=f"far-{i}",
                    organization="other",
                    revision=seq,
                    flows=[
                        FlowInfo(name=f"f{j}", summary=f"flow {j} of far-{i} at {seq}")
                        for j in range(20)
                    ],
                ),
                path=["flood"],
            )
            for i in range(count)
        ],
    )
    return encode(view)


def near_online(page: NodesPage) -> int:
    return sum(e.id.startswith("near-") and e.status == "online" for e in page.items)


async def test_views_read_slowly_do_not_hold_back_heartbeats(
    procs: Processes, server_factory: Callable[[str], NatsServer]
) -> None:
    server = server_factory("s0")
    rid = "reader-r0"
    cmd = ["run", "--nats", server.url, "--id", rid, "--role", "registry", "--cache-reset"]
    procs.start(*cmd, "--heartbeat", str(BEAT), "--ttl", str(TTL), cwd=REPO)
    nc = await nats.connect(server.url)
    flood_nc = await nats.connect(server.url)
    sim = SimNodes(nc, "near", 20, 3)
    offline: set[str] = set()

    async def on_put(msg: Msg) -> None:
        entry = msgpack.unpackb(msg.data) if msg.data else {}
        if entry.get("status") == "offline" and entry["catalog"]["node"].startswith("near-"):
            offline.add(entry["catalog"]["node"])

    beats: asyncio.Task[int] | None = None
    # built before the nodes beat (seconds of CPU that would hold the test's own beats back)
    bodies = [flood_view(seq, 150) for seq in range(1, FLOOD_MESSAGES + 1)]
    try:
        await eventually(lambda: nodes(nc, rid), lambda p: True)
        await nc.subscribe(subjects.kv_subject(subjects.bucket_view(rid), "node.*"), cb=on_put)
        beats = asyncio.create_task(sim.heartbeats(BEAT, 3600))
        await sim.announce_all()
        await eventually(
            lambda: nodes(nc, rid),
            lambda p: near_online(p) == len(sim.ids),
        )
        for body, headers in bodies:
            await flood_nc.publish(subjects.registry_view("flood"), body, headers=headers)
        await flood_nc.flush()
        # the flood is read out (or cut) and a few ttls pass with the nodes beating
        page = await eventually(
            lambda: nodes(nc, rid),
            lambda p: near_online(p) == len(sim.ids),
            timeout=60,
        )
        assert near_online(page) == 20
        assert offline == set(), f"{len(offline)} live nodes turned offline: {sorted(offline)}"
    finally:
        if beats is not None:
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
        await flood_nc.close()
        await nc.drain()
