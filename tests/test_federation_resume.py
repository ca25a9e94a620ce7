"""A registry that stops reading views resumes where it stopped: a gap costs what was missed, not
a whole view (issue 18, the 5-bus chain: nats-server cut busy registries' view readers as slow
consumers, each cut a gap, each gap one more whole view of tens of MB on the bus).

Real nats-server, a real `kodo-bus run` registry, frozen with SIGSTOP while a made-up registry
publishes more view bytes than the server holds for one client (`max_pending`, 64 MB): a core
subscription is cut there and loses them. Read through the `KODO_VIEWS` stream the registry
lags instead, reads on after SIGCONT, and asks for nothing. Past the stream's limits it still
recovers, by asking for a `full`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from kodo_bus import subjects
from kodo_bus.codec import CONTENT_TYPE, MSGPACK, encode
from kodo_bus.config import ServerSettings
from kodo_bus.dashboard.feeds import fetch_varz
from kodo_bus.models import Catalog, FlowInfo, NodeEntry, NodesPage
from kodo_bus.peers import _pack
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .test_federation import eventually, nodes

pytestmark = pytest.mark.slow

SENDER = "far"
PAD = 1024 * 1024
"""Bytes of padding per view message: cheap to take in (an unknown field, skipped), heavy on
the wire, so the server's 64 MB per-client limit is passed in a second or two."""
FROZEN_MESSAGES = 80
"""~80 MB published while the registry is frozen: past the server's max_pending."""


def entry(node: str) -> bytes:
    catalog = Catalog(node=node, organization="other", flows=[FlowInfo(name=f"{node}-f")])
    return encode(NodeEntry(catalog=catalog, path=[SENDER]))[0]


def view(kind: str, seq: int, names: list[str], *, pad: int = 0, **fields: Any) -> bytes:
    """One message of `SENDER`'s stream, in msgpack as a registry writes it."""
    head: dict[str, Any] = {
        "v": 1,
        "registry": SENDER,
        "organization": "other",
        "feed": True,
        "kind": kind,
        "epoch": "e1",
        "seq": seq,
        "removed": [],
        **fields,
    }
    if pad:
        head["pad"] = b"x" * pad  # not a RegistryView field: read past, ignored
    return _pack(head, [entry(n) for n in names], "nodes")


def far(page: NodesPage) -> set[str]:
    return {e.id for e in page.items if e.id.startswith("far-")}


class Bus:
    """A registry on its own nats-server, a publisher of `SENDER`'s stream, the asks seen."""

    def __init__(self, procs: Processes, server: NatsServer, tmp: Path, rid: str) -> None:
        self.procs, self.server, self.rid = procs, server, rid
        self.log = tmp / f"{rid}.log"
        self.nc: NATS | None = None
        self.asks: list[Msg] = []
        self.proc: subprocess.Popen[str] | None = None
        self.seq = 0

    async def start(self, env: dict[str, str] | None = None) -> NATS:
        cmd = ["run", "--nats", self.server.url, "--id", self.rid, "--role", "registry"]
        cmd += ["--cache-reset", "--heartbeat", "0.5", "--log-file", str(self.log)]
        self.proc = self.procs.start(*cmd, env=env, cwd=REPO)
        self.nc = nc = await nats.connect(self.server.url)
        await eventually(lambda: nodes(nc, self.rid), lambda p: True)

        await nc.subscribe(subjects.registry_ask(SENDER), cb=self.on_ask)
        await nc.flush()
        return nc

    async def on_ask(self, msg: Msg) -> None:
        self.asks.append(msg)

    async def publish(self, kind: str, names: list[str], **fields: Any) -> None:
        assert self.nc is not None
        self.seq += 1
        body = view(kind, self.seq, names, **fields)
        await self.nc.publish(subjects.registry_view(SENDER), body, headers={CONTENT_TYPE: MSGPACK})

    async def frozen(self, names: list[str]) -> None:
        """Publish one padded `changes` per name while the registry is stopped (SIGSTOP)."""
        assert self.proc is not None and self.nc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            for name in names:
                await self.publish("changes", [name], pad=PAD)
            await self.nc.flush(timeout=30)
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    async def listed(self, want: set[str], timeout: float = 30) -> None:
        assert self.nc is not None
        nc = self.nc
        await eventually(lambda: nodes(nc, self.rid), lambda p: far(p) >= want, timeout)


@contextlib.asynccontextmanager
async def open_bus(
    procs: Processes, server: NatsServer, tmp_path: Path, rid: str
) -> AsyncIterator[Bus]:
    """A `Bus` whose registry is never left stopped (SIGSTOP) for the teardown."""
    b = Bus(procs, server, tmp_path, rid)
    try:
        yield b
    finally:
        if b.proc is not None and b.proc.poll() is None:
            os.kill(b.proc.pid, signal.SIGCONT)
        if b.nc is not None:
            await b.nc.close()


@pytest.fixture
async def bus(
    procs: Processes, server_factory: Callable[[str], NatsServer], tmp_path: Path
) -> AsyncIterator[Bus]:
    async with open_bus(procs, server_factory("s0"), tmp_path, "resume-r") as b:
        yield b


