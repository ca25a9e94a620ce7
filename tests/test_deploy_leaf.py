"""deploy/leaf/: a provider's own nats-server joined to a federation hub as a leaf node lets out
the views the provider republishes, and nothing else.

Two real nats-servers run from deploy/leaf/hub.conf and leaf.conf (ports rewritten to free ones,
stores in tmp_path), with real `kodo-bus run` processes: a node and a provider on the leaf, a
registry on the hub. Raw nats-py subscribers on `>` on both sides show what crosses; the one on
the leaf is the positive control (it sees everything the hub must not). No flow runs, so no Ray:
heartbeats, catalogs, KV writes, service requests and events published by a raw client are
enough to show the filtering. Every server and process is stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import psutil
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from kodo_bus import subjects
from kodo_bus.bus import ensure_execution_storage, request
from kodo_bus.client import Client
from kodo_bus.codec import decode_msg
from kodo_bus.config import ServerSettings
from kodo_bus.errors import KodoError
from kodo_bus.models import Empty, FlowsPage, ServiceInfo, SyncRequest
from kodo_bus.server import NatsServer, find_binary

from .conftest import REPO, Processes, free_ports, start_script
from .test_reliability_support import eventually, service

pytestmark = pytest.mark.slow

DEPLOY = REPO / "deploy" / "leaf"
PORTS = {"hub": 4222, "leaf": 4223, "leafnode": 7422, "hub_http": 8222, "leaf_http": 8223}
"""The ports written in the confs (every one as 127.0.0.1:<port>), as start.sh documents them."""
CONF_PORTS = {"hub": ("hub", "hub_http", "leafnode"), "leaf": ("leaf", "leaf_http", "leafnode")}
ORG = "Leaf Org"
NODE, PROVIDER, REGISTRY = "leaf-node", "leaf-provider", "hub-registry"
FLOWS = "tests.flowpkg.basic"
NAME, INPUTS, RESULT = "add", {"a": 2, "b": 3}, 5
"""A flow of FLOWS launched from the hub, its inputs and its result."""


def render(name: str, ports: dict[str, int], out: Path, bind: str = "FEDERATION") -> Path:
    """deploy/leaf/<name>.conf with this test's ports (and, for the leaf, its link bound to the
    account `bind`), written into `out`."""
    text = (DEPLOY / f"{name}.conf").read_text()
    for key in CONF_PORTS[name]:
        written = f"127.0.0.1:{PORTS[key]}"
        assert written in text, f"{name}.conf no longer has {written}: update this test"
        text = text.replace(written, f"127.0.0.1:{ports[key]}")
    if name == "leaf":
        text, n = re.subn(r"(?m)^(\s*)account: FEDERATION$", rf"\g<1>account: {bind}", text)
        assert n == 1, "leaf.conf should bind its remote with one 'account: FEDERATION' line"
    path = out / f"{name}.conf"
    path.write_text(text)
    return path


def leafz(http_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/leafz", timeout=2) as resp:
        data: dict[str, Any] = json.load(resp)
    return data


def wait_link(http_port: int, account: str, timeout: float = 15.0) -> None:
    """Until the leaf's monitoring shows its link to the hub, bound to `account`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = leafz(http_port)
            leafs = last.get("leafs") or []
            if [leaf.get("account") for leaf in leafs] == [account]:
                return
        except OSError as exc:  # monitoring not up yet
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"no leaf link bound to {account} within {timeout} s; last: {last!r}")


@dataclass
class Pair:
    hub: NatsServer
    leaf: NatsServer
    ports: dict[str, int]


@contextlib.contextmanager
def leaf_pair(tmp: Path, bind: str = "FEDERATION") -> Iterator[Pair]:
    """Hub and leaf from the deploy confs on free ports, the link up; both stopped by PID."""
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    servers = [
        NatsServer(
            ServerSettings(
                port=ports[name],
                http_port=ports[f"{name}_http"],
                store=tmp / f"store-{name}",
                config=render(name, ports, tmp, bind),
            )
        )
        for name in ("hub", "leaf")
    ]
    try:
        for server in servers:
            server.start()
        wait_link(ports["leaf_http"], bind)
        yield Pair(servers[0], servers[1], ports)
    finally:
        for server in reversed(servers):
            server.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with leaf_pair(tmp_path) as p:
        yield p


class Tap:
    """A raw nats-py connection that keeps every message it sees on `>`."""

    def __init__(self) -> None:
        self.msgs: list[tuple[float, Msg]] = []
        self.nc: NATS | None = None

    async def start(self, url: str) -> NATS:
        self.nc = await nats.connect(url, name="tap")
        await self.nc.subscribe(">", cb=self._on)
        await self.nc.flush()
        return self.nc

    async def _on(self, msg: Msg) -> None:
        self.msgs.append((time.monotonic(), msg))

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    def seen(self, match: Callable[[str], bool], since: float = 0.0) -> list[Msg]:
        return [m for t, m in self.msgs if t >= since and match(m.subject)]

    def subjects(self) -> set[str]:
        return {m.subject for _, m in self.msgs}


