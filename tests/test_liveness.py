"""Liveness: `lost` only for what is really lost, and heartbeats that survive outages.

A real nats-server (SIGKILLed and restarted on the same port and store), a real registry
process with short `heartbeat`/`ttl`, and nodes that are either real `kodo-bus run` processes
or processes of this test that publish a node's announcements by hand (so a test decides
exactly when each replica beats, and the records it holds are plain `KODO_EXECUTIONS` records).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from kodo_bus import snapshot, subjects
from kodo_bus.bus import connect, ensure_execution_storage
from kodo_bus.codec import decode_msg, encode
from kodo_bus.config import ConnectSettings
from kodo_bus.executions import read_record
from kodo_bus.models import Catalog, FlowInfo, Heartbeat
from kodo_bus.server import NatsServer

from .conftest import Processes
from .test_execution_support import handmade
from .test_reliability_support import BEAT, eventually, node_body, service

TTL = 1.5
LOST_WITHIN = TTL + 2.0 + 4.0
"""ttl, the registry's grace (max(2 s, ttl)) and a margin for a loaded machine."""


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns() % 10**10}"


class FakeReplica:
    """One process of a node, played by this test: its catalog and heartbeats, sent until
    stopped, through outages (the connection reconnects by itself; a failed beat is retried)."""

    def __init__(self, nc: NATS, node: str, instance: str) -> None:
        self.nc, self.node, self.instance = nc, node, instance
        flows = [FlowInfo(name="f", summary="a flow of a fake node")]
        self.catalog = Catalog(node=node, revision=42, flows=flows, instance=instance)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FakeReplica:
        self.task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def _beat(self) -> None:
        catalog_subject = subjects.node_catalog(self.node)
        beat_subject = subjects.node_heartbeat(self.node)
        while True:
            with contextlib.suppress(Exception):  # an outage: the next beat is tried on time
                body, headers = encode(self.catalog)
                await self.nc.publish(catalog_subject, body, headers=headers)
                hb = Heartbeat(node=self.node, revision=42, ts=time.time(), instance=self.instance)
                body, headers = encode(hb)
                await self.nc.publish(beat_subject, body, headers=headers)
            await asyncio.sleep(BEAT)


async def running_record(nc: NATS, node: str, instance: str) -> str:
    """A `running` execution of `node` held by `instance`, as its runner would leave it (the
    record and its first events); its record key."""
    js = nc.jetstream()
    kv = await ensure_execution_storage(js, max_age=3600)
    trail = [("status", {"status": "starting"}), ("status", {"status": "running"})]
    record, _ = await handmade(js, kv, trail, node=node, last_seq=2, instance=instance)
    return subjects.record_key("local", record.execution)


async def status_of(nc: NATS, key: str) -> str:
    kv = await nc.jetstream().key_value(subjects.BUCKET_EXECUTIONS)
    got = await read_record(kv, key)
    assert got is not None
    return got[0].status


