"""`kodo-bus server` and `kodo_bus.server.NatsServer` run a real nats-server and stop it cleanly."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import psutil
import pytest

from kodo_bus.config import ServerSettings
from kodo_bus.errors import ServerError
from kodo_bus.server import NatsServer, config_ports

from .conftest import KODO_BUS, REPO, Processes, free_ports


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
    proc = procs.start(
        "server", "--port", str(listening_socket), "--http-port", "0", "--store", str(tmp_path)
    )
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 2  # the exit-code table: a server that cannot start is config
    assert f"port 127.0.0.1:{listening_socket} is already in use" in output
    assert "Traceback" not in output


def test_cli_server_binary_missing(procs: Processes, tmp_path: Path) -> None:
    proc = procs.start(
        "server",
        "--port",
        "0",
        "--http-port",
        "0",  # not the default 8222: a `kodo-bus up` may hold it (issue 17, finding 9)
        "--store",
        str(tmp_path),
        env={"KODO_NATS_SERVER": str(tmp_path / "nope")},
    )
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 2
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


def test_monitoring_off_means_off_whatever_the_config_says(tmp_path: Path) -> None:
    """`http_port=None` is documented as "turns monitoring off": the packaged config's own
    `http: 127.0.0.1:8222` must not apply (it did; a test held 8222 and the server died)."""
    with NatsServer(
        ServerSettings(port=0, http_port=None, store=tmp_path, config=REPO / "nats-server.conf")
    ) as server:
        assert server.http_port is None and server.monitor_url is None
        pid = server.pid
        assert pid is not None
        ports = {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")}
        assert ports == {server.port}, ports


def test_server_refuses_a_taken_port_before_starting(listening_socket: int, tmp_path: Path) -> None:
    server = NatsServer(ServerSettings(port=listening_socket, http_port=0, store=tmp_path))
    with pytest.raises(ServerError, match="already in use"):
        server.start()
    assert server.pid is None


def test_server_reports_why_it_died_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("this is { not valid")
    server = NatsServer(ServerSettings(port=0, http_port=None, store=tmp_path, config=bad))
    with pytest.raises(ServerError, match="exited at start"):
        server.start()


# -- the client address: --host, the config's own host, 127.0.0.1 ----------------------------------


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


async def _serves(url: str, **auth: str) -> None:
    nc = await nats.connect(url, **auth)
    try:
        sub = await nc.subscribe("kodo.test.host")
        await nc.publish("kodo.test.host", b"here")
        assert (await sub.next_msg(timeout=5)).data == b"here"
    finally:
        await nc.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])
async def test_cli_server_listens_on_host(procs: Processes, tmp_path: Path, host: str) -> None:
    other = "127.0.0.2" if host == "127.0.0.1" else "127.0.0.1"
    args = ["--host", host, "--port", "0", "--http-port", "0", "--store", str(tmp_path / "s")]
    proc = procs.start("server", *args, cwd=REPO)  # ./nats-server.conf says host: 127.0.0.1
    url = _read_until(proc, r"ready at (nats://\S+)").group(1)
    port = int(url.rsplit(":", 1)[1])
    assert url == f"nats://{host}:{port}"
    await _serves(url)
    assert _refused(other, port)
    assert procs.stop(proc) == 0


async def test_cli_server_takes_the_host_of_its_config(procs: Processes, tmp_path: Path) -> None:
    """deploy/secure/README.md: `kodo-bus server --config` runs the secure profile as written,
    on the config's own host (the loopback 127.0.0.2 here), users and all."""
    profile = tmp_path / "secure"
    init = await asyncio.to_thread(
        subprocess.run,
        [*KODO_BUS, "auth", "init", "--dir", str(profile), "--host", "127.0.0.2", "--http", ""],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    password = init.stdout.strip()  # stdout holds the admin password alone
    conf = profile / "nats-server.conf"
    args = [
        "--config",
        str(conf),
        "--port",
        "0",
        "--http-port",
        "0",
        "--store",
        str(tmp_path / "s"),
    ]
    proc = procs.start("server", *args, cwd=REPO)
    url = _read_until(proc, r"ready at (nats://\S+)").group(1)
    port = int(url.rsplit(":", 1)[1])
    assert url == f"nats://127.0.0.2:{port}"
    await _serves(url, user="admin", password=password)
    assert _refused("127.0.0.1", port)
    assert procs.stop(proc) == 0


async def test_cli_server_serves_on_its_config_files_ports(
    procs: Processes, tmp_path: Path
) -> None:
    """`server --config` took 4222/8222 whatever the file said (issue 17, finding 8): without
    `--port`/`--http-port`, the file's own ports; `config_ports` reads them."""
    client, http = free_ports(2)
    conf = tmp_path / "ports.conf"
    conf.write_text(f"port: {client}\nhttp: 127.0.0.1:{http}\n")
    assert config_ports(conf) == (client, http)
    proc = procs.start("server", "--config", str(conf), "--store", str(tmp_path / "s"), cwd=REPO)
    url = _read_until(proc, r"ready at (nats://\S+)").group(1)
    assert url == f"nats://127.0.0.1:{client}"
    await _serves(url)
    with socket.create_connection(("127.0.0.1", http), timeout=5):
        pass  # monitoring listens on the file's port
    assert procs.stop(proc) == 0


@pytest.mark.parametrize(
    ("config_text", "host", "expected", "dash_a"),
    [
        ("host: 127.0.0.2\n", None, "127.0.0.2", False),  # the config's own host
        ("listen: 127.0.0.2:4222\n", None, "127.0.0.2", False),
        ("host: 127.0.0.2\n", "127.0.0.1", "127.0.0.1", True),  # given: overrides the config
        ("leafnodes {\n  host: 127.0.0.2\n}\n", None, "127.0.0.1", True),  # not the clients'
        ("port: 4222\n", "127.0.0.2", "127.0.0.2", True),
        ("port: 4222\n", None, "127.0.0.1", True),  # no host anywhere: loopback, never all
    ],
)
def test_server_host_from_settings_else_config_else_loopback(
    tmp_path: Path, config_text: str, host: str | None, expected: str, dash_a: bool
) -> None:
    conf = tmp_path / "my.conf"
    conf.write_text(f"# host: 10.1.2.3 is a comment\n{config_text}jetstream {{}}\n")
    settings = ServerSettings(host=host, port=0, http_port=None, store=tmp_path, config=conf)
    server = NatsServer(settings)
    assert ("-a" in server.command()) == dash_a
    with server:
        port = server.port or 0
        assert server.url == f"nats://{expected}:{port}"
        socket.create_connection((expected, port), timeout=2).close()
        assert _refused("127.0.0.2" if expected == "127.0.0.1" else "127.0.0.1", port)
