"""The command line: every command listed with a description; errors are one clear line."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess

import nats
import pytest

import kodo_bus.sync
from kodo_bus.client import Client
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO, Processes
from .test_federation import eventually, info

EXPECTED = ["server", "up", "version"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KODO_BUS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_help_lists_every_command_with_a_description() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for command in EXPECTED:
        lines = [line for line in result.stdout.splitlines() if f" {command} " in line]
        assert lines, f"{command} missing from --help"
        assert len(lines[0].split(command, 1)[1].strip(" │")) > 10, f"{command} has no description"
    assert "Exit codes" in result.stdout


def test_every_command_has_help() -> None:
    for command in EXPECTED:
        result = _run(command, "--help")
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout


def test_version() -> None:
    result = _run("version")
    assert result.returncode == 0
    assert result.stdout.startswith("kodo-bus ")
    assert "nats-server: v2." in result.stdout


# -- one variable, KODO_NATS, for every process -----------------------------------------------


def _dead_url() -> str:
    """A loopback URL where nothing listens (a port the OS just gave back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{sock.getsockname()[1]}"


async def test_kodo_nats_alone_points_cli_sdk_and_sync_client_at_the_bus(
    procs: Processes, fresh_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KODO_NATS (a comma-separated list, its first URL down) is the one variable: `kodo-bus run`,
    `kodo-bus flows`, `kodo-bus executions`, `Client()` and the sync `Client()` all read it."""
    monkeypatch.delenv("KODO_NATS_URL", raising=False)
    monkeypatch.setenv("KODO_NATS", f"{_dead_url()},{fresh_server.url}")
    procs.start("run", "--role", "registry", "--id", "env-registry", cwd=REPO)  # os.environ's
    async with await nats.connect(fresh_server.url) as nc:
        await eventually(lambda: info(nc, "env-registry"), lambda i: i.id == "env-registry", 30)

    for args in (["flows", "--json"], ["executions", "--json"]):
        done = await asyncio.to_thread(_cli_with_env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["total"] == 0

    async with Client() as kb:
        assert kb.urls[1] == fresh_server.url
        assert await kb.flows() == []

    def sync_flows() -> list[object]:
        with kodo_bus.sync.Client() as kb:
            return list(kb.flows())

    assert await asyncio.to_thread(sync_flows) == []


def _cli_with_env(*args: str) -> subprocess.CompletedProcess[str]:
    """A command with this process's environment (where the test set KODO_NATS)."""
    return subprocess.run(
        [*KODO_BUS, *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )
