"""A 3-server JetStream cluster (deploy/cluster/ confs, on free loopback ports): one server
killed with SIGKILL mid-run loses nothing, and every party that listed all three URLs carries on.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kodo_bus import subjects
from kodo_bus.bus import connect
from kodo_bus.client import Client
from kodo_bus.config import ConnectSettings, ServerSettings
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes, free_ports
from .invariants import check_bus
from .test_reliability_support import (
    all_events,
    check_complete,
    eventually,
    node_body,
    online_flow,
    service,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]
DEPLOY = REPO / "deploy" / "cluster"
N = 3000


def cluster_conf(name: str, client: list[int], routes: list[int], out: Path) -> Path:
    """deploy/cluster/<name>.conf with this test's ports (and no monitoring port)."""
    text = (DEPLOY / f"{name}.conf").read_text()
    for i in range(3):
        text = re.sub(rf"\b{4222 + i}\b", str(client[i]), text)
        text = re.sub(rf"\b{6222 + i}\b", str(routes[i]), text)
    text = re.sub(r"(?m)^http: .*$", "", text)
    path = out / f"{name}.conf"
    path.write_text(text)
    return path


def cluster_servers(tmp_path: Path) -> list[NatsServer]:
    """The three servers of deploy/cluster on free ports, not started yet."""
    ports = free_ports(6)
    client, routes = ports[:3], ports[3:]
    return [
        NatsServer(
            ServerSettings(
                port=client[i],
                http_port=None,
                store=tmp_path / f"s{i + 1}",
                config=cluster_conf(f"s{i + 1}", client, routes, tmp_path),
                server_name=f"s{i + 1}",
            )
        )
        for i in range(3)
    ]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    servers = cluster_servers(tmp_path)
    try:
        for server in servers:  # started in turn; each is ready once it listens
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


async def test_cluster_server_killed_mid_run_loses_nothing(
    cluster: list[NatsServer], ray_address: str, procs: Processes, tmp_path: Path
) -> None:
    """What is lost: nothing — every event of the running execution, in order, the view and
    the records (R3) survive the SIGKILL of the server everyone was connected to."""
    urls = [s.url for s in cluster]
    nc = await connect(ConnectSettings(nats=urls, retry=-1))
    try:  # JetStream is usable once the cluster has elected its meta leader
        await eventually(nc.jetstream().account_info, lambda _: True, timeout=30)
    finally:
        await nc.close()
    service(procs, tmp_path, urls, id="cl-reg", role="registry", replicas=3)
    service(procs, tmp_path, urls, ray_address, **node_body("cl-node", replicas=3))
    async with Client(urls, retry=-1) as kb:
        flow = await online_flow(kb, "cl-node/emit")
        info = await kb.js.stream_info(subjects.STREAM_EVENTS)
        assert info.config.num_replicas == 3
        kv = await kb.js.stream_info(subjects.kv_stream(subjects.BUCKET_EXECUTIONS))
        assert kv.config.num_replicas == 3
        view = await kb.js.stream_info(subjects.kv_stream(subjects.bucket_view("cl-reg")))
        assert view.config.num_replicas == 3
        ex = await flow.launch({"n": N, "batch": 100, "pause": 0.05})
        live: list[int] = []
        halfway = asyncio.Event()

        async def read_live() -> None:
            async for event in ex.events():
                if event.kind == "text":
                    live.append(int(event.data))
                    if len(live) == N // 3:
                        halfway.set()

        reader = asyncio.create_task(read_live())
        async with asyncio.timeout(60):
            await halfway.wait()
        t0 = time.monotonic()
        cluster[0].kill()  # every connection was on s1, the first URL listed
        try:
            async with asyncio.timeout(90):
                await reader
        except TimeoutError:
            rec = await ex.record()
            last = await kb.js.get_last_msg(
                subjects.STREAM_EVENTS, subjects.events_of_execution(ex.id)
            )
            raise AssertionError(
                f"reader stuck at {len(live)}; {rec}; last {last.data!r}"
            ) from None
        assert live == list(range(N))
        assert await ex.result(timeout=30) == N
        events = await all_events(ex)
        check_complete(events)
        assert [int(e.data) for e in events if e.kind == "text"] == list(range(N))
        # the registry and the node carried on with two servers: a new launch runs (once the
        # buckets have new leaders, a launch may be refused and retried meanwhile)
        echo = await online_flow(kb, "cl-node/echo")
        again = await eventually(lambda: echo.launch({"after": "s1"}), lambda _: True)
        assert await again.result(timeout=60) == {"after": "s1"}
        print(f"carried on {time.monotonic() - t0:.1f} s after s1 was killed")
    (await check_bus(urls)).assert_ok()
