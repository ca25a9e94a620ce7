"""Registries joined in any topology (issue 18): views travel incrementally, in messages under a
size cap, around rings and along chains without ever circulating; catalogs are fetched only when
their revision changed. Real nats-servers, real `kodo-bus run` registries, simulated nodes
speaking the node protocol on a test connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import msgpack
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from kodo_bus import subjects
from kodo_bus.codec import encode
from kodo_bus.models import Bye, Catalog, FlowInfo, Heartbeat
from kodo_bus.peers import CHUNK_BYTES
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .test_federation import eventually, flows

BEAT = 0.3
pytestmark = pytest.mark.slow


class Tap:
    """Every view message on one bus: its size, how many arrived, and the nodes they carried."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.nodes: set[str] = set()

    async def on_msg(self, msg: Msg) -> None:
        self.sizes.append(len(msg.data))
        view = msgpack.unpackb(msg.data)
        self.nodes.update(e["catalog"]["node"] for e in view.get("nodes", []))


@asynccontextmanager
async def buses(servers: list[NatsServer]) -> AsyncIterator[tuple[list[NATS], list[Tap]]]:
    async with AsyncExitStack() as stack:
        ncs: list[NATS] = []
        taps: list[Tap] = []
        for server in servers:
            nc = await nats.connect(server.url)
            stack.push_async_callback(nc.drain)
            tap = Tap()
            await nc.subscribe(subjects.REGISTRY_VIEW_ALL, cb=tap.on_msg)
            ncs.append(nc)
            taps.append(tap)
        yield ncs, taps


def registry(procs: Processes, server: NatsServer, rid: str, *links: NatsServer) -> None:
    cmd = ["run", "--nats", server.url, "--id", rid, "--role", "registry"]
    cmd += ["--heartbeat", str(BEAT), "--ttl", "3", "--cache-reset"]
    for link in links:
        cmd += ["--connect", link.url]
    procs.start(*cmd, cwd=REPO)


def catalog(node: str, flows: int, revision: int = 1, organization: str = "org") -> Catalog:
    return Catalog(
        node=node,
        organization=organization,
        revision=revision,
        flows=[FlowInfo(name=f"f{j}", summary=f"flow {j} of {node}") for j in range(flows)],
    )


async def announce(nc: NATS, cat: Catalog) -> None:
    body, headers = encode(cat)
    await nc.publish(subjects.node_catalog(cat.node), body, headers=headers)
    await nc.flush()


async def total(nc: NATS, rid: str, node: str | None = None) -> int:
    return (await flows(nc, rid, limit=1, node=node)).total


async def wait_everywhere(
    ncs: list[NATS], ids: list[str], check: Callable[[int], bool], node: str | None = None
) -> None:
    for nc, rid in zip(ncs, ids, strict=True):
        await eventually(lambda nc=nc, rid=rid: total(nc, rid, node), check, timeout=20)  # type: ignore[misc]


async def quiet_count(taps: list[Tap], seconds: float) -> int:
    """View messages on every bus over `seconds` of a steady federation."""
    before = sum(len(t.sizes) for t in taps)
    await asyncio.sleep(seconds)  # a measuring window, not a wait for a condition
    return sum(len(t.sizes) for t in taps) - before