def is_(subject: str) -> Callable[[str], bool]:
    return lambda s: s == subject


def sync_senders(msgs: list[Msg]) -> set[str]:
    return {decode_msg(m, SyncRequest).registry for m in msgs}


async def until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


@dataclass
class Markers:
    """Raw messages published once on each side, each with a unique marker in subject and body."""

    marker: str
    up: str
    """An execution event published on the leaf."""
    down: str
    """An execution event published on the hub."""
    body: bytes

    @property
    def leaf_own(self) -> set[str]:
        return {self.up, f"probe.{self.marker}"}

    @property
    def hub_own(self) -> set[str]:
        return {self.down, f"probe.{self.marker}.hub"}


async def test_provider_view_crosses_the_leaf_link_and_nothing_else(
    pair: Pair, procs: Processes, tmp_path: Path, ray_address: str
) -> None:
    hub_tap, leaf_tap = Tap(), Tap()
    try:
        hub_nc = await hub_tap.start(pair.hub.url)
        leaf_nc = await leaf_tap.start(pair.leaf.url)
        # A trap on the hub: its own events stream would capture any event that crossed.
        await ensure_execution_storage(hub_nc.jetstream(), max_age=3600)
        leaf, hub = [pair.leaf.url], [pair.hub.url]
        node = {"id": NODE, "organization": ORG, "flows": [{"module": FLOWS}]}
        service(procs, tmp_path, leaf, ray_address, **node)
        service(procs, tmp_path, leaf, id=PROVIDER, role="provider", organization=ORG)
        # The hub's registry comes up after the provider has sent its whole view (as after a
        # restart of the hub): its ask for that view must cross the link.
        async with Client(pair.leaf.url) as on_leaf:
            await eventually(lambda: on_leaf.flows(via=PROVIDER), lambda fs: len(fs) > 0)
        service(procs, tmp_path, hub, id=REGISTRY, role="registry")

        await view_reaches_the_hub(pair, procs)
        await requests_stay_on_their_side(hub_nc, leaf_nc)
        m = await exchange_markers(hub_tap, leaf_tap)
        leaf_saw_everything(leaf_tap, m)
        hub_saw_the_view_only(hub_tap, m)
        leaf_saw_nothing_of_the_hub(leaf_tap, m)
        await two_jetstreams(hub_nc, leaf_nc, m)
        await launched_from_the_hub_followed_on_the_leaf(pair)
    finally:
        await hub_tap.close()
        await leaf_tap.close()


async def launched_from_the_hub_followed_on_the_leaf(pair: Pair) -> None:
    """(e) A client of the hub launches a flow the hub lists at the leaf's URL: the launch goes
    to the leaf, and the handle follows the execution there (its events, record and JetStream
    domain are the leaf's), instead of waiting on the hub for events that never come."""
    async with Client(pair.hub.url) as on_hub:
        flow = await on_hub.flow(f"{NODE}/{NAME}", via=REGISTRY)
        ex = await flow.launch(INPUTS)
        assert await ex.result(timeout=60) == RESULT
        assert await ex.status() == "finished"


async def view_reaches_the_hub(pair: Pair, procs: Processes) -> None:
    """(a) The hub's registry lists the provider's flows, online, at the leaf's URL (SDK and
    `kodo-bus flows --json`, both against the hub)."""
    async with Client(pair.leaf.url) as on_leaf:
        own = await eventually(lambda: on_leaf.flows(via=PROVIDER), lambda fs: len(fs) > 0)
    names = sorted(f.name for f in own)
    async with Client(pair.hub.url) as on_hub:
        seen = await eventually(
            lambda: on_hub.flows(via=REGISTRY),
            lambda fs: (
                sorted(f.name for f in fs) == names and all(f.status == "online" for f in fs)
            ),
        )
    assert {(f.node, f.organization) for f in seen} == {(NODE, ORG)}
    assert all(f.urls == [pair.leaf.url] for f in seen)
    cli = procs.start("flows", "--json", "--nats", pair.hub.url, cwd=str(REPO))
    out, _ = cli.communicate(timeout=30)
    assert cli.returncode == 0, out
    assert sorted(f.name for f in FlowsPage.model_validate_json(out).items) == names


