"""One line, never a traceback, and a hint naming the next command: the execution commands on a
bus where nothing ever ran (only `kodo-bus server`), `logs` of a client on the secure profile, and
an unknown flow's "did you mean".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kodo_bus.auth import UserStore
from kodo_bus.bus import connect, ensure_execution_storage, jetstream
from kodo_bus.config import ConnectSettings, Credentials, ServerSettings
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes

ID = "5e1f" + "0" * 28
EXAMPLES = REPO / "examples" / "federation"


def cli(procs: Processes, server: NatsServer, *args: str, **env: str) -> tuple[int, list[str]]:
    """`kodo-bus ARGS --nats URL`: exit code and the non-empty lines it printed."""
    proc = procs.start(*args, "--nats", server.url, env={"COLUMNS": "200", **env})
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, [line for line in out.splitlines() if line.strip()]


def error_and_hint(lines: list[str]) -> tuple[str, str]:
    """The error line and the hint line; no traceback, no "--debug" offer (nothing it helps)."""
    text = "\n".join(lines)
    assert "Traceback" not in text and "--debug" not in text, text
    assert len(lines) == 2 and lines[0].startswith("error: "), text
    return lines[0], lines[1]


@pytest.mark.parametrize(
    "args",
    [
        ("events", ID),
        ("events", ID, "--follow"),
        ("events", ID[:6]),
        ("cancel", ID),
        ("answer", ID, "{}"),
    ],
)
def test_execution_commands_on_a_fresh_bus(
    fresh_server: NatsServer, procs: Processes, args: tuple[str, ...]
) -> None:
    code, lines = cli(procs, fresh_server, *args)
    assert code == 2, lines
    error, hint = error_and_hint(lines)
    assert f"no execution {args[1]!r} is known" in error and "run no execution yet" in error
    assert "'kodo-bus executions'" in hint


def test_logs_on_a_fresh_bus(fresh_server: NatsServer, procs: Processes) -> None:
    code, lines = cli(procs, fresh_server, "logs")
    assert code == 0, lines
    assert lines == ["no log events (yet) on this bus"]
    code, lines = cli(procs, fresh_server, "logs", "--since", "5m", "--level", "error")
    assert code == 0, lines
    assert len(lines) == 1 and "Traceback" not in lines[0]


def test_unknown_flow_says_did_you_mean(fresh_server: NatsServer, procs: Processes) -> None:
    for config in ("node.yaml", "registry.yaml"):
        procs.start(
            "run", "--nats", fresh_server.url, "--heartbeat", "0.3", "--config",
            str(EXAMPLES / config), cwd=REPO,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:  # until the registry's view holds the node's five flows
        code, lines = cli(procs, fresh_server, "flows", "--json")
        if code == 0 and json.loads("\n".join(lines)).get("total") == 5:
            break
        assert time.monotonic() < deadline, lines
        time.sleep(0.3)

    code, lines = cli(procs, fresh_server, "launch", "revrse")
    assert code == 2, lines
    error, hint = error_and_hint(lines)
    assert "no flow named 'revrse' — did you mean 'reverse'?" in error, error
    assert "'kodo-bus flows'" in hint


# -- the secure profile ----------------------------------------------------------------------------
@pytest.fixture
def secure(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server with the generated secure config: an admin and a client user."""
    store = UserStore(tmp_path / "users")
    for name, role in (("root", "admin"), ("alice", "client")):
        store.add(name, role, password=f"secret-of-{name}", rounds=4)
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=tmp_path / "store", config=store.conf_file)
    ).start()
    try:
        yield server
    finally:
        server.stop()


async def _make_storage(server: NatsServer) -> None:
    creds = Credentials(user="root", password="secret-of-root")
    nc = await connect(ConnectSettings(nats=[server.url], credentials=creds))
    try:
        await ensure_execution_storage(jetstream(nc), max_age=3600)
    finally:
        await nc.drain()


def test_client_reading_the_central_log_gets_one_line(secure: NatsServer, procs: Processes) -> None:
    asyncio.run(_make_storage(secure))
    started = time.monotonic()
    code, lines = cli(procs, secure, "logs", KODO_USER="alice", KODO_PASSWORD="secret-of-alice")
    assert code == 1, lines
    text = "\n".join(lines)
    assert "Traceback" not in text and lines[0].startswith("error: "), text
    assert "only monitor and admin users" in lines[0], text
    assert len(lines) <= 3, text
    assert time.monotonic() - started < 30
