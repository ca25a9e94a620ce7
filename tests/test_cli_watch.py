"""`kodo-bus events --all` as a subprocess on a real nats-server: the `nats sub 'kodo.events.>'`
of kodo-bus (issue 17, finding 6).

No node runs: the events are published here as nodes publish them (JSON, `Nats-Msg-Id`, a burst
as one JSON array), together with garbage, which a watcher must count and survive.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from kodo_bus import subjects
from kodo_bus.bus import ensure_execution_storage
from kodo_bus.client import Client
from kodo_bus.codec import JSON, MSG_ID
from kodo_bus.executions import event_message
from kodo_bus.models import Event
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO, Processes


def cli(server: NatsServer, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run one command against `server`; (exit code, stdout, stderr)."""
    env = {**os.environ, "KODO_NATS": server.url, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [*KODO_BUS, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def make(execution: str, seq: int, kind: str, data: Any, **who: str) -> Event:
    envelope = {"node": "n1", "flow": "f1", "launcher": "alice", **who}
    fields = {"execution": execution, "seq": seq, "ts": time.time(), "kind": kind, "data": data}
    return Event.model_validate({**fields, **envelope})


async def publish(js: JetStreamContext, *events: Event) -> None:
    """Each event as a node publishes one (stored in KODO_EVENTS)."""
    for event in events:
        subject, body, headers = event_message(event)
        await js.publish(subject, body, headers=headers)


async def publish_burst(js: JetStreamContext | NATS, events: list[Event]) -> None:
    """Consecutive events of one subject as one message: a JSON array, id `<ex>:<first>-<last>`
    (subjects.md, Bursts)."""
    first, last = events[0], events[-1]
    body = "[" + ",".join(e.model_dump_json(exclude_none=True) for e in events) + "]"
    headers = {"Content-Type": JSON, MSG_ID: f"{first.execution}:{first.seq}-{last.seq}"}
    subject = subjects.events(first.launcher, first.execution, first.kind)
    await js.publish(subject, body.encode(), headers=headers)


A = "a" * 24 + "00000001"
B = "b" * 24 + "00000002"
C = "c" * 24 + "00000003"


async def a_bus(server: NatsServer) -> None:
    """Execution A (alice, n1/f1) with a burst of three stdout events, execution B (bob,
    n2/f2), two garbage messages, then 300 events of C (n3/f3) after them all."""
    async with Client(server.url) as kb:
        await ensure_execution_storage(kb.js, max_age=3600)
        await publish(kb.js, make(A, 1, "meta", {}), make(A, 2, "status", {"status": "running"}))
        await publish_burst(kb.js, [make(A, s, "stdout", f"line {s}\n") for s in (3, 4, 5)])
        b = {"node": "n2", "flow": "f2", "launcher": "bob"}
        await publish(kb.js, make(B, 1, "log", {"level": "warning", "message": "careful"}, **b))
        await kb.js.publish(subjects.events("alice", A, "status"), b"not json at all")
        await kb.js.publish(subjects.events("bob", B, "markdown"), b"[1, 2]")
        await publish(kb.js, make(A, 6, "status", {"status": "finished"}))
        c = {"node": "n3", "flow": "f3"}
        await publish(kb.js, *(make(C, s, "text", f"t{s}", **c) for s in range(1, 301)))


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def warnings(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


async def test_stored_events_filtered_bursts_split_garbage_counted(
    fresh_server: NatsServer,
) -> None:
    await a_bus(fresh_server)

    code, out, err = cli(fresh_server, "events", "--all", "--flow", "f1", "--json")
    assert code == 0, err
    got = lines(out)
    assert [(e["execution"], e["seq"]) for e in got] == [(A, s) for s in range(1, 7)]
    assert [e["data"] for e in got if e["kind"] == "stdout"] == ["line 3\n", "line 4\n", "line 5\n"]
    assert all("parent" not in e for e in got)  # the wire envelope: nulls left out
    assert got[0]["launcher"] == "alice" and got[0]["node"] == "n1" and got[0]["v"] == 1
    (warning,) = warnings(err)
    assert warning.startswith("warning: 2 undecodable messages skipped"), err

    # the newest 100 by default, in order, counting the events of a burst one by one
    code, out, err = cli(fresh_server, "events", "--all", "--json")
    assert code == 0, err
    assert [(e["execution"], e["seq"]) for e in lines(out)] == [(C, s) for s in range(201, 301)]

    # a rare filter looks back past the first windows; --last counts events, not messages
    code, out, err = cli(fresh_server, "events", "--all", "--node", "n1", "--last", "4", "--json")
    assert code == 0, err
    assert [e["seq"] for e in lines(out)] == [3, 4, 5, 6]

    code, out, _ = cli(fresh_server, "events", "--all", "--launcher", "bob", "--json")
    assert [(e["execution"], e["kind"]) for e in lines(out)] == [(B, "log")]
    code, out, _ = cli(fresh_server, "events", "--all", "-k", "stdout", "-k", "log", "--json")
    assert [e["kind"] for e in lines(out)] == ["stdout", "stdout", "stdout", "log"]

    code, out, err = cli(fresh_server, "events", "--all", "--flow", "f2", "--flow", "f1")
    assert code == 0, err
    text = out.splitlines()
    assert len(text) == 7, out
    assert f"{B[:8]} n2/f2 log" in text[5] and "WARNING" in text[5] and "careful" in text[5]
    assert f"{A[:8]} n1/f1 stdout" in text[2] and "line 3" in text[2]
    assert "finished" in text[6]


async def test_fresh_bus_and_usage_errors(fresh_server: NatsServer) -> None:
    code, out, err = cli(fresh_server, "events", "--all")
    assert (code, out) == (0, ""), err
    assert warnings(err) == ["no stored events match on this bus"]
    for args in (
        ["events"],
        ["events", "abcdef", "--all"],
        ["events", "--all", "--kind", "nope"],
        ["events", "abcdef", "--flow", "f1"],
        ["events", "--all", "--launcher", "a.b"],
    ):
        code, out, err = cli(fresh_server, *args)
        assert code == 2, (args, out, err)
        assert warnings(err)[0].startswith("error: "), (args, err)
        assert len(warnings(err)) <= 2, (args, err)


class Reader:
    """The stdout lines of a process, read by a thread, taken with deadlines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout
        self.thread = threading.Thread(target=self._read, args=(stream,))
        self.thread.start()

    def _read(self, stream: Iterable[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def take(self, within: float = 20) -> str:
        try:
            return self.lines.get(timeout=within)
        except queue.Empty:
            raise AssertionError(f"no line within {within} s") from None


@pytest.fixture
def watcher(procs: Processes, fresh_server: NatsServer) -> Iterator[Any]:
    """Start `kodo-bus ARGS` with stdout and stderr apart; stopped by PID at the end."""

    def start(*args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "KODO_NATS": fresh_server.url, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [*KODO_BUS, *args],
            env=env,
            cwd=REPO,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        procs.procs.append(proc)
        return proc

    yield start


async def until_live(nc: NATS, reader: Reader, probe: str) -> list[dict[str, Any]]:
    """Publish probe events until the watcher prints one (it has subscribed); what it printed."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    seq = 0
    while not any(e["execution"] == probe for e in seen):
        assert time.monotonic() < deadline, f"the watcher never showed a live event: {seen}"
        seq += 1
        subject, body, headers = event_message(make(probe, seq, "status", {"status": "running"}))
        await nc.publish(subject, body, headers=headers)  # core NATS: a bus without a stream too
        await nc.flush()
        try:
            seen.append(json.loads(await asyncio.to_thread(reader.lines.get, timeout=0.3)))
        except queue.Empty:
            continue
    return seen


async def test_follow_is_live_until_ctrl_c(fresh_server: NatsServer, watcher: Any) -> None:
    """`--all --follow --last 2`: the two newest stored events, then live ones (a burst split,
    filtered, garbage counted), each once; Ctrl-C exits 130 with only the warning line."""
    probe = "p" * 32
    async with Client(fresh_server.url) as kb:
        await ensure_execution_storage(kb.js, max_age=3600)
        await publish(kb.js, *(make(A, s, "text", f"old {s}") for s in (1, 2, 3)))
        proc = watcher("events", "--all", "--follow", "--last", "2", "--flow", "f1", "--json")
        reader = Reader(proc)
        first = [json.loads(reader.take(60)), json.loads(reader.take())]
        assert [(e["execution"], e["seq"]) for e in first] == [(A, 2), (A, 3)]
        seen = await until_live(kb.nc, reader, probe)
        assert all(e["execution"] == probe for e in seen)

        await publish_burst(kb.js, [make(B, s, "stdout", f"b{s}") for s in (1, 2, 3)])
        await publish(kb.js, make(C, 1, "log", {"level": "info", "message": "x"}, flow="other"))
        await kb.nc.publish(subjects.events("alice", B, "status"), b"\xc1 garbage")
        await publish(kb.js, make(B, 4, "status", {"status": "finished"}))
        got = [json.loads(reader.take()) for _ in range(4)]
        assert [(e["execution"], e["seq"], e["kind"]) for e in got] == [
            (B, 1, "stdout"),
            (B, 2, "stdout"),
            (B, 3, "stdout"),
            (B, 4, "status"),
        ]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 130
    reader.thread.join(5)
    assert reader.lines.empty()  # the event of another flow was never printed
    assert proc.stderr is not None
    with proc.stderr:
        (warning,) = warnings(proc.stderr.read())
    assert warning.startswith("warning: 1 undecodable message skipped"), warning


async def test_ctrl_c_on_a_quiet_bus_is_silent(fresh_server: NatsServer, watcher: Any) -> None:
    """No stream at all (a fresh bus), nothing published: live still works, Ctrl-C says
    nothing."""
    proc = watcher("events", "--all", "--follow", "--json")
    reader = Reader(proc)
    async with Client(fresh_server.url) as kb:
        await until_live(kb.nc, reader, "q" * 32)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 130
    assert proc.stderr is not None
    with proc.stderr:
        assert proc.stderr.read() == ""
