"""Replicas: N `kodo-bus run` processes serving one node id are one entry with N replicas.

Real processes on a real nats-server: the view holds one entry, written once, not once per
heartbeat; the death of one replica (SIGKILL) ends its executions `lost` while the others'
finish; a nats-server outage longer than the registry's ttl ends nothing `lost`.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kodo_bus import subjects
from kodo_bus.bus import request
from kodo_bus.client import Client
from kodo_bus.execution_ref import Execution
from kodo_bus.executions import read_record
from kodo_bus.models import TERMINAL_STATUSES, Empty, NodeItem, NodesPage
from kodo_bus.server import NatsServer

from .conftest import Processes
from .test_reliability_support import (
    BEAT,
    all_events,
    check_complete,
    eventually,
    first_event,
    node_body,
    online_flow,
    service,
)

TTL = 1.5
HOLD = TTL + 2 + 6 + 4


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns() % 10**10}"


def replica(
    procs: Processes, tmp: Path, name: str, urls: list[str], ray: str | None, **body: Any
) -> tuple[subprocess.Popen[str], Path]:
    """One process of a node id: its config and log in a folder of its own; (process, log)."""
    folder = tmp / name
    folder.mkdir()
    proc = service(procs, folder, urls, ray, **body)
    return proc, folder / f"{body['id']}.log"


async def instance_of(log: Path) -> str:
    """The instance id a process logged when it was ready."""

    async def ready() -> str:
        text = await asyncio.to_thread(log.read_text)
        for line in text.splitlines():
            if " ready (" in line and "; instance " in line:
                return line.rsplit("; instance ", 1)[1].strip()
        return ""

    return await eventually(ready, bool, timeout=60)


async def node_item(kb: Client, registry: str, node: str) -> NodeItem | None:
    page = await request(kb.nc, subjects.svc_nodes(registry), Empty(), NodesPage, timeout=2)
    return next((n for n in page.items if n.id == node), None)


async def view_writes(kb: Client, registry: str) -> int:
    """Messages ever stored in the registry's view bucket (one per KV write)."""
    stream = subjects.kv_stream(subjects.bucket_view(registry))
    return int((await kb.js.stream_info(stream)).state.last_seq)


async def test_two_replicas_are_one_entry_and_a_heartbeat_writes_nothing(
    nats_server: NatsServer, procs: Processes, tmp_path: Path
) -> None:
    """Two catalog-only processes with one id and the same flows: one entry, two replicas,
    and over many heartbeats of both not one write to the view bucket."""
    urls = [nats_server.url]
    registry, node = unique("rep-reg"), unique("rep-node")
    service(procs, tmp_path, urls, id=registry, role="registry", ttl=TTL)
    replica(procs, tmp_path, "a", urls, None, **node_body(node))
    replica(procs, tmp_path, "b", urls, None, **node_body(node))
    async with Client(urls) as kb:
        await online_flow(kb, f"{node}/echo")
        await eventually(lambda: view_writes(kb, registry), lambda n: n >= 1)
        # both processes are heard; then ten heartbeats of each, and the view stays as it is
        item = await eventually(
            lambda: node_item(kb, registry, node), lambda i: i is not None and i.replicas == 2
        )
        assert item is not None and item.status == "online"
        before = await view_writes(kb, registry)
        deadline = time.monotonic() + 10 * BEAT
        while time.monotonic() < deadline:
            await asyncio.sleep(BEAT)
            assert await view_writes(kb, registry) == before, "a heartbeat wrote the view"
        page = await request(kb.nc, subjects.svc_nodes(registry), Empty(), NodesPage, timeout=2)
        assert [n.id for n in page.items].count(node) == 1
    log = (tmp_path / f"{registry}.log").read_text()
    flows_lines = [
        line for line in log.splitlines() if f"node {node}: " in line and "flows" in line
    ]
    assert len(flows_lines) == 1, flows_lines


