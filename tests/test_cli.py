"""The command line: every command listed with a description; errors are one clear line."""

from __future__ import annotations

import subprocess

from .conftest import KODO_BUS

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
