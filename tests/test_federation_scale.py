"""One registry holds 1,000 nodes x 20 flows with a heartbeat per node every 5 s, cheaply."""

from __future__ import annotations

import asyncio
import time

import psutil
from nats.aio.client import Client as NATS

from kodo_bus import subjects
from kodo_bus.codec import encode
from kodo_bus.models import Catalog, FlowInfo, Heartbeat
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .invariants import check_bus
from .test_federation import EXAMPLES, eventually, info, nc, nodes

__all__ = ["nc"]

NODES = 1000
FLOWS = 20
BEAT = 5.0


async def test_registry_holds_a_thousand_nodes(
    procs: Processes, fresh_server: NatsServer, nc: NATS
) -> None:
    registry = procs.start(
        "run", "--config", str(EXAMPLES / "registry.yaml"), "--nats", fresh_server.url,
        "--heartbeat", str(BEAT), "--log-level", "WARNING", cwd=REPO,
    )  # fmt: skip
    await eventually(lambda: info(nc, "registry"), lambda i: True)
    flows = [
        FlowInfo(name=f"flow{j}", summary=f"flow number {j}", tags=["t"]) for j in range(FLOWS)
    ]
    ids = [f"n{i:04d}" for i in range(NODES)]
    for node in ids:
        body, headers = encode(Catalog(node=node, revision=1, flows=flows))
        await nc.publish(subjects.node_catalog(node), body, headers=headers)
    await eventually(lambda: info(nc, "registry"), lambda i: i.flows == NODES * FLOWS, timeout=30)

    js = nc.jetstream()
    stream = "KV_" + subjects.bucket_view("registry")
    await eventually(lambda: js.stream_info(stream), lambda s: s.state.messages == NODES)
    writes_before = (await js.stream_info(stream)).state.last_seq
    proc = psutil.Process(registry.pid)
    cpu_before = sum(proc.cpu_times()[:2])
    started = time.monotonic()
    for _ in range(2):  # two heartbeat periods, each node once per period, evenly spread
        for node in ids:
            body, headers = encode(Heartbeat(node=node, revision=1, ts=time.time()))
            await nc.publish(subjects.node_heartbeat(node), body, headers=headers)
            await asyncio.sleep(BEAT / NODES)
    await nc.flush()
    elapsed = time.monotonic() - started
    cpu = (sum(proc.cpu_times()[:2]) - cpu_before) / elapsed

    assert cpu < 0.5, f"registry used {cpu:.2f} of a core for {NODES} nodes"
    assert (await js.stream_info(stream)).state.last_seq == writes_before, "heartbeats wrote KV"
    page = await nodes(nc, "registry")
    assert page.total == NODES
    assert {n.status for n in page.items} == {"online"}
    (await check_bus(fresh_server.url)).assert_ok()
