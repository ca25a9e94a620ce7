"""The dashboard: state from pushes, the screen at 80x24 and 160x48, and a live run on a pty."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time

import pytest
from rich.console import Console

from kodo_bus import subjects
from kodo_bus.bus import ensure_bucket
from kodo_bus.client import Client
from kodo_bus.codec import encode
from kodo_bus.dashboard import DashboardState, render
from kodo_bus.dashboard.feeds import Feeds
from kodo_bus.dashboard.view import UNKNOWN
from kodo_bus.models import (
    Bye,
    Catalog,
    Event,
    ExecutionRecord,
    FlowInfo,
    Heartbeat,
    NodeEntry,
)
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO
from .test_cli_exec import NODE, Bus, bus

__all__ = ["bus"]
NOW = 1_800_000_000.0
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
NO_FIGURES = " +".join([UNKNOWN] * 3)
"""run/cap, cpu and mem of a node whose heartbeat was never seen."""


def realistic() -> DashboardState:
    """1,000 nodes in 7 organizations, 60 executions, a minute of events, a few warnings."""
    s = DashboardState()
    s.server.url = "nats://127.0.0.1:4222"
    s.server.monitor = "http://127.0.0.1:8222"
    varz = {"version": "2.15.0", "jetstream": {"config": {"max_memory": 1}}, "connections": 1003}
    s.on_varz({**varz, "in_msgs": 1_000, "out_msgs": 2_000}, NOW - 2)
    s.on_varz({**varz, "in_msgs": 5_000, "out_msgs": 10_000}, NOW)
    flows = [FlowInfo(name=f"flow-{j}") for j in range(20)]
    for i in range(1000):
        node = f"node-{i:04d}"
        s.on_catalog(Catalog(node=node, organization=f"org-{i % 7}", flows=flows), NOW - 60)
        last = NOW - (0.5 if i % 10 else 40)  # every 10th node went silent
        s.on_heartbeat(Heartbeat(node=node), last - 1)
        beat = Heartbeat(node=node, running=i % 5, capacity=4, cpu=i % 100, memory=2**27 + i)
        s.on_heartbeat(beat, last)
    s.on_bye(Bye(node="node-0001"))
    statuses = ["running", "finished", "error", "awaiting", "pending", "cancelled"]
    for i in range(60):
        ex = f"{i:02d}" + "ab" * 15
        status = statuses[i % 6]
        s.on_record(
            ExecutionRecord(
                execution=ex,
                flow=f"flow-{i % 20}",
                node=f"node-{i:04d}",
                launcher="alice",
                status=status,
                created=NOW - 300 + i,
                updated=NOW - 100 + i,
            )
        )
        progress = {"done": i % 10, "total": 10, "message": "step"}
        s.on_event(event(ex, "progress", progress, NOW - 1))
    for second in range(120):
        for _ in range(second % 17):
            s.on_event_seen(NOW - second)
    s.on_event(event("aa" * 16, "log", {"level": "warning", "message": "slow upstream"}, NOW - 3))
    s.on_event(event("bb" * 16, "error", {"type": "ValueError", "message": "bad url"}, NOW - 2))
    s.on_event(event("cc" * 16, "log", {"level": "info", "message": "not a notice"}, NOW - 1))
    return s


def event(execution: str, kind: str, data: object, ts: float) -> Event:
    return Event.model_validate(
        {
            "execution": execution,
            "seq": 9,
            "ts": ts,
            "kind": kind,
            "node": "node-0002",
            "flow": "crawl",
            "launcher": "alice",
            "data": data,
        }
    )


def screen(state: DashboardState, width: int, height: int, now: float = NOW) -> str:
    console = Console(width=width, height=height, record=True, color_system=None)
    console.print(render(state, width, height, now))
    return console.export_text()


def row_of(text: str, name: str) -> str:
    """The one screen line of a node or an execution (by its first cell, at 80 columns)."""
    lines = [line for line in text.splitlines() if line.startswith(f"│ {name} ")]
    assert len(lines) == 1, f"{name!r} on {len(lines)} lines:\n{text}"
    return lines[0]


@pytest.mark.parametrize(("width", "height"), [(80, 24), (160, 48)])
def test_render_fits_and_shows_everything(width: int, height: int) -> None:
    text = screen(realistic(), width, height)
    lines = text.splitlines()
    assert len(lines) == height
    assert all(len(line) <= width for line in lines)
    assert "nats://127.0.0.1:4222" in lines[0] and "nats-server 2.15.0" in lines[0]
    assert "JetStream on" in lines[0] and "conns 1003" in lines[0]
    assert "899 online · 101 offline" in lines[1]
    assert "flows 20,000" in lines[1]
    assert "10 running" in lines[1]
    assert "node-0004" in text  # busiest online nodes first
    assert "online 0.5s" in text
    assert re.search(r"… \d+ more \(\d+ online\)", text)
    assert "59abababab"[:8] in text  # newest execution first
    assert "… " in text and " older" in text
    assert "events/s" in text and "peak 16" in text
    assert "ValueError: bad url" in text and "slow upstream" in text
    assert "not a notice" not in text
    if width >= 140:
        assert "msgs in 2,000/s out 4,000/s" in lines[0]
        assert "organization" in text and "org-" in text
        assert "ERROR" in text and "WARNING" in text
        assert len(re.findall(r"node-\d{4} ", text)) > 20


def test_state_learns_beats_and_ends() -> None:
    s = DashboardState()
    s.on_heartbeat(Heartbeat(node="a"), NOW)
    s.on_heartbeat(Heartbeat(node="a"), NOW + 0.3)
    row = s.nodes["a"]
    assert row.beat == pytest.approx(0.3)
    assert row.online(NOW + 1.0) and not row.online(NOW + 1.3)
    s.on_bye(Bye(node="a"))
    assert not row.online(NOW + 0.4)
    s.on_heartbeat(Heartbeat(node="a"), NOW + 2)
    assert row.online(NOW + 2.1)
    s.on_bye(Bye(node="a", forget=True))
    assert "a" not in s.nodes

    record = {"execution": "e", "flow": "f", "node": "a", "launcher": "u", "created": NOW}
    s.on_record(ExecutionRecord.model_validate({**record, "status": "running", "updated": NOW}))
    s.on_record(
        ExecutionRecord.model_validate({**record, "status": "finished", "updated": NOW + 2})
    )
    s.on_record(ExecutionRecord.model_validate({**record, "status": "running", "updated": NOW}))
    assert s.executions["e"].status == "finished"  # a late, older record does not win

    s.max_executions = 10
    for i in range(30):
        rec = {**record, "execution": f"x{i}", "status": "finished", "updated": NOW}
        s.on_record(ExecutionRecord.model_validate({**rec, "created": NOW + i}))
    assert len(s.executions) == 10 and "x29" in s.executions


def test_nodes_from_the_registry_view_show_its_status_until_their_first_beat() -> None:
    """At start the registry's stored view brings nodes in: its `last_seen` is when the entry was
    written (heartbeats are not), so a live node is shown online on the registry's word, with
    unknown figures, not "offline 64s 0/0 0B" until its first heartbeat."""
    s = DashboardState()
    flows = [FlowInfo(name="f")]
    s.on_view_entry(NodeEntry(catalog=Catalog(node="alive", flows=flows), last_seen=NOW - 64))
    stopped = NodeEntry(catalog=Catalog(node="stopped"), status="offline", last_seen=NOW - 64)
    s.on_view_entry(stopped)
    text = screen(s, 80, 24)
    alive = row_of(text, "alive")
    assert re.search(rf"online +1 +{NO_FIGURES}", alive), alive
    assert "offline" not in alive and "0/0" not in alive and "0B" not in alive
    assert "offline 64s" in row_of(text, "stopped")
    assert "1 online · 1 offline" in text.splitlines()[1]

    beat = Heartbeat(node="alive", running=1, capacity=4, cpu=7, memory=2**27)
    s.on_heartbeat(beat, NOW - 0.5)
    s.on_view_entry(NodeEntry(catalog=Catalog(node="alive", flows=flows), last_seen=NOW - 64))
    alive = row_of(screen(s, 80, 24), "alive")  # heard: its own beats count, not the view
    assert re.search(r"online 0\.5s +1 +1/4 +7% +128M", alive), alive

    s.on_view_entry(NodeEntry(catalog=Catalog(node="far"), status="online", last_seen=NOW - 600))
    s.on_view_entry(NodeEntry(catalog=Catalog(node="far"), status="offline", last_seen=NOW - 30))
    assert "offline 30s" in row_of(screen(s, 80, 24), "far")  # the registry's word changed
    s.on_catalog(Catalog(node="far"), NOW - 1)  # the node itself speaks: our clock now
    assert "online 1.0s" in row_of(screen(s, 80, 24), "far")


def test_execution_age_is_time_since_created_even_when_finished() -> None:
    s = DashboardState()
    record = {"flow": "quick", "node": "n", "launcher": "u", "status": "finished"}
    s.on_record(
        ExecutionRecord.model_validate(
            {**record, "execution": "a" * 32, "created": NOW - 11, "updated": NOW - 10.98}
        )
    )
    # seen first in its last status event (the dashboard started late), then in its record
    s.on_event(event("b" * 32, "status", {"status": "finished"}, NOW - 3))
    s.on_record(
        ExecutionRecord.model_validate(
            {**record, "execution": "b" * 32, "created": NOW - 125, "updated": NOW - 3}
        )
    )
    text = screen(s, 80, 24)
    assert re.search(r"finished +11s", row_of(text, "a" * 8)), text
    assert re.search(r"finished +2m", row_of(text, "b" * 8)), text


async def test_feeds_show_stored_nodes_and_executions_as_stored(fresh_server: NatsServer) -> None:
    """The real feeds: a registry's view bucket and the executions bucket, as a registry and a
    node wrote them, watched over NATS; no node beats, so what shows is what was stored."""
    started = time.time()
    async with Client(fresh_server.url) as kb:
        view = await ensure_bucket(kb.js, subjects.bucket_view("feed-registry"))
        node = NodeEntry(catalog=Catalog(node="stored-node"), last_seen=started - 64)
        await view.put("node.stored-node", encode(node)[0])
        records = await ensure_bucket(kb.js, subjects.BUCKET_EXECUTIONS)
        record = ExecutionRecord(
            execution="c" * 32,
            flow="quick",
            node="stored-node",
            launcher="u",
            status="finished",
            created=started - 11,
            updated=started - 10.98,
        )
        await records.put(subjects.record_key("u", record.execution), encode(record)[0])

        state = DashboardState()
        feeds = Feeds(kb, state, via="feed-registry")
        await feeds.start()
        try:
            deadline = time.monotonic() + 15
            while "stored-node" not in state.nodes or record.execution not in state.executions:
                assert time.monotonic() < deadline, "the feeds did not bring the stored entries"
                await asyncio.sleep(0.05)
        finally:
            await feeds.stop()
    now = time.time()
    text = screen(state, 80, 24, now)
    assert re.search(rf"online +0 +{NO_FIGURES}", row_of(text, "stored-node")), text
    age = round(now - record.created)
    assert re.search(rf"finished +{age}s", row_of(text, "c" * 8)), text


class Screen:
    """A subprocess on a pseudo-terminal of a given size; reads its output with deadlines."""

    def __init__(self, args: list[str], width: int, height: int, env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        self.proc = subprocess.Popen(
            args,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm-256color", "COLUMNS": str(width), "LINES": str(height)},
            cwd=REPO,
            start_new_session=True,
        )
        os.close(slave)
        self.data = b""

    def read_until(self, found: re.Pattern[bytes], start: int, timeout: float = 30) -> int:
        """Read until `found` matches a line of output after offset `start`; returns the end."""
        deadline = time.monotonic() + timeout
        while True:
            plain = ANSI.sub(b"", self.data[start:])
            if found.search(plain):
                return len(self.data)
            left = deadline - time.monotonic()
            if left <= 0:
                tail = plain[-3000:].decode(errors="replace")
                raise AssertionError(f"{found.pattern!r} not on screen; last output:\n{tail}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.data += os.read(self.master, 1 << 16)
                except OSError:
                    raise AssertionError("the dashboard exited") from None

    def close(self) -> None:
        os.close(self.master)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_node(b: Bus, node: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*KODO_BUS, "run", "--id", node, "--nats", b.url, "--heartbeat", "0.5"],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def test_dashboard_updates_live_on_a_pty(bus: Bus, ray_address: str) -> None:
    env = {**os.environ, "KODO_NATS": bus.url, "PYTHONPATH": str(REPO)}
    monitor = bus.server.monitor_url or ""
    args = [*KODO_BUS, "dashboard", "--refresh", "0.2", "--monitor", monitor]
    term = Screen(args, 160, 48, env)
    joined: subprocess.Popen[bytes] | None = None
    try:
        mark = await asyncio.to_thread(term.read_until, re.compile(rb"JetStream on"), 0)
        mark = await asyncio.to_thread(
            term.read_until, re.compile(NODE.encode() + rb" .*online"), 0
        )
        joined = start_node(bus, "pty-node", {**env, "KODO_RAY_ADDRESS": ray_address})
        mark = await asyncio.to_thread(term.read_until, re.compile(rb"pty-node .*online"), mark)

        async with Client(bus.url) as kb:
            execution = await (await kb.flow("quick", via="cli-registry")).launch({})
            assert await execution.result(timeout=30) == 1
        finished = re.compile(execution.id[:8].encode() + rb" .*quick.*finished")
        await asyncio.to_thread(term.read_until, finished, mark)

        os.write(term.master, b"q")
        code = await asyncio.to_thread(term.proc.wait, 10)
        assert code == 0
    finally:
        if joined is not None:
            joined.terminate()
            await asyncio.to_thread(joined.wait, 30)
        term.close()


async def test_dashboard_quits_cleanly_on_ctrl_c(bus: Bus) -> None:
    env = {**os.environ, "KODO_NATS": bus.url, "PYTHONFAULTHANDLER": "1"}
    term = Screen([*KODO_BUS, "dashboard", "--refresh", "0.2", "--monitor", ""], 80, 24, env)
    try:
        await asyncio.to_thread(term.read_until, re.compile(rb"nodes \d+ online"), 0)
        term.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(term.proc.wait, 10)
        except subprocess.TimeoutExpired:
            term.proc.send_signal(signal.SIGABRT)
            await asyncio.sleep(2)
            with contextlib.suppress(OSError):
                while select.select([term.master], [], [], 0.5)[0]:
                    term.data += os.read(term.master, 1 << 16)
            raise AssertionError(term.data[-5000:].decode(errors="replace")) from None
        assert term.proc.returncode == 0
        with contextlib.suppress(OSError):
            while select.select([term.master], [], [], 0.5)[0]:
                term.data += os.read(term.master, 1 << 16)
        assert b"\x1b[?1049l" in term.data  # the alternate screen was left
        assert b"Traceback" not in term.data
    finally:
        term.close()
