"""Registries repair missed catalogs, drop bad input, and show up in standard NATS tooling."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro.service import ServiceVerb, control_subject

from kodo_bus import subjects
from kodo_bus.bus import request
from kodo_bus.codec import JSON, encode
from kodo_bus.models import Ack, Catalog, Empty, FlowInfo, Heartbeat, SyncRequest
from kodo_bus.server import NatsServer

from .conftest import Processes
from .invariants import check_bus
from .test_federation import eventually, flows, info, nc, run, wait_totals

__all__ = ["nc"]


def catalog(node: str, revision: int, count: int) -> Catalog:
    flows = [FlowInfo(name=f"f{i}", summary=f"flow {i}") for i in range(count)]
    return Catalog(node=node, revision=revision, flows=flows)


async def test_missed_catalog_is_repaired_from_heartbeats(
    procs: Processes, fresh_server: NatsServer, nc: NATS
) -> None:
    """A node whose catalog never reached the registry: heartbeats alone make it fetch it."""
    run(procs, fresh_server, "registry.yaml")
    await eventually(lambda: info(nc, "registry"), lambda i: True)
    current = catalog("ghost", 7, 3)

    async def answer(msg: Msg) -> None:
        body, headers = encode(current)
        await nc.publish(msg.reply, body, headers=headers)

    await nc.subscribe(subjects.svc_catalog("ghost"), cb=answer)

    async def beat() -> int:
        body, headers = encode(Heartbeat(node="ghost", revision=current.revision, ts=time.time()))
        await nc.publish(subjects.node_heartbeat("ghost"), body, headers=headers)
        return (await flows(nc, "registry", node="ghost")).total

    await eventually(beat, lambda total: total == 3, timeout=10)
    current = catalog("ghost", 8, 1)  # the node changed; its new catalog got lost too
    await eventually(beat, lambda total: total == 1, timeout=10)
    (await check_bus(fresh_server.url)).assert_ok()


async def test_bad_messages_are_counted_and_dropped(
    procs: Processes, fresh_server: NatsServer, nc: NATS
) -> None:
    registry = run(procs, fresh_server, "registry.yaml")
    run(procs, fresh_server, "node.yaml")
    await eventually(lambda: info(nc, "registry"), lambda i: i.flows == 5)

    for _ in range(20):  # a flood from one sender is logged once
        await nc.publish(subjects.node_heartbeat("noisy"), b"\xc1\xc1 not msgpack")
    body, headers = encode(catalog("node", 99, 0), JSON)  # impostor: node's entry, x's subject
    await nc.publish(subjects.node_catalog("impostor"), body, headers=headers)
    await nc.publish(subjects.node_bye("node"), b'{"node": 42}', headers={"Content-Type": JSON})

    reg = await eventually(lambda: info(nc, "registry"), lambda i: i.rejected >= 22)
    assert reg.rejected == 22
    assert reg.flows == 5  # the impostor changed nothing
    assert (await flows(nc, "registry", node="node")).items[0].status == "online"

    await nc.publish(subjects.SYNC, b"[1, 2", headers={"Content-Type": JSON})
    await eventually(lambda: info(nc, "node"), lambda i: i.rejected == 1)
    body, headers = encode(SyncRequest(registry="test"))
    await nc.publish(subjects.SYNC, body, headers=headers)  # still answering afterwards
    assert (await info(nc, "node")).rejected == 1

    procs.stop(registry)
    assert registry.stdout is not None
    log = registry.stdout.read()
    assert log.count("dropped a bad message from noisy") == 1
    assert "announcement for node 'node' on node 'impostor'" in log
    (await check_bus(fresh_server.url)).assert_ok()


async def test_services_are_nats_micro_services(
    procs: Processes, fresh_server: NatsServer, nc: NATS
) -> None:
    for name in ("node", "registry", "hybrid"):
        run(procs, fresh_server, f"{name}.yaml")
    for name in ("node", "registry", "hybrid"):
        await eventually(lambda n=name: info(nc, n), lambda i: True)  # type: ignore[misc]

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    subject = control_subject(ServiceVerb.INFO, name=subjects.MICRO_SERVICE_NAME)
    await nc.publish(subject, b"", reply=inbox)
    found: dict[str, dict[str, Any]] = {}
    while len(found) < 3:
        reply = json.loads((await sub.next_msg(timeout=5)).data)
        found[reply["metadata"]["id"]] = reply
    assert set(found) == {"node", "registry", "hybrid"}
    hybrid = found["hybrid"]
    assert hybrid["version"] == "0.1.0"
    assert hybrid["description"] == "kodo-bus hybrid hybrid"
    assert {e["subject"] for e in hybrid["endpoints"]} >= {
        subjects.svc_info("hybrid"),
        subjects.svc_flows("hybrid"),
        subjects.svc_catalog("hybrid"),
    }
    ping = await nc.request(
        control_subject(ServiceVerb.PING, name=subjects.MICRO_SERVICE_NAME, id=hybrid["id"]),
        b"",
        timeout=2,
    )
    assert json.loads(ping.data)["name"] == subjects.MICRO_SERVICE_NAME
    (await check_bus(fresh_server.url)).assert_ok()


async def test_two_buses_joined_by_connect(
    procs: Processes, server_factory: Callable[[str], NatsServer]
) -> None:
    """Bus A: a node and a registry; bus B: a hybrid (provider) and a registry of its own."""
    a, b = server_factory("a"), server_factory("b")
    run(procs, a, "node.yaml")
    run(procs, a, "registry.yaml", "--id", "ra", "--connect", b.url)
    run(procs, b, "hybrid.yaml", "--connect", a.url)
    run(procs, b, "registry.yaml", "--id", "rb")
    nca, ncb = await nats.connect(a.url), await nats.connect(b.url)
    try:
        await wait_totals(nca, {"node": 5, "ra": 55})
        await wait_totals(ncb, {"hybrid": 50, "rb": 55})
        # Entries taken in keep the URL of the bus they live on, so a client can launch there.
        from_b = await flows(nca, "ra", node="hybrid")
        assert {tuple(f.urls) for f in from_b.items} == {(b.url,)}
        from_a = await flows(ncb, "rb", node="node")
        assert {tuple(f.urls) for f in from_a.items} == {(a.url,)}
        # A provider never takes in: the hybrid holds only its own organization.
        assert (await info(ncb, "hybrid")).nodes == 1

        await request(ncb, subjects.svc_disconnect("hybrid"), Empty(), Ack)
        await wait_totals(nca, {"ra": 5})
        await request(nca, subjects.svc_disconnect("ra"), Empty(), Ack)
        await wait_totals(ncb, {"rb": 0, "hybrid": 50})
    finally:
        await nca.drain()
        await ncb.drain()
    for bus in (a, b):
        (await check_bus(bus.url)).assert_ok()
