"""Shared fixtures: real nats-servers on free loopback ports, stopped by their own PID."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psutil
import pytest
from nats.aio.client import Client as NATS

from kodo_bus.bus import connect
from kodo_bus.config import ConnectSettings, ServerSettings
from kodo_bus.server import NatsServer

from .invariants import Watch

REPO = Path(__file__).resolve().parent.parent
KODO_BUS = [sys.executable, "-m", "kodo_bus"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "invariants(allow_running=False): how the `invariants` fixture judges this test",
    )


def _server(store: Path) -> NatsServer:
    return NatsServer(
        ServerSettings(port=0, http_port=0, store=store, config=REPO / "nats-server.conf")
    )


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server for the whole session (tests use unique subjects and names)."""
    server = _server(tmp_path_factory.mktemp("nats-session")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def invariants(
    request: pytest.FixtureRequest, nats_server: NatsServer
) -> AsyncIterator[Watch]:
    """At test end, the execution invariants (tests/invariants.py) over every execution the test
    added to the session's nats-server.

    Request it before anything that starts nodes (modules apply it with `usefixtures` in
    `pytestmark`, which pytest sets up before the test's own fixtures): set up first, it is
    torn down last, once the test's nodes have stopped and their executions had to end.
    """
    watch = await Watch.start(nats_server.url)
    marker = request.node.get_closest_marker("invariants")
    watch.allow_running = bool(marker and marker.kwargs.get("allow_running"))
    try:
        yield watch
        (await watch.check()).assert_ok()
    finally:
        await watch.close()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own, for tests that restart or kill it."""
    server = _server(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(fresh_server: NatsServer) -> AsyncIterator[NATS]:
    """A kodo-bus connection to `fresh_server` (a test module may define its own `nc`)."""
    conn = await connect(ConnectSettings(nats=[fresh_server.url]))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[[str], NatsServer]]:
    """Start extra servers (two buses, say); every one is stopped at the end of the test."""
    started: list[NatsServer] = []

    def make(name: str) -> NatsServer:
        server = _server(tmp_path / f"nats-{name}").start()
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


RAY_WORKER_PORTS_END = 19999
"""Last port of the range `ray start` gives its workers (10002-19999 by default)."""


def unpicked_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports that nothing else on this machine picks by itself.

    For ports a process binds long after they are chosen, like the ports of `ray start` (its
    agents bind the metrics and agent ports many seconds later): a port from `free_ports` is in
    the kernel's ephemeral range, where any bind(0) (a Ray worker's gRPC server, a nats-server
    on port -1) and Ray's own random picks may take it in between. These come from between
    Ray's worker range and the ephemeral range instead, chosen at random, each checked free.
    """
    low, _ = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = random.sample(range(RAY_WORKER_PORTS_END + 1, low), k=min(4 * count + 64, 4096))
    with contextlib.ExitStack() as stack:
        held: list[int] = []
        for port in candidates:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            held.append(port)
            if len(held) == count:
                return held
    raise RuntimeError(f"not {count} free ports between {RAY_WORKER_PORTS_END} and {low}")


class Processes:
    """Subprocesses started by a test; each stopped by its own PID (children included)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self, *args: str, env: dict[str, str] | None = None, **kw: object
    ) -> subprocess.Popen[str]:
        """`kodo-bus ARGS` with this environment plus `env`."""
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        return self.spawn([*KODO_BUS, *args], env=full_env, **kw)

    def spawn(
        self, argv: list[str], *, env: dict[str, str] | None = None, **kw: object
    ) -> subprocess.Popen[str]:
        """Any command, in its own session, output piped; `env` is its whole environment."""
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            argv,
            env=env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kw,
        )
        self.procs.append(proc)
        return proc

    def stop(
        self, proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 15
    ) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def close(self, proc: subprocess.Popen[str]) -> None:
        """Release the pipe of a stopped process (its unread output is dropped)."""
        if proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.close()

    def stop_all(self) -> None:
        for proc in self.procs:
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            self.stop(proc)
            self.close(proc)
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()


def run_python(*argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`python ARGV...` from the repository (`-c SCRIPT ...` or `-m kodo_bus ...`), run to its
    end; it must succeed (the assertion shows the end of its stderr)."""
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def start_script(
    script: Path, env: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """`bash SCRIPT` in its own session (so its whole tree can be signalled), its output in
    `log` (read by the test while it runs); `env` is its whole environment."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            ["bash", str(script)],
            env=env,
            cwd=None if cwd is None else str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_logged(proc: subprocess.Popen[bytes], log: Path, marker: bytes, within: float) -> None:
    """Until `log` holds `marker`; fails with the log's tail if `proc` exits or time runs out."""
    deadline = time.monotonic() + within
    while marker not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"{marker!r} not logged (exit {proc.poll()}):\n{tail}")
        time.sleep(0.2)


@pytest.fixture
def procs() -> Iterator[Processes]:
    p = Processes()
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One local Ray for the whole session (started only when a test asks); its GCS address.

    PYTHONPATH is set first so Ray's workers import `tests.*` and `examples.*` like the driver.
    """
    import ray

    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), path) if p)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
