"""The federation walkthrough on NATS: real nats-servers, real `kodo-bus run` subprocesses."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from nats.aio.client import Client as NATS

from kodo_bus import subjects
from kodo_bus.bus import request
from kodo_bus.errors import KodoError
from kodo_bus.models import Ack, Empty, FlowsPage, FlowsQuery, NodesPage, ServiceInfo
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .invariants import check_bus

EXAMPLES = REPO / "examples" / "federation"
BEAT = "0.3"
T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 15.0
) -> T:
    """Poll `probe` until `check` holds; fail with the last value seen at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | BaseException | None = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
            if check(last):
                return last
        except KodoError as exc:  # service not up yet
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s; last value: {last!r}")


async def info(nc: NATS, service: str) -> ServiceInfo:
    return await request(nc, subjects.svc_info(service), Empty(), ServiceInfo, timeout=1)


async def flows(nc: NATS, service: str, **query: object) -> FlowsPage:
    q = FlowsQuery.model_validate(query)
    return await request(nc, subjects.svc_flows(service), q, FlowsPage, timeout=1)


async def nodes(nc: NATS, service: str) -> NodesPage:
    return await request(nc, subjects.svc_nodes(service), Empty(), NodesPage, timeout=1)


async def totals(nc: NATS, *services: str) -> tuple[int, ...]:
    return tuple([(await flows(nc, s, limit=1)).total for s in services])


async def wait_totals(nc: NATS, expected: dict[str, int], timeout: float = 15.0) -> None:
    names = tuple(expected)
    want = tuple(expected.values())
    await eventually(lambda: totals(nc, *names), lambda got: got == want, timeout)


def run(
    procs: Processes, server: NatsServer, config: str | None, *args: str
) -> subprocess.Popen[str]:
    """`kodo-bus run` with short heartbeats, against `server`, from the repository root."""
    cmd = ["run", "--nats", server.url, "--heartbeat", BEAT, "--log-level", "DEBUG"]
    if config:
        cmd += ["--config", str(EXAMPLES / config)]
    return procs.start(*cmd, *args, cwd=REPO)


@pytest.fixture
async def nc(fresh_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(fresh_server.url)
    try:
        yield client
    finally:
        await client.drain()


async def test_walkthrough(procs: Processes, fresh_server: NatsServer, nc: NATS) -> None:
    node = run(procs, fresh_server, "node.yaml")
    registry = run(procs, fresh_server, "registry.yaml")
    run(procs, fresh_server, "hybrid.yaml")

    # 1. roles and totals
    await wait_totals(nc, {"node": 5, "registry": 55, "hybrid": 50})
    n, r, h = [await info(nc, s) for s in ("node", "registry", "hybrid")]
    assert (n.registry, r.registry, r.feed, h.registry, h.feed) == (False, True, True, True, False)
    assert h.organization == "Hybrid Org"

    # 2. node and registry stop; a restarted registry serves the same view at once
    assert procs.stop(node) == 0
    assert procs.stop(registry) == 0
    registry = run(procs, fresh_server, "registry.yaml")
    await eventually(lambda: info(nc, "registry"), lambda i: i.flows == 55, timeout=10)

    # 3. the node comes back with no flows and a new organization
    run(procs, fresh_server, None, "--id", "node", "--organization", "Node with New Name")
    await wait_totals(nc, {"node": 0, "registry": 50, "hybrid": 50})
    assert (await info(nc, "node")).organization == "Node with New Name"

    # 4. the hybrid leaves the federation but keeps serving its own flows
    proc = procs.start("disconnect", "hybrid", "--nats", fresh_server.url, "--json")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert Ack.model_validate_json(out).ok
    await wait_totals(nc, {"node": 0, "registry": 0, "hybrid": 50})
    hybrid_flows = await flows(nc, "hybrid", limit=1000)
    assert {f.node for f in hybrid_flows.items} == {"hybrid"}
    (await check_bus(fresh_server.url)).assert_ok()


@pytest.mark.parametrize("order", [("hybrid", "node", "registry"), ("registry", "hybrid", "node")])
async def test_totals_do_not_depend_on_start_order(
    procs: Processes, fresh_server: NatsServer, nc: NATS, order: tuple[str, ...]
) -> None:
    for name in order:
        run(procs, fresh_server, f"{name}.yaml")
        await eventually(lambda n=name: info(nc, n), lambda i: True)  # type: ignore[misc]
    await wait_totals(nc, {"node": 5, "registry": 55, "hybrid": 50})
    (await check_bus(fresh_server.url)).assert_ok()


async def test_killed_node_turns_offline_and_stays_listed(
    procs: Processes, fresh_server: NatsServer, nc: NATS
) -> None:
    node = run(procs, fresh_server, "node.yaml", "--ttl", "1.5")
    run(procs, fresh_server, "registry.yaml", "--ttl", "1.5")
    await wait_totals(nc, {"registry": 5})
    killed = time.monotonic()
    procs.stop(node, signal.SIGKILL)
    page = await eventually(
        lambda: nodes(nc, "registry"), lambda p: p.items[0].status == "offline", timeout=10
    )
    assert time.monotonic() - killed < 1.5 + 2 * float(BEAT) + 1.0
    assert page.total == 1
    listed = await flows(nc, "registry")
    assert listed.total == 5
    assert {f.status for f in listed.items} == {"offline"}
    (await check_bus(fresh_server.url)).assert_ok()


async def test_cache_reset_rebuilds_from_live_nodes(
    procs: Processes, fresh_server: NatsServer, nc: NATS
) -> None:
    node = run(procs, fresh_server, "node.yaml")
    run(procs, fresh_server, "hybrid.yaml")
    registry = run(procs, fresh_server, "registry.yaml")
    await wait_totals(nc, {"registry": 55})
    procs.stop(registry)
    procs.stop(node)
    run(procs, fresh_server, "registry.yaml", "--cache-reset")
    # The dead node is forgotten; the live hybrid answers kodo.sync within its random delay.
    await wait_totals(nc, {"registry": 50}, timeout=5)
    (await check_bus(fresh_server.url)).assert_ok()


async def test_bad_config_fails_at_start_with_file_key_and_reason(
    procs: Processes, fresh_server: NatsServer, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nheartbeat: -1\nbogus: 1\n")
    proc = procs.start("run", "--config", str(bad), "--nats", fresh_server.url, cwd=REPO)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert str(bad) in out.replace("\n", "")
    assert "heartbeat" in out
    assert "bogus" in out
    (await check_bus(fresh_server.url)).assert_ok()