async def scenario(
    procs: Processes, servers: list[NatsServer], links: dict[int, list[int]]
) -> None:
    """Registry i on bus i, linked to the buses `links[i]`; 60 nodes x 30 flows on each bus."""
    ids = [f"reg{i}" for i in range(len(servers))]
    async with buses(servers) as (ncs, taps):
        for i, server in enumerate(servers):
            registry(procs, server, ids[i], *[servers[j] for j in links[i]])
        for nc, rid in zip(ncs, ids, strict=True):
            await eventually(lambda nc=nc, rid=rid: total(nc, rid), lambda t: t == 0)  # type: ignore[misc]
        # enough nodes per bus that a whole view is larger than one message
        per_bus, n_flows = 60, 30
        for i, nc in enumerate(ncs):
            for k in range(per_bus):
                await announce(nc, catalog(f"b{i}-n{k}", n_flows))
        everything = len(servers) * per_bus * n_flows
        await wait_everywhere(ncs, ids, lambda t: t == everything)

        # a new flow on bus 0 reaches the last bus
        started = time.monotonic()
        await announce(ncs[0], catalog("b0-n0", n_flows + 1, revision=2))
        await eventually(lambda: total(ncs[-1], ids[-1], "b0-n0"), lambda t: t == n_flows + 1)
        assert time.monotonic() - started < 5.0

        # a removed node disappears everywhere (and is not brought back around a loop)
        body, headers = encode(Bye(node="b0-n1", forget=True))
        await ncs[0].publish(subjects.node_bye("b0-n1"), body, headers=headers)
        await wait_everywhere(ncs, ids, lambda t: t == 0, node="b0-n1")
        await wait_everywhere(ncs, ids, lambda t: t == everything - n_flows + 1)

        # nothing circulates: a quiet federation sends a beat per link and interval, no more.
        # The nodes here do not beat: b0-n0, announced again above, turns offline one ttl
        # later, a real change that must not fall inside the window
        for nc, rid in zip(ncs, ids, strict=True):
            await eventually(
                lambda nc=nc, rid=rid: flows(nc, rid, limit=1, node="b0-n0"),  # type: ignore[misc]
                lambda p: bool(p.items) and p.items[0].status == "offline",
            )
        publishers = sum(len(v) for v in links.values())
        window = 3.0
        count = await quiet_count(taps, window)
        assert count <= publishers * (window / (BEAT * 0.9) + 2), count
        await wait_everywhere(ncs, ids, lambda t: t == everything - n_flows + 1)
        biggest = max(max(t.sizes) for t in taps)
        assert biggest <= CHUNK_BYTES, biggest
        assert sum(len(t.sizes) for t in taps) > 0
        # split horizon: no registry sends a bus the nodes living on it (they are heard there
        # first-hand; a copy sent back came around a loop), yet every bus lists every node
        for i, tap in enumerate(taps):
            assert tap.nodes, i
            assert not {n for n in tap.nodes if n.startswith(f"b{i}-")}, i


async def test_a_ring_of_four_buses_linked_both_ways(
    procs: Processes, server_factory: Callable[[str], NatsServer]
) -> None:
    servers = [server_factory(f"r{i}") for i in range(4)]
    n = len(servers)
    await scenario(procs, servers, {i: [(i + 1) % n, (i - 1) % n] for i in range(n)})


async def test_a_one_way_ring_of_three_buses(
    procs: Processes, server_factory: Callable[[str], NatsServer]
) -> None:
    servers = [server_factory(f"o{i}") for i in range(3)]
    await scenario(procs, servers, {i: [(i + 1) % 3] for i in range(3)})


async def test_a_chain_of_four_buses(
    procs: Processes, server_factory: Callable[[str], NatsServer]
) -> None:
    servers = [server_factory(f"c{i}") for i in range(4)]
    links = {i: [j for j in (i - 1, i + 1) if 0 <= j < 4] for i in range(4)}
    await scenario(procs, servers, links)


async def test_a_provider_fetches_a_catalog_only_when_its_revision_changed(
    procs: Processes, fresh_server: NatsServer
) -> None:
    nc = await nats.connect(fresh_server.url)
    try:
        fetched: list[str] = []
        other = catalog("other-org-node", 2, organization="theirs")

        async def on_fetch(msg: Msg) -> None:
            fetched.append(msg.subject)
            body, headers = encode(other)
            await nc.publish(msg.reply, body, headers=headers)

        await nc.subscribe(subjects.svc_catalog(other.node), cb=on_fetch)
        procs.start(
            "run", "--nats", fresh_server.url, "--id", "prov", "--role", "provider",
            "--organization", "mine", "--heartbeat", str(BEAT), cwd=REPO,
        )  # fmt: skip
        await eventually(lambda: total(nc, "prov"), lambda t: t == 0)
        await announce(nc, other)

        async def beats(revision: int, count: int) -> None:
            for _ in range(count):
                hb = Heartbeat(node=other.node, revision=revision, ts=time.time())
                body, headers = encode(hb)
                await nc.publish(subjects.node_heartbeat(other.node), body, headers=headers)
                await nc.flush()
                await asyncio.sleep(BEAT)  # a node's heartbeat period

        await beats(1, 10)
        assert fetched == [], fetched  # its catalog was heard and refused: nothing to fetch
        other = catalog("other-org-node", 3, revision=2, organization="theirs")
        await beats(2, 10)
        assert len(fetched) == 1, fetched  # missed revision 2: fetched once
        assert await total(nc, "prov") == 0
    finally:
        await nc.drain()
