"""The federation walkthrough, played step by step against a bus of its own.

    python examples/federation/walkthrough.py

Starts a nats-server on free ports (clients and monitoring: it runs beside a `kodo-bus up` on
the defaults), then a node (5 flows), a registry and a hybrid (50 flows, an organization of its
own) as `kodo-bus run` subprocesses, and prints what each one serves after every step. Exits 1 if
a step did not show what it should. Everything it starts is stopped by PID at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from kodo_bus import subjects
from kodo_bus.bus import request
from kodo_bus.config import ServerSettings
from kodo_bus.errors import KodoError
from kodo_bus.models import Ack, Empty, FlowsPage, FlowsQuery, ServiceInfo
from kodo_bus.server import NatsServer

HERE = Path(__file__).resolve().parent
SERVICES = ("node", "registry", "hybrid")
UNEXPECTED: list[str] = []
"""Steps that did not show what they should (the exit status says whether any did)."""


async def totals(nc: NATS) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in SERVICES:
        try:
            page = await request(nc, subjects.svc_flows(name), FlowsQuery(limit=1), FlowsPage)
            out[name] = page.total
        except KodoError:
            out[name] = None
    return out


async def expect(nc: NATS, step: str, want: dict[str, int | None]) -> None:
    deadline = time.monotonic() + 20
    while (got := await totals(nc)) != want and time.monotonic() < deadline:  # noqa: ASYNC110 (polling a remote service)
        await asyncio.sleep(0.2)
    mark = "ok" if got == want else f"UNEXPECTED (wanted {want})"
    print(f"{step:<55} {got}  {mark}")
    if got != want:
        UNEXPECTED.append(step)


async def play(url: str, start: Callable[..., subprocess.Popen[bytes]]) -> None:
    nc = await nats.connect(url)
    procs = {name: start(f"{name}.yaml") for name in SERVICES}
    await expect(
        nc, "1. node, registry and hybrid started", {"node": 5, "registry": 55, "hybrid": 50}
    )
    for name in SERVICES:
        i = await request(nc, subjects.svc_info(name), Empty(), ServiceInfo)
        print(f"   {name}: registry={i.registry} feed={i.feed} organization={i.organization!r}")
    for name in ("node", "registry"):
        procs[name].send_signal(signal.SIGTERM)
        procs[name].wait(30)
    procs["registry"] = start("registry.yaml")
    await expect(
        nc,
        "2. node and registry stopped, registry restarted",
        {"node": None, "registry": 55, "hybrid": 50},
    )
    procs["node"] = start(None, "--id", "node", "--organization", "Node with New Name")
    await expect(
        nc,
        "3. node back with 0 flows and a new organization",
        {"node": 0, "registry": 50, "hybrid": 50},
    )
    reply = await request(nc, subjects.svc_disconnect("hybrid"), Empty(), Ack)
    print(f"   {reply.message}")
    await expect(nc, "4. hybrid disconnected", {"node": 0, "registry": 0, "hybrid": 50})
    await nc.drain()


def main() -> None:
    store = Path(tempfile.mkdtemp(prefix="kodo-walkthrough-"))
    # Free ports for clients and monitoring alike: the packaged config's `http: 127.0.0.1:8222`
    # would otherwise collide with a `kodo-bus up` running on the defaults.
    server = NatsServer(ServerSettings(port=0, http_port=0, store=store)).start()
    started: list[subprocess.Popen[bytes]] = []

    def start(config: str | None, *args: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "kodo_bus", "run", "--nats", server.url, "--heartbeat", "1"]
        if config:
            cmd += ["--config", str(HERE / config)]
        proc = subprocess.Popen([*cmd, *args], stderr=subprocess.DEVNULL)
        started.append(proc)
        return proc

    try:
        asyncio.run(play(server.url, start))
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        server.stop()
    if UNEXPECTED:
        sys.exit(1)


if __name__ == "__main__":
    main()
