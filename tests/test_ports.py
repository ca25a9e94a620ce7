"""The suite and the examples run beside a `kodo-bus up` on the default ports (issue 17, finding
9): with the README's tutorial bus running, `test_cli_server_binary_missing` failed (8222 in
use) and examples/federation/walkthrough.py, "a free port" in its docstring, crashed on the
packaged config's monitoring port.

A real nats-server holds 4222 and 8222 here, as `kodo-bus up` would, while the tests that used
to collide run in a pytest of their own and the walkthrough runs as a user runs it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kodo_bus.config import ServerSettings
from kodo_bus.server import NatsServer

from .conftest import REPO

pytestmark = pytest.mark.slow

DEFAULTS = {"client": 4222, "monitoring": 8222}
"""What `kodo-bus up` listens on when given no flags (ServerSettings' defaults)."""
COLLIDED = [
    "tests/test_server.py::test_cli_server_binary_missing",
    "tests/test_server.py::test_cli_server_port_in_use",
    "tests/test_server.py::test_server_refuses_a_taken_port_before_starting",
    "tests/test_flowkit.py",
]
"""Tests that named a default port (or let the packaged config's 8222 through)."""


def _taken(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_the_defaults_are_servers_defaults() -> None:
    settings = ServerSettings()
    assert (settings.port, settings.http_port) == (DEFAULTS["client"], DEFAULTS["monitoring"])


@pytest.fixture
def default_bus(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server on 127.0.0.1:4222 with monitoring on 8222, stopped by its PID."""
    taken = [f"{what} port {port}" for what, port in DEFAULTS.items() if _taken(port)]
    if taken:
        pytest.skip(
            f"{' and '.join(taken)} already taken on this machine (a running `kodo-bus up`?): "
            "this test must hold the defaults itself to know what holds them"
        )
    server = NatsServer(
        ServerSettings(
            port=DEFAULTS["client"],
            http_port=DEFAULTS["monitoring"],
            store=tmp_path / "store",
            config=REPO / "nats-server.conf",
        )
    )
    with server:
        assert server.port == DEFAULTS["client"] and server.http_port == DEFAULTS["monitoring"]
        yield server


def test_the_collided_tests_pass_beside_a_bus_on_the_defaults(default_bus: NatsServer) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *COLLIDED],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert _taken(DEFAULTS["client"]) and _taken(DEFAULTS["monitoring"])  # held all along


def test_the_walkthrough_runs_beside_a_bus_on_the_defaults(default_bus: NatsServer) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "federation" / "walkthrough.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    steps = [line for line in done.stdout.splitlines() if line[:2] in ("1.", "2.", "3.", "4.")]
    assert len(steps) == 4 and all(line.endswith("ok") for line in steps), done.stdout
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
