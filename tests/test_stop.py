"""Stopping: `kodo-bus up` and `kodo-bus run` on Ctrl-C / SIGTERM, a second Ctrl-C, SIGKILL.

Each test counts processes by PID (with their creation time, so a reused PID is not counted):
every process of the tree it started — nats-server, registry and node (one process under `up`),
the node's own Ray (GCS, raylet, agents, workers) — must be gone when the command has exited. A
terminal's Ctrl-C is SIGINT to the whole foreground process group: `os.killpg` on the group of
the command (started in its own session, so the group is its own). Whatever is left is killed by
PID at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import psutil
import pytest
from nats.aio.msg import Msg

from kodo_bus import subjects
from kodo_bus.client import Client
from kodo_bus.config import ServerSettings
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO, Processes, free_ports
from .test_federation_resume import NO_JETSTREAM_CONF
from .test_reliability_support import eventually, first_event, node_body, service

STOP_LIMIT = 3.0
"""Seconds `up` may take to stop, whatever runs (issue 17)."""
FORCED_LIMIT = 1.5
"""Seconds a second Ctrl-C may take to end a command."""
Snapshot = dict[int, tuple[float, str]]
Popen = subprocess.Popen[str]


def snapshot(pid: int) -> Snapshot:
    """`pid` and every process below it now: PID → (creation time, name)."""
    found: Snapshot = {}
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            found[proc.pid] = (proc.create_time(), proc.name())
    return found


def alive(procs: Snapshot) -> list[str]:
    """Those still running (same PID and creation time, not a zombie), as `name(pid)`."""
    left = []
    for pid, (created, name) in procs.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{name}({pid})")
        except psutil.NoSuchProcess:
            pass
    return left


async def killed_soon(procs: Snapshot) -> None:
    """Every process is gone within `KILLED_WITHIN`: a forced stop SIGKILLs them and exits at
    once, and a killed Ray worker takes a moment to die (it was still `running` in the instant
    after its killer's exit, on a loaded machine)."""
    await eventually(lambda: asyncio.sleep(0, alive(procs)), lambda left: left == [], KILLED_WITHIN)


KILLED_WITHIN = 5.0


def kill(procs: Snapshot) -> None:
    for pid, (created, _) in procs.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture
def seen() -> Iterator[Snapshot]:
    """Processes a test saw; any still alive at the end is killed by PID, also on failure."""
    procs: Snapshot = {}
    try:
        yield procs
    finally:
        kill(procs)


def start(procs: Processes, log: Path, *args: str, env: dict[str, str] | None = None) -> Popen:
    """`kodo-bus ARGS` in its own session, its output in `log` (read while it runs)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("w") as out:
        proc: Popen = subprocess.Popen(
            [*KODO_BUS, *args],
            cwd=REPO,
            env=full_env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    procs.procs.append(proc)
    return proc


def text_of(log: Path) -> str:
    return log.read_text(errors="replace")


async def logged(proc: Popen, log: Path, marker: str, within: float = 60.0) -> None:
    """Until `log` holds `marker`; fails with the log's tail if `proc` exits or time runs out."""
    deadline = time.monotonic() + within
    while marker not in text_of(log):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{marker!r} not logged (exit {proc.poll()}):\n{text_of(log)}")
        await asyncio.sleep(0.1)


async def exited(proc: Popen, within: float) -> tuple[int, float]:
    """Its exit code and how long it took from now (fails past `within` s, plus a margin to
    tell a slow stop from a hung one in the message)."""
    sent = time.monotonic()
    code = await asyncio.to_thread(proc.wait, within + 30)
    return code, time.monotonic() - sent


async def up_bus(procs: Processes, tmp_path: Path, *args: str) -> tuple[Popen, Path, str]:
    """`kodo-bus up` on free ports; returns once its registry lists the example node's flows and
    the node has started."""
    port, http_port = free_ports(2)
    log = tmp_path / "up.log"
    up = start(
        procs, log, "up", "--port", str(port), "--http-port", str(http_port), "--web-port", "0",
        "--store", str(tmp_path / "store"), *args,
    )  # fmt: skip
    url = f"nats://127.0.0.1:{port}"

    async def listed() -> int:
        assert up.poll() is None, text_of(log)
        async with Client(url, retry=0) as kb:
            return len(await kb.flows(via="up-node"))

    await eventually(listed, lambda count: count > 0, 60)
    # listed by its registry half before its node half has started (a Ctrl-C before that is a
    # stop while starting: no bye, see test_ctrl_c_while_starting_stops_at_once)
    await logged(up, log, "up-node ready", 60)
    return up, log, url


async def start_ray(url: str, flow: str = "hello") -> None:
    """Launch the example `hello` and wait for its result: the node has started its own Ray."""
    async with Client(url) as kb:
        execution = await (await kb.flow(flow, via="up-node")).launch({"name": "stop"})
        assert await execution.result(timeout=120)


def ctrl_c(proc: Popen) -> None:
    """What a terminal does on Ctrl-C: SIGINT to every process of the foreground group."""
    os.killpg(proc.pid, signal.SIGINT)


@pytest.mark.parametrize("ray", [False, True], ids=["bus", "bus-with-ray"])
async def test_up_stops_in_order_within_3s_leaving_no_process(
    procs: Processes, tmp_path: Path, seen: Snapshot, ray: bool
) -> None:
    up, log, url = await up_bus(procs, tmp_path)
    if ray:
        await start_ray(url)
    seen.update(snapshot(up.pid))
    names = {name for _, name in seen.values()}
    assert "nats-server" in names
    if ray:
        assert {"gcs_server", "raylet"} <= names, names
    byes: list[bytes] = []
    watcher = await nats.connect(url)

    async def on_bye(msg: Msg) -> None:
        byes.append(msg.data)

    await watcher.subscribe(subjects.node_bye("up-node"), cb=on_bye)
    await watcher.flush()
    ctrl_c(up)
    with contextlib.suppress(Exception):  # the server goes: the watcher is cut
        await watcher.flush()
    code, took = await exited(up, STOP_LIMIT)
    with contextlib.suppress(Exception):
        await watcher.close()
    text = text_of(log)
    assert code == 0, text
    assert took <= STOP_LIMIT, f"stopped in {took:.1f} s:\n{text}"
    assert alive(seen) == [], text
    assert "Traceback" not in text
    assert "FlushTimeout" not in text
    # the node said bye on the bus: it stopped before the server
    assert len(byes) == 1, text


async def test_up_second_ctrl_c_kills_everything_at_once(
    procs: Processes, tmp_path: Path, seen: Snapshot
) -> None:
    up, log, url = await up_bus(procs, tmp_path, "--grace", "120")
    async with Client(url) as kb:
        hitl = await (await kb.flow("hitl", via="up-node")).launch({})
        await first_event(hitl, "lock")  # it waits for a human: the grace would be 120 s
    seen.update(snapshot(up.pid))
    ctrl_c(up)
    await logged(up, log, "kodo_bus.run: stopping")  # the node is in its grace period
    assert up.poll() is None
    ctrl_c(up)
    code, took = await exited(up, FORCED_LIMIT)
    text = text_of(log)
    assert code == 130, text
    assert took <= FORCED_LIMIT, f"killed in {took:.1f} s:\n{text}"
    await killed_soon(seen)
    assert "Traceback" not in text


async def test_run_second_signal_forces_it_out_of_its_grace(
    procs: Processes, fresh_server: NatsServer, tmp_path: Path, seen: Snapshot
) -> None:
    node = "stop-grace"
    proc = service(procs, tmp_path, [fresh_server.url], None, **node_body(node, grace=120))
    log = tmp_path / f"{node}.log"
    async with Client(fresh_server.url) as kb:
        flow = await eventually(lambda: kb.flow("hold", via=node), lambda _: True, 60)
        held = await eventually(lambda: flow.launch({"seconds": 300}), lambda _: True, 60)
        worker = (await first_event(held, "result")).data["pid"]
    seen.update(snapshot(proc.pid))
    assert worker in seen  # the node's own Ray runs the flow
    ctrl_c(proc)
    await logged(proc, log, "kodo_bus.run: stopping")
    assert proc.poll() is None  # waiting for the held execution (grace: 120 s)
    ctrl_c(proc)
    code, took = await exited(proc, FORCED_LIMIT)
    assert code == 130, text_of(log)
    assert took <= FORCED_LIMIT, f"forced out in {took:.1f} s"
    await killed_soon(seen)


async def test_next_start_kills_what_a_sigkilled_node_left(
    procs: Processes, fresh_server: NatsServer, tmp_path: Path, seen: Snapshot
) -> None:
    """Ray's agents outlive a SIGKILLed node (reparented to init); the next node started on
    this machine finds them through the dead node's PID record and kills them."""
    node = "stop-killed"
    proc = service(procs, tmp_path, [fresh_server.url], None, **node_body(node))
    async with Client(fresh_server.url) as kb:
        flow = await eventually(lambda: kb.flow("echo", via=node), lambda _: True, 60)
        echo = await eventually(lambda: flow.launch({"a": 1}), lambda _: True, 60)
        assert await echo.result(timeout=120) == {"a": 1}
    ray = snapshot(proc.pid)
    del ray[proc.pid]
    seen.update(ray)
    assert {"gcs_server", "raylet"} <= {name for _, name in ray.values()}
    proc.kill()
    proc.wait()
    service(procs, tmp_path, [fresh_server.url], None, **node_body("stop-next"))
    await eventually(lambda: asyncio.sleep(0, alive(ray)), lambda left: left == [], 60)


@pytest.mark.parametrize("role", ["node", "registry"])
async def test_ctrl_c_while_starting_stops_at_once(
    procs: Processes, tmp_path: Path, role: str
) -> None:
    """A bus whose JetStream does not answer keeps a service's start retrying (30 s a step, a
    bound meant for a cluster electing leaders); Ctrl-C then stops it at once, cleanly."""
    conf = tmp_path / "nojs.conf"
    conf.write_text(NO_JETSTREAM_CONF)
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=tmp_path / "store", config=conf)
    ).start()
    try:
        log = tmp_path / f"{role}.log"
        proc = start(
            procs, log, "run", "--nats", server.url, "--role", role, "--id", f"starting-{role}",
            "--log-level", "DEBUG",
            env={"KODO_USER": "plain", "KODO_PASSWORD": "plain"},
        )  # fmt: skip
        await logged(proc, log, "retrying in")  # its start waits for JetStream
        proc.send_signal(signal.SIGINT)
        code, took = await exited(proc, STOP_LIMIT)
        text = text_of(log)
        assert code == 0, text
        assert took <= STOP_LIMIT, f"stopped in {took:.1f} s:\n{text}"
        assert "stopping while starting" in text
        assert "Traceback" not in text
    finally:
        server.stop()
