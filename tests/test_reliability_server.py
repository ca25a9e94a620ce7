"""Reliability of the bus: nats-server killed with SIGKILL mid-execution, registry killed.

Real nats-server (SIGKILL, then restarted on the same ports and store), real `kodo-bus run`
processes, the session's Ray.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from kodo_bus import subjects
from kodo_bus.bus import connect, request
from kodo_bus.client import Client
from kodo_bus.config import ConnectSettings
from kodo_bus.models import Empty, FlowsPage, FlowsQuery, ServiceInfo
from kodo_bus.server import NatsServer

from .conftest import Processes
from .invariants import check_bus
from .test_reliability_support import (
    all_events,
    check_complete,
    eventually,
    node_body,
    online_flow,
    service,
)

N = 5000


@pytest.mark.ray
@pytest.mark.slow
async def test_server_sigkill_mid_execution_loses_no_event(
    fresh_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path
) -> None:
    """What is lost: nothing — 5,000 events in order, no gap, no duplicate, and the flow ends."""
    urls = [fresh_server.url]
    service(procs, tmp_path, urls, id="srv-reg", role="registry")
    service(procs, tmp_path, urls, ray_address, **node_body("srv-node"))
    async with Client(urls, retry=-1) as kb:
        flow = await online_flow(kb, "srv-node/emit")
        ex = await flow.launch({"n": N, "batch": 100, "pause": 0.05})
        live: list[int] = []
        killed = asyncio.Event()

        async def read_live() -> None:
            async for event in ex.events():
                if event.kind == "text":
                    live.append(int(event.data))
                    if len(live) == 1000:
                        killed.set()

        reader = asyncio.create_task(read_live())
        async with asyncio.timeout(60):
            await killed.wait()
        fresh_server.kill()
        t0 = time.monotonic()
        await asyncio.to_thread(fresh_server.restart)
        assert time.monotonic() - t0 < 5
        async with asyncio.timeout(90):
            await reader
        assert live == list(range(N))
        assert await ex.result(timeout=30) == N
        events = await all_events(ex)
        check_complete(events)
        assert [int(e.data) for e in events if e.kind == "text"] == list(range(N))
        assert events[-1].data == {"status": "finished"}
        # the node and the registry reconnected by themselves and serve a new launch
        again = await (await online_flow(kb, "srv-node/echo")).launch({"after": "restart"})
        assert await again.result(timeout=60) == {"after": "restart"}
    (await check_bus(urls)).assert_ok()


@pytest.mark.usefixtures("invariants")
async def test_registry_killed_restarts_with_its_view_at_once(
    nats_server: NatsServer, procs: Processes, tmp_path: Path
) -> None:
    """The restarted registry's first answer is its whole view (from KV); nodes are not touched.
    What is lost: nothing."""
    tag = f"{time.monotonic_ns() % 10**10}"
    registry, nodes = f"reg-{tag}", [f"n{i}-{tag}" for i in range(3)]
    urls = [nats_server.url]
    for node in nodes:  # catalog-only nodes: Ray is never started
        service(procs, tmp_path, urls, **node_body(node))
    reg = service(procs, tmp_path, urls, id=registry, role="registry")
    nc = await connect(ConnectSettings(nats=urls))
    try:

        async def listed() -> FlowsPage:
            """This test's nodes' flows (the session bus has other tests' nodes too)."""
            query = FlowsQuery(limit=10_000)
            page = await request(nc, subjects.svc_flows(registry), query, FlowsPage, timeout=2)
            mine = [f for f in page.items if f.node in nodes]
            return page.model_copy(update={"items": mine, "total": len(mine)})

        def all_online(page: FlowsPage) -> bool:
            return {f.node for f in page.items if f.status == "online"} == set(nodes)

        before = await eventually(listed, all_online)
        procs.stop(reg, signal.SIGKILL)
        service(procs, tmp_path, urls, id=registry, role="registry")
        info = await eventually(
            lambda: request(nc, subjects.svc_info(registry), Empty(), ServiceInfo, timeout=1),
            lambda i: True,
        )
        first = await listed()  # the first answer holds the whole view, read from KV
        restored = (tmp_path / f"{registry}.log").read_text()
        assert f"view restored from {subjects.bucket_view(registry)}: 3 nodes" in restored
        assert info.nodes >= len(nodes)
        assert _names(first) == _names(before)
        # and the nodes, told nothing, are seen online by their heartbeats
        await eventually(listed, all_online, timeout=10)
    finally:
        await nc.close()


def _names(page: FlowsPage) -> list[tuple[str, str]]:
    return sorted((f.node, f.name) for f in page.items)
