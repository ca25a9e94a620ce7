"""Nodes over time (issue 17, finding 5): stale and duplicate nodes.

Real `kodo-bus run` processes on a real nats-server. An offline node can be forgotten by every
registry at once (`kodo-bus forget`), a live one cannot; registries prune nodes offline past
their retention, also those restored from the bucket; a forgotten registry's bucket goes; offline
nodes never make a launch ambiguous, and only-offline names them with when they were last seen;
a second process claiming a node id with another catalog is refused at its start, while one
with the same catalog is a replica.
"""

from __future__ import annotations

import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest

from kodo_bus import subjects
from kodo_bus.client import Client
from kodo_bus.errors import AmbiguousFlow, FlowOffline
from kodo_bus.models import NodeItem
from kodo_bus.server import NatsServer

from .conftest import Processes
from .test_reliability_support import eventually, node_body, service

TTL = 1.5
OTHER_FLOWS = "tests.flowpkg.sdk_flows_b"


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns() % 10**10}"


def start(
    procs: Processes, tmp: Path, folder: str, urls: list[str], **body: Any
) -> subprocess.Popen[str]:
    """A service with its config and log in a folder of its own (two processes may share an
    id, and so a config file name)."""
    where = tmp / folder
    where.mkdir()
    return service(procs, where, urls, **body)


def cli(procs: Processes, server: NatsServer, *args: str) -> tuple[int, str]:
    """`kodo-bus ARGS --nats URL`: its exit code and what it printed."""
    proc = procs.start(*args, "--nats", server.url, env={"COLUMNS": "300"})
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


async def node_item(kb: Client, registry: str, node: str) -> NodeItem | None:
    return next((n for n in await kb.nodes(via=registry) if n.id == node), None)


async def status(kb: Client, registry: str, node: str) -> str | None:
    """The node's status in the registry's view; None when it is not listed."""
    item = await node_item(kb, registry, node)
    return None if item is None else item.status


async def stored(kb: Client, registry: str, node: str) -> bool:
    """Whether the registry's bucket holds an entry for the node."""
    kv = await kb.js.key_value(subjects.bucket_view(registry))
    try:
        entry = await kv.get(f"node.{node}")
    except nats.js.errors.KeyNotFoundError:
        return False
    return entry.value is not None and entry.value != b""


async def test_forget_drops_an_offline_node_from_every_registry_and_refuses_a_live_one(
    fresh_server: NatsServer, procs: Processes, tmp_path: Path
) -> None:
    """Two registries, one node. `forget` of the live node is refused and changes nothing;
    once it stopped (listed offline), `forget` removes it from both views and both buckets at
    once; a second `forget` says it is not there. `forget` of a stopped registry deletes its
    view bucket."""
    urls = [fresh_server.url]
    reg_a, reg_b, node = unique("fg-reg-a"), unique("fg-reg-b"), unique("fg-node")
    service(procs, tmp_path, urls, id=reg_a, role="registry", ttl=TTL)
    registry_b = service(procs, tmp_path, urls, id=reg_b, role="registry", ttl=TTL)
    proc = service(procs, tmp_path, urls, **node_body(node, ttl=TTL))
    async with Client(urls) as kb:
        for reg in (reg_a, reg_b):
            await eventually(partial(status, kb, reg, node), lambda s: s == "online")

        code, out = cli(procs, fresh_server, "forget", node)
        assert code == 2, out
        assert f"node {node} is online; stop it first or use disconnect" in out, out
        assert "Traceback" not in out, out
        assert await status(kb, reg_a, node) == "online"

        procs.stop(proc)  # a graceful stop: the node stays listed, offline
        for reg in (reg_a, reg_b):
            await eventually(partial(status, kb, reg, node), lambda s: s == "offline")
            assert await stored(kb, reg, node)

        code, out = cli(procs, fresh_server, "forget", node)
        assert code == 0, out
        for reg in (reg_a, reg_b):
            assert f"{reg}: {node} forgotten" in out, out
            assert await status(kb, reg, node) is None  # answered once the view changed
            await eventually(partial(stored, kb, reg, node), lambda s: not s)

        code, out = cli(procs, fresh_server, "forget", node)
        assert code == 0, out
        assert f"{reg_a}: {node} was not in its view" in out, out

        # a registry gone for good: its bucket is an orphan, deleted by forget
        view_b = subjects.kv_stream(subjects.bucket_view(reg_b))
        await kb.js.stream_info(view_b)
        procs.stop(registry_b)
        code, out = cli(procs, fresh_server, "forget", reg_b)
        assert code == 0, out
        assert f"deleted the view bucket of registry {reg_b}" in out, out
        with pytest.raises(nats.js.errors.NotFoundError):
            await kb.js.stream_info(view_b)
        await kb.js.stream_info(subjects.kv_stream(subjects.bucket_view(reg_a)))