async def stays(nc: NATS, keys: list[str], status: str, seconds: float) -> None:
    """Every record keeps `status` for `seconds` (looked at ten times a second)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key in keys:
            assert await status_of(nc, key) == status, key
        await asyncio.sleep(0.1)


@pytest.fixture
async def nc(fresh_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await connect(ConnectSettings(nats=[fresh_server.url], retry=-1))
    try:
        yield conn
    finally:
        await conn.close()


async def registry_up(procs: Processes, tmp: Path, url: str, nc: NATS) -> str:
    """A registry with a short ttl, answering once it has made its view bucket."""
    registry = unique("live-reg")
    service(procs, tmp, [url], id=registry, role="registry", ttl=TTL)

    async def bucket() -> object:
        return await nc.jetstream().stream_info(subjects.kv_stream(subjects.bucket_view(registry)))

    await eventually(bucket, lambda _: True)
    return registry


async def test_a_dead_replica_ends_its_executions_lost_the_others_go_on(
    fresh_server: NatsServer, procs: Processes, tmp_path: Path, nc: NATS
) -> None:
    """Two processes serve one node; one falls silent. Its execution ends `lost` within about
    the ttl, while the other process keeps the node online and its execution running."""
    await registry_up(procs, tmp_path, fresh_server.url, nc)
    node = unique("twin")
    async with FakeReplica(nc, node, "aaaa0001") as a, FakeReplica(nc, node, "bbbb0002"):
        mine_a = await running_record(nc, node, "aaaa0001")
        mine_b = await running_record(nc, node, "bbbb0002")
        await stays(nc, [mine_a, mine_b], "running", TTL + 1)  # both heard: nothing ends
        await a.stop()
        silent = time.monotonic()
        await eventually(lambda: status_of(nc, mine_a), lambda s: s == "lost", LOST_WITHIN)
        took = time.monotonic() - silent
        assert took > TTL, f"lost after {took:.1f} s of silence, before the ttl"
        await stays(nc, [mine_b], "running", TTL + 2.5)


async def test_registry_outage_longer_than_ttl_ends_nothing(
    fresh_server: NatsServer, procs: Processes, tmp_path: Path, nc: NATS
) -> None:
    """The nats-server is down for more than twice the registry's ttl, then back: the node,
    beating again, keeps its executions; none is declared lost (the registry's clock did not
    count the time it could hear nothing)."""
    registry = await registry_up(procs, tmp_path, fresh_server.url, nc)
    node = unique("steady")
    async with FakeReplica(nc, node, "cccc0003"):
        key = await running_record(nc, node, "cccc0003")
        await stays(nc, [key], "running", 1.0)
        fresh_server.kill()
        await asyncio.sleep(2 * TTL + 1)  # the outage itself: what this test is about
        await asyncio.to_thread(fresh_server.restart)
        await stays(nc, [key], "running", TTL + 2.0 + 3.0)
    log = (tmp_path / f"{registry}.log").read_text()
    assert "back on NATS" in log, log[-2000:]
    assert "marked lost" not in log


async def test_node_announces_and_beats_again_after_a_server_restart(
    fresh_server: NatsServer, procs: Processes, tmp_path: Path, nc: NATS
) -> None:
    """A node whose server restarts announces its catalog again by itself (no registry asks
    with `kodo.sync` here) and goes on beating, with its instance id in both. A stream of this
    test keeps the announcements, so what the node sends while the test's own connection is
    still reconnecting is not missed."""
    node = unique("phoenix")
    js = nc.jetstream()
    stream = f"LIVENESS_{node.replace('-', '_')}"
    await js.add_stream(name=stream, subjects=[f"kodo.node.{node}.*"])
    service(procs, tmp_path, [fresh_server.url], **node_body(node))

    async def announced(kind: str) -> list[Catalog | Heartbeat]:
        model: type[Catalog | Heartbeat] = Catalog if kind == "catalog" else Heartbeat
        subject = f"kodo.node.{node}.{kind}"
        out: list[Catalog | Heartbeat] = []
        async for msg in snapshot.current(js, stream, subject, last_per_subject=False):
            out.append(decode_msg(msg, model))
        return out

    beats = await eventually(lambda: announced("heartbeat"), lambda b: len(b) >= 2)
    instance = beats[-1].instance
    assert instance
    catalogs = await eventually(lambda: announced("catalog"), lambda c: len(c) == 1)
    assert catalogs[0].instance == instance
    fresh_server.kill()
    await asyncio.to_thread(fresh_server.restart)
    catalogs = await eventually(lambda: announced("catalog"), lambda c: len(c) > 1, timeout=15)
    assert {c.instance for c in catalogs} == {instance}
    more = len(beats) + 3
    after = await eventually(lambda: announced("heartbeat"), lambda b: len(b) >= more, 15)
    assert {b.instance for b in after} == {instance}
