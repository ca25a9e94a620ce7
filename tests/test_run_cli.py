"""`kodo-bus run | info | nodes | flows | disconnect` as a user types them."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .test_federation import eventually, flows, info, nc, run

__all__ = ["nc"]


def cli(procs: Processes, server: NatsServer, *args: str) -> tuple[int, str]:
    proc = procs.start(*args, env={"KODO_NATS": server.url}, cwd=REPO)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


async def test_federation_commands(procs: Processes, fresh_server: NatsServer, nc: NATS) -> None:
    run(procs, fresh_server, "node.yaml")
    run(procs, fresh_server, "registry.yaml")
    await eventually(lambda: info(nc, "registry"), lambda i: i.flows == 5)

    code, out = cli(procs, fresh_server, "info", "registry", "--json")
    assert code == 0, out
    assert json.loads(out)["feed"] is True

    code, out = cli(procs, fresh_server, "nodes", "--json")  # discovers the registry
    assert code == 0, out
    assert [n["id"] for n in json.loads(out)["items"]] == ["node"]

    code, out = cli(procs, fresh_server, "flows", "--via", "registry", "--tag", "stats", "--json")
    assert code == 0, out
    assert sorted(f["name"] for f in json.loads(out)["items"]) == ["chars", "words"]

    code, out = cli(procs, fresh_server, "flows", "--query", "reverse")
    assert code == 0, out
    assert "reverse" in out
    assert "1 flows" in out

    code, out = cli(procs, fresh_server, "disconnect", "node")
    assert code == 0, out
    await eventually(lambda: info(nc, "registry"), lambda i: i.flows == 0)


async def test_run_refuses_bad_options(procs: Processes, fresh_server: NatsServer) -> None:
    code, out = cli(procs, fresh_server, "run", "--role", "boss")
    assert code == 2
    assert "--role" in out
    code, out = cli(procs, fresh_server, "run", "--id", "a.b")
    assert code == 2
    assert "cannot be used in NATS subjects" in out


async def test_info_of_a_missing_service_fails_cleanly(
    procs: Processes, fresh_server: NatsServer
) -> None:
    code, out = cli(procs, fresh_server, "info", "nobody")
    assert code == 2  # an unknown id, as an unknown flow or execution id
    assert "no service 'nobody' answers on this bus" in out


async def test_up_runs_bus_registry_and_example_node(procs: Processes, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    up = procs.start(
        "up",
        "--port",
        str(port),
        "--http-port",
        "0",
        "--web-port",
        "0",
        "--store",
        str(tmp_path),
        cwd=REPO,
    )
    client = None
    try:
        deadline = time.monotonic() + 30
        while client is None:
            try:
                client = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=1)
            except Exception:  # not up yet
                assert time.monotonic() < deadline, "the bus did not come up"
                assert up.poll() is None, up.stdout.read() if up.stdout else ""
                await asyncio.sleep(0.2)
        page = await eventually(
            lambda: flows(client, "up-node"), lambda p: p.total == 9, timeout=30
        )
        assert {i.name for i in page.items} >= {"hello", "hitl", "calc", "extract", "throughput"}
        assert {i.node for i in page.items} == {"up-node"}
    finally:
        if client is not None:
            await client.drain()
    assert procs.stop(up) == 0