async def test_registries_prune_nodes_offline_past_the_retention(
    fresh_server: NatsServer, procs: Processes, tmp_path: Path
) -> None:
    """With a retention of 2 s, a stopped node leaves the view and the bucket; a live one
    stays however long it lives. An offline entry restored from the bucket by a restarted
    registry is pruned too."""
    urls = [fresh_server.url]
    registry, gone, alive = unique("pr-reg"), unique("pr-gone"), unique("pr-alive")
    reg = start(procs, tmp_path, "r1", urls, id=registry, role="registry", ttl=TTL, retention=2)
    victim = service(procs, tmp_path, urls, **node_body(gone, ttl=TTL))
    service(procs, tmp_path, urls, **node_body(alive, ttl=TTL))
    async with Client(urls) as kb:
        for node in (gone, alive):
            await eventually(partial(status, kb, registry, node), lambda s: s == "online")
        procs.stop(victim)
        await eventually(lambda: status(kb, registry, gone), lambda s: s == "offline")
        await eventually(lambda: status(kb, registry, gone), lambda s: s is None, timeout=20)
        await eventually(lambda: stored(kb, registry, gone), lambda s: not s)
        assert await status(kb, registry, alive) == "online"  # 2 s past the retention

        # a registry that was away: the offline entry it restores is pruned at once
        procs.stop(reg)
        reg = start(procs, tmp_path, "r2", urls, id=registry, role="registry", ttl=TTL)
        await eventually(lambda: status(kb, registry, alive), lambda s: s == "online")
        victim = start(procs, tmp_path, "g2", urls, **node_body(gone, ttl=TTL))
        await eventually(lambda: status(kb, registry, gone), lambda s: s == "online")
        procs.stop(victim)
        await eventually(lambda: status(kb, registry, gone), lambda s: s == "offline")
        await eventually(lambda: stored(kb, registry, gone), bool)
        procs.stop(reg)  # the entry stays stored, offline; it ages while no registry runs
        start(procs, tmp_path, "r3", urls, id=registry, role="registry", ttl=TTL, retention=2)
        await eventually(lambda: status(kb, registry, alive), lambda s: s == "online")
        await eventually(lambda: stored(kb, registry, gone), lambda s: not s, timeout=20)
        assert await status(kb, registry, gone) is None
    log = (tmp_path / "r3" / f"{registry}.log").read_text()
    assert "pruned 1 nodes offline for more than 2 s" in log, log[-3000:]


async def test_offline_nodes_never_make_a_launch_ambiguous(
    fresh_server: NatsServer, procs: Processes, tmp_path: Path
) -> None:
    """Three nodes offer `echo`. All online: ambiguous. One online, two offline: the online
    one. Only offline: an error naming each with when it was last seen (SDK and CLI)."""
    urls = [fresh_server.url]
    registry = unique("amb-reg")
    nodes = [unique(f"amb-{n}") for n in "abc"]
    service(procs, tmp_path, urls, id=registry, role="registry", ttl=TTL)
    running = {n: service(procs, tmp_path, urls, **node_body(n, ttl=TTL)) for n in nodes}
    async with Client(urls) as kb:
        for node in nodes:
            await eventually(partial(status, kb, registry, node), lambda s: s == "online")
        with pytest.raises(AmbiguousFlow):
            await kb.flow("echo", via=registry)

        for node in nodes[1:]:
            procs.stop(running[node])
        flow = await eventually(lambda: kb.flow("echo", via=registry), lambda f: True)
        assert flow.node == nodes[0] and flow.status == "online"

        procs.stop(running[nodes[0]])
        await eventually(lambda: status(kb, registry, nodes[0]), lambda s: s == "offline")
        with pytest.raises(FlowOffline) as caught:
            await kb.flow("echo", via=registry)
        message = str(caught.value)
        assert "offered only by offline nodes" in message, message
        for node in nodes:
            assert f"{node}/echo (last seen " in message, message
        with pytest.raises(FlowOffline):  # named on its node: the same error, not a dead launch
            await kb.flow(f"{nodes[0]}/echo", via=registry)

    code, out = cli(procs, fresh_server, "launch", "echo", "--via", registry)
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith("error: 'echo' is offered only by offline nodes"), out
    assert "Traceback" not in out, out


async def test_a_second_process_with_another_catalog_is_refused_a_replica_joins(
    fresh_server: NatsServer, procs: Processes, tmp_path: Path
) -> None:
    """A process claiming a live node id with other flows exits at once with a clear error and
    changes nothing; one with the same flows joins as a replica."""
    urls = [fresh_server.url]
    registry, node = unique("cl-reg"), unique("cl-node")
    service(procs, tmp_path, urls, id=registry, role="registry", ttl=TTL)
    start(procs, tmp_path, "first", urls, **node_body(node, ttl=TTL))
    async with Client(urls) as kb:
        await eventually(lambda: status(kb, registry, node), lambda s: s == "online")
        rival = start(
            procs, tmp_path, "rival", urls, id=node, role="node", flows=[{"module": OTHER_FLOWS}]
        )
        out, _ = rival.communicate(timeout=60)
        assert rival.returncode == 2, out
        assert f"node id {node!r} is taken: a live process (instance " in out, out
        assert "with another catalog" in out and "Traceback" not in out, out
        item = await node_item(kb, registry, node)
        assert item is not None and item.status == "online" and item.replicas == 1
        assert (await kb.flow(f"{node}/echo", via=registry)).status == "online"

        start(procs, tmp_path, "replica", urls, **node_body(node, ttl=TTL))
        await eventually(
            lambda: node_item(kb, registry, node), lambda i: i is not None and i.replicas == 2
        )
