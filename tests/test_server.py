"""`kodo-bus server` and `kodo_bus.server.NatsServer` run a real nats-server and stop it cleanly."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import psutil
import pytest

from kodo_bus.config import ServerSettings
from kodo_bus.errors import ServerError
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes


def _read_until(proc: object, pattern: str, timeout: float = 20) -> re.Match[str]:
    """Read the process's output line by line until `pattern` matches (or fail at the deadline)."""
    import selectors

    stream = proc.stdout  # type: ignore[attr-defined]
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        if not sel.select(left):
            break
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"{pattern!r} not printed within {timeout} s; got: {''.join(seen)}")


@pytest.fixture
def listening_socket() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_cli_server_serves_pubsub_and_jetstream_and_stops_on_sigterm(
    procs: Processes, tmp_path: Path
) -> None:
    proc = procs.start("server", "--port", "0", "--http-port", "0", "--store", str(tmp_path / "s"))
    url = _read_until(proc, r"ready at (nats://127\.0\.0\.1:\d+)").group(1)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert [c.name() for c in children] == ["nats-server"]

    nc = await nats.connect(url)
    try:
        sub = await nc.subscribe("kodo.test.ping")
        await nc.publish("kodo.test.ping", b"hello")
        assert (await sub.next_msg(timeout=5)).data == b"hello"
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.1", b"x")
        assert ack.seq == 1
        assert (await js.get_msg("T", 1)).data == b"x"
    finally:
        await nc.close()
    assert (tmp_path / "s" / "jetstream").is_dir()

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 5
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_cli_server_port_in_use(procs: Processes, listening_socket: int, tmp_path: Path) -> None:
    proc = procs.start("server", "--port", str(listening_socket), "--store", str(tmp_path))
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert f"port 127.0.0.1:{listening_socket} is already in use" in output
    assert "Traceback" not in output


def test_cli_server_binary_missing(procs: Processes, tmp_path: Path) -> None:
    proc = procs.start(
        "server",
        "--port",
        "0",
        "--store",
        str(tmp_path),
        env={"KODO_NATS_SERVER": str(tmp_path / "nope")},
    )
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert "nats-server binary" in output and "missing" in output
    assert len(output.strip().splitlines()) <= 2  # one error line and the --debug hint


def test_server_restart_keeps_port_and_store(tmp_path: Path) -> None:
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=tmp_path, config=REPO / "nats-server.conf")
    )
    with server:
        port = server.port
        assert server.version.startswith("2.")
        server.restart()
        assert server.port == port and server.running
    assert not server.running


def test_server_refuses_a_taken_port_before_starting(listening_socket: int, tmp_path: Path) -> None:
    server = NatsServer(ServerSettings(port=listening_socket, http_port=None, store=tmp_path))
    with pytest.raises(ServerError, match="already in use"):
        server.start()
    assert server.pid is None


def test_server_reports_why_it_died_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("this is { not valid")
    server = NatsServer(ServerSettings(port=0, http_port=None, store=tmp_path, config=bad))
    with pytest.raises(ServerError, match="exited at start"):
        server.start()