@pytest.mark.ray
@pytest.mark.slow
async def test_sigkill_of_one_replica_ends_its_executions_lost_the_others_finish(
    nats_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path
) -> None:
    """Two replicas hold executions; one is SIGKILLed. Its executions end `lost` within about
    the ttl; the other replica's run to `finished`. Each ends exactly once."""
    urls = [nats_server.url]
    registry, node = unique("rep-reg"), unique("rep-kill")
    service(procs, tmp_path, urls, id=registry, role="registry", ttl=TTL)
    body = node_body(node, ttl=TTL, max_running=4)
    victim, victim_log = replica(procs, tmp_path, "a", urls, ray_address, **body)
    _, other_log = replica(procs, tmp_path, "b", urls, ray_address, **body)
    dead, alive = await instance_of(victim_log), await instance_of(other_log)
    async with Client(urls) as kb:
        await eventually(
            lambda: node_item(kb, registry, node), lambda i: i is not None and i.replicas == 2
        )
        flow = await online_flow(kb, f"{node}/hold")
        kv = await kb.js.key_value(subjects.BUCKET_EXECUTIONS)

        async def holder(ex: Execution) -> str:
            got = await read_record(kv, subjects.record_key(kb.user, ex.id))
            assert got is not None
            return got[0].instance

        # launches spread over the replicas (one queue group): launch until each holds one
        held: dict[str, list[Execution]] = {dead: [], alive: []}
        tags: dict[str, str] = {}
        # Held longer than the bound this test gives `lost` (TTL + 2 + 6 s after the kill):
        # a worker Ray has not yet killed along with its node must not finish first.
        for i in range(40):
            ex = await flow.launch({"seconds": HOLD, "tag": str(i)})
            tags[ex.id] = str(i)
            held.setdefault(await holder(ex), []).append(ex)
            if held[dead] and held[alive] and i >= 3:
                break
        assert held[dead] and held[alive], {k: len(v) for k, v in held.items()}
        await asyncio.gather(*(first_event(ex, "result") for ex in held[dead]))
        killed = time.monotonic()
        procs.stop(victim, signal.SIGKILL)
        for ex in held[dead]:
            record = await eventually(
                lambda ex=ex: ex.record(),  # type: ignore[misc]
                lambda r: r.status in TERMINAL_STATUSES,
                timeout=TTL + 2 + 8,
            )
            assert record.status == "lost"
        took = time.monotonic() - killed
        assert took < TTL + 2 + 6, f"lost after {took:.1f} s"
        for ex in held[alive]:
            assert await ex.result(timeout=60) == tags[ex.id]
        for ex in held[dead] + held[alive]:
            check_complete(await all_events(ex))


@pytest.mark.ray
@pytest.mark.slow
async def test_server_outage_longer_than_ttl_loses_no_live_execution(
    fresh_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path
) -> None:
    """The nats-server is SIGKILLed for twice the registry's ttl while a live node holds
    executions running and queued; it comes back on the same port and store. None ends
    `lost`; each ends `finished` exactly once (one terminal status in the stream)."""
    ttl, outage = 3.0, 6.0
    urls = [fresh_server.url]
    registry, node = unique("out-reg"), unique("out-node")
    service(procs, tmp_path, urls, id=registry, role="registry", heartbeat=1.0, ttl=ttl)
    service(procs, tmp_path, urls, ray_address, **node_body(node, max_running=2, heartbeat=1.0))
    async with Client(urls, retry=-1) as kb:
        flow = await online_flow(kb, f"{node}/hold")
        warm = await flow.launch({"seconds": 0, "tag": "warm"})
        assert await warm.result(timeout=60) == "warm"
        launched = [await flow.launch({"seconds": 4, "tag": str(i)}) for i in range(8)]
        await asyncio.gather(*(first_event(ex, "result") for ex in launched[:2]))
        fresh_server.kill()
        await asyncio.sleep(outage)  # the outage itself: what this test is about
        await asyncio.to_thread(fresh_server.restart)
        results = await asyncio.gather(
            *(ex.result(timeout=120) for ex in launched), return_exceptions=True
        )
        assert results == [str(i) for i in range(8)], results
        for ex in launched:
            events = await all_events(ex)
            ends = [
                e for e in events if e.kind == "status" and e.data["status"] in TERMINAL_STATUSES
            ]
            assert [e.data["status"] for e in ends] == ["finished"], ex.id
            check_complete(events)
    log = (tmp_path / f"{registry}.log").read_text()
    assert "marked lost" not in log