async def test_a_frozen_reader_resumes_without_a_full(bus: Bus) -> None:
    await bus.start()
    await bus.publish("full", ["far-0"], part=0, parts=1)
    await bus.listed({"far-0"})
    frozen = [f"far-{i}" for i in range(1, FROZEN_MESSAGES + 1)]
    await bus.frozen(frozen)
    await bus.publish("changes", ["far-last"])  # after a cut, this one would show the gap
    await bus.listed({"far-0", *frozen, "far-last"}, timeout=20)
    # one more interval of beats: still in order, nothing asked
    await bus.publish("beat", [])
    await asyncio.sleep(1.0)  # an ask would come within one heartbeat (0.5 s) of a gap
    assert bus.asks == [], f"{len(bus.asks)} asks for a full: the reader lost messages"
    assert bus.server.monitor_url is not None
    varz = await asyncio.to_thread(fetch_varz, bus.server.monitor_url)
    assert varz["slow_consumers"] == 0  # it lagged, nobody was cut
    assert b"read through the stream" in bus.log.read_bytes()


async def test_a_reader_past_the_stream_limits_recovers_by_a_full(bus: Bus) -> None:
    # a stream of 16 MB: most of the ~40 MB published while frozen is gone when it reads on
    await bus.start(env={"KODO_VIEWS_MAX_BYTES": str(16 * 1024 * 1024)})
    await bus.publish("full", ["far-0"], part=0, parts=1)
    await bus.listed({"far-0"})
    frozen = [f"far-{i}" for i in range(1, 41)]
    await bus.frozen(frozen)
    await bus.publish("changes", ["far-last"])
    await eventually(lambda: asyncio.sleep(0), lambda _: bool(bus.asks), timeout=30)
    # the sender answers an ask with its whole view: the registry holds it all again
    await bus.publish("full", ["far-0", *frozen, "far-last"], part=0, parts=1)
    await bus.listed({"far-0", *frozen, "far-last"})


async def test_a_reader_resumes_after_its_server_restarts(bus: Bus) -> None:
    await bus.start()
    await bus.publish("full", ["far-0"], part=0, parts=1)
    await bus.listed({"far-0"})
    # stored while the registry cannot read them; then the server restarts under it (its
    # consumer, in memory, is gone): it makes a new one from where it stopped
    names = [f"far-{i}" for i in range(1, 6)]
    assert bus.proc is not None and bus.nc is not None
    os.kill(bus.proc.pid, signal.SIGSTOP)
    try:
        for name in names:
            await bus.publish("changes", [name])
        await bus.nc.flush()
        await bus.nc.close()
        await asyncio.to_thread(bus.server.restart)
    finally:
        os.kill(bus.proc.pid, signal.SIGCONT)
    bus.nc = await nats.connect(bus.server.url)
    await bus.nc.subscribe(subjects.registry_ask(SENDER), cb=bus.on_ask)
    await bus.publish("changes", ["far-last"])
    await bus.listed({"far-0", *names, "far-last"}, timeout=20)
    assert bus.asks == [], "the registry asked for a full: it lost what was stored"


NO_JETSTREAM_CONF = """
host: 127.0.0.1
accounts {
  NOJS: { jetstream: disabled, users: [ { user: plain, password: plain } ] }
}
"""


async def test_a_bus_without_jetstream_is_read_by_a_core_subscription(
    procs: Processes, server_factory: Callable[[str], NatsServer], tmp_path: Path
) -> None:
    home = server_factory("home")
    conf = tmp_path / "nojs.conf"
    conf.write_text(NO_JETSTREAM_CONF)
    plain = NatsServer(
        ServerSettings(port=0, http_port=0, store=tmp_path / "nojs", config=conf)
    ).start()
    try:
        log = tmp_path / "link-r.log"
        cmd = ["run", "--nats", home.url, "--id", "link-r", "--role", "registry"]
        cmd += ["--connect", plain.url, "--cache-reset", "--heartbeat", "0.5"]
        procs.start(
            *cmd,
            "--log-file",
            str(log),
            env={"KODO_USER": "plain", "KODO_PASSWORD": "plain"},
            cwd=REPO,
        )
        home_nc = await nats.connect(home.url)
        link_nc = await nats.connect(plain.url, user="plain", password="plain")
        try:

            async def logged() -> bytes:
                return log.read_bytes() if log.exists() else b""

            await eventually(logged, lambda b: b"core subscription" in b)
            body = view("full", 1, ["far-0"], part=0, parts=1)
            await link_nc.publish(
                subjects.registry_view(SENDER), body, headers={CONTENT_TYPE: MSGPACK}
            )
            await link_nc.flush()
            await eventually(lambda: nodes(home_nc, "link-r"), lambda p: far(p) == {"far-0"})
        finally:
            await link_nc.close()
            await home_nc.close()
        text = log.read_text()
        assert f"views on {plain.url} read by a core subscription" in text, text
        assert "views on our own bus read through the stream" in text, text
    finally:
        plain.stop()