async def requests_stay_on_their_side(hub_nc: NATS, leaf_nc: NATS) -> None:
    """Requests and their replies do not cross: the leaf's services answer on the leaf only (on
    the hub the request finds the tap's `>` as its only taker, so it times out)."""

    async def unanswered(svc: str) -> None:
        with pytest.raises(KodoError):
            await request(hub_nc, subjects.svc_info(svc), Empty(), ServiceInfo, timeout=1)

    for svc in (NODE, PROVIDER):
        info = await request(leaf_nc, subjects.svc_info(svc), Empty(), ServiceInfo)
        assert info.id == svc
    await asyncio.gather(unanswered(NODE), unanswered(PROVIDER))


async def exchange_markers(hub_tap: Tap, leaf_tap: Tap) -> Markers:
    """(b) Raw traffic on both sides while the node beats and the provider republishes; returns
    once the link has carried two more views after it and each side saw its own markers."""
    assert hub_tap.nc is not None and leaf_tap.nc is not None
    marker = uuid.uuid4().hex
    m = Markers(
        marker=marker,
        up=subjects.events(subjects.DEFAULT_USER, marker, "status"),
        down=subjects.events(subjects.DEFAULT_USER, f"{marker}-hub", "status"),
        body=json.dumps({"marker": marker}).encode(),
    )
    t0 = time.monotonic()
    for nc, own in ((leaf_tap.nc, m.leaf_own), (hub_tap.nc, m.hub_own)):
        for subject in sorted(own):
            await nc.publish(subject, m.body)
        await nc.flush()
    view = subjects.registry_view(PROVIDER)
    beat = subjects.node_heartbeat(NODE)
    # Views sent after the markers on the same link: a marker that crossed would be there first.
    await until("two views on the hub", lambda: len(hub_tap.seen(is_(view), t0)) >= 2)
    await until("two beats on the leaf", lambda: len(leaf_tap.seen(is_(beat), t0)) >= 2)
    await until(
        "each side's markers on its own side",
        lambda: m.leaf_own <= leaf_tap.subjects() and m.hub_own <= hub_tap.subjects(),
    )
    return m


NODE_PREFIX = subjects.NODE_ALL.split("*")[0]  # kodo.node.
EVENTS_PREFIX = subjects.EVENTS_ALL.rstrip(">")  # kodo.events.
INBOXES = (subjects.inbox(NODE), subjects.inbox(PROVIDER))
LEAF_KV = subjects.kv_subject(subjects.bucket_view(PROVIDER), "")


def leaf_saw_everything(leaf_tap: Tap, m: Markers) -> None:
    """Positive control: the same tap on the leaf saw every kind of traffic the hub must not."""
    seen = leaf_tap.subjects()
    view, beat = subjects.registry_view(PROVIDER), subjects.node_heartbeat(NODE)
    assert {subjects.node_catalog(NODE), beat, view, m.up} <= seen
    assert any(s.startswith(INBOXES) for s in seen)  # the services' replies
    assert any(s.startswith(LEAF_KV) for s in seen)  # the provider's view bucket
    assert PROVIDER in sync_senders(leaf_tap.seen(is_(subjects.SYNC)))


def hub_saw_the_view_only(hub_tap: Tap, m: Markers) -> None:
    """From the leaf, the hub got the provider's view and nothing else."""
    seen = hub_tap.subjects()
    leaked = sorted(
        s
        for s in seen - m.hub_own
        if s.startswith((NODE_PREFIX, EVENTS_PREFIX, *INBOXES, LEAF_KV)) or m.marker in s
    )
    assert leaked == []
    marked = [x.subject for _, x in hub_tap.msgs if m.marker.encode() in x.data]
    assert set(marked) <= m.hub_own
    views = {s for s in seen if re.fullmatch(r"kodo\.registry\.[^.]+\.view", s)}
    # the hub's registry streams its own view on its own bus (peers.py); from the leaf, only
    # the provider's crosses
    assert views - {subjects.registry_view(REGISTRY)} == {subjects.registry_view(PROVIDER)}
    assert sync_senders(hub_tap.seen(is_(subjects.SYNC))) == {REGISTRY}


def leaf_saw_nothing_of_the_hub(leaf_tap: Tap, m: Markers) -> None:
    """From the hub, the leaf got nothing but asks for the provider's view: not the hub's
    events, nor its registry's sync or view."""
    assert sync_senders(leaf_tap.seen(is_(subjects.SYNC))) == {PROVIDER}
    registry = {s for s in leaf_tap.subjects() if s.startswith("kodo.registry.")}
    assert registry <= {subjects.registry_view(PROVIDER), subjects.registry_ask(PROVIDER)}
    marked = [x.subject for _, x in leaf_tap.msgs if m.marker.encode() in x.data]
    assert set(marked) <= m.leaf_own
    assert {s for s in leaf_tap.subjects() if m.marker in s} <= m.leaf_own


async def two_jetstreams(hub_nc: NATS, leaf_nc: NATS, m: Markers) -> None:
    """One JetStream per domain: each server stored its own side's event only."""
    hub_js, leaf_js = hub_nc.jetstream(), leaf_nc.jetstream()
    assert (await hub_js.account_info()).domain == "hub"
    assert (await leaf_js.account_info()).domain == "provider"
    assert (await leaf_js.get_last_msg(subjects.STREAM_EVENTS, m.up)).data == m.body
    assert (await hub_js.get_last_msg(subjects.STREAM_EVENTS, m.down)).data == m.body
    for js, subject in ((hub_js, m.up), (leaf_js, m.down)):
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.get_last_msg(subjects.STREAM_EVENTS, subject)
    hub_streams = {s.config.name for s in await hub_js.streams_info()}
    leaf_streams = {s.config.name for s in await leaf_js.streams_info()}
    hub_view = subjects.kv_stream(subjects.bucket_view(REGISTRY))
    leaf_view = subjects.kv_stream(subjects.bucket_view(PROVIDER))
    assert hub_view in hub_streams and leaf_view not in hub_streams
    assert leaf_view in leaf_streams and hub_view not in leaf_streams


async def test_control_a_link_bound_to_the_services_account_lets_everything_out(
    tmp_path: Path,
) -> None:
    """The same confs with the leaf's link bound to KODO (the services' account) instead of
    FEDERATION: heartbeats and events cross. So the silence of the main test comes from the
    binding in leaf.conf, not from a link that carries nothing."""
    with leaf_pair(tmp_path, bind="KODO") as p:
        hub_tap, leaf_nc = Tap(), await nats.connect(p.leaf.url)
        try:
            await hub_tap.start(p.hub.url)
            marker = uuid.uuid4().hex
            beat = subjects.node_heartbeat(marker)
            event = subjects.events(subjects.DEFAULT_USER, marker, "status")
            deadline = time.monotonic() + 15
            # the hub's interest reaches the leaf shortly after its tap subscribed: resend until
            while not (hub_tap.seen(is_(beat)) and hub_tap.seen(is_(event))):
                assert time.monotonic() < deadline, "nothing crossed an unfiltered link"
                await leaf_nc.publish(beat, b"{}")
                await leaf_nc.publish(event, b"{}")
                await leaf_nc.flush()
                await asyncio.sleep(0.05)
        finally:
            await hub_tap.close()
            await leaf_nc.close()


@pytest.mark.parametrize("stop", ["sigterm-script", "leaf-server-exits"])
def test_start_script(tmp_path: Path, stop: str) -> None:
    """start.sh starts the hub and the leaf on the ports given, links them, and stops both by
    PID: on SIGTERM (as Ctrl-C), or when one of the servers exits."""
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    data = tmp_path / "data"
    env = {
        **os.environ,
        "DATA": str(data),
        "NATS_SERVER": str(find_binary()),
        "HUB_PORT": str(ports["hub"]),
        "LEAF_PORT": str(ports["leaf"]),
        "LEAFNODE_PORT": str(ports["leafnode"]),
        "HUB_HTTP_PORT": str(ports["hub_http"]),
        "LEAF_HTTP_PORT": str(ports["leaf_http"]),
    }
    script = start_script(DEPLOY / "start.sh", env, tmp_path / "start.log")
    children: list[psutil.Process] = []
    try:
        wait_link(ports["leaf_http"], "FEDERATION")
        children = psutil.Process(script.pid).children()
        by_conf = {c.pid: next(a for a in c.cmdline() if a.endswith(".conf")) for c in children}
        assert sorted(by_conf.values()) == [str(data / "hub.conf"), str(data / "leaf.conf")]
        hub_link = leafz(ports["hub_http"])["leafs"]
        assert [leaf["name"] for leaf in hub_link] == ["kodo-leaf"]
        if stop == "sigterm-script":
            script.send_signal(signal.SIGTERM)
        else:
            leaf_pid = next(pid for pid, conf in by_conf.items() if conf.endswith("leaf.conf"))
            os.kill(leaf_pid, signal.SIGTERM)
        # 128 + SIGTERM when stopped, else the status of the server that exited (0: clean)
        assert script.wait(timeout=20) == (143 if stop == "sigterm-script" else 0)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:  # whatever failed: the servers by their PIDs, then the script by its own
        if not children and script.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                children = psutil.Process(script.pid).children()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        if script.poll() is None:
            script.kill()
            script.wait()
    text = (tmp_path / "start.log").read_text()
    assert f"hub nats://127.0.0.1:{ports['hub']}" in text, text
