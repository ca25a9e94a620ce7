"""Issue 17, findings 2, 4 and 8 with the real `kodo-bus` on real buses: "did you mean" for node
ids, input fields and commands, the same exit codes for every command, `--help` as README
writes it, and a `kodo-bus run` started while a cluster has no JetStream leader yet.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from kodo_bus.errors import FieldProblem, InputsInvalid
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .test_cli_fresh_bus import EXAMPLES, cli, error_and_hint
from .test_reliability_cluster import cluster_servers


def bus_with_node(procs: Processes, server: NatsServer) -> None:
    """The federation example's node (id `node`) and registry (id `registry`), until the
    registry's view holds the node's five flows."""
    for config in ("node.yaml", "registry.yaml"):
        procs.start(
            "run", "--nats", server.url, "--heartbeat", "0.3", "--config",
            str(EXAMPLES / config), cwd=REPO,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        code, lines = cli(procs, server, "flows", "--json")
        if code == 0 and json.loads("\n".join(lines)).get("total") == 5:
            return
        assert time.monotonic() < deadline, lines
        time.sleep(0.3)


def test_did_you_mean_for_node_ids_fields_and_flows(
    fresh_server: NatsServer, procs: Processes
) -> None:
    bus_with_node(procs, fresh_server)
    for args in (
        ("nodes", "--via", "regsitry"),
        ("flows", "--via", "nod"),
        ("info", "nde"),
        ("disconnect", "nod"),
        ("launch", "upper", "--via", "nodee", "-i", "text=hi"),
    ):
        code, lines = cli(procs, fresh_server, *args)
        assert code == 2, (args, lines)
        error, hint = error_and_hint(lines)
        wanted = "registry" if args[0] == "nodes" else "node"
        assert f"did you mean {wanted!r}?" in error, (args, error)
        assert "'kodo-bus nodes'" in hint, (args, hint)

    code, lines = cli(procs, fresh_server, "launch", "nod/upper", "-i", "text=hi")
    assert code == 2, lines
    error, _ = error_and_hint(lines)
    assert "did you mean 'node/upper'?" in error, error
    code, lines = cli(procs, fresh_server, "launch", "node/uper", "-i", "text=hi")
    assert code == 2, lines
    error, _ = error_and_hint(lines)
    assert "did you mean 'node/upper'?" in error, error

    code, lines = cli(procs, fresh_server, "launch", "upper", "-i", "txt=hi", "--no-follow")
    assert code == 2, lines
    error, hint = error_and_hint(lines)
    assert "did you mean 'text'?" in error and "'kodo-bus launch FLOW'" in hint, lines

    code, lines = cli(procs, fresh_server, "forget", "nod")
    assert code == 0, lines
    assert "no node 'nod' is known on this bus — did you mean 'node'?" in lines, lines


def test_unknown_command_says_did_you_mean(procs: Processes) -> None:
    proc = procs.start("lanch", "greet", env={"COLUMNS": "200"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "No such command 'lanch'. Did you mean 'launch'" in out, out
    assert "Traceback" not in out


def help_of(procs: Processes, *command: str) -> str:
    proc = procs.start(*command, "--help", env={"COLUMNS": "200"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ((), "kodo-bus [OPTIONS] COMMAND [ARGS]..."),
        (("launch",), "kodo-bus launch [OPTIONS] FLOW"),
        (("answer",), "kodo-bus answer [OPTIONS] EXECUTION [VALUE]"),
        (("events",), "kodo-bus events [OPTIONS] [EXECUTION]"),
        (("flows",), "kodo-bus flows [OPTIONS]"),
        (("cancel",), "kodo-bus cancel [OPTIONS] EXECUTION"),
        (("disconnect",), "kodo-bus disconnect [OPTIONS] SERVICE"),
        (("forget",), "kodo-bus forget [OPTIONS] NODE"),
        (("inspect", "view"), "kodo-bus inspect view [OPTIONS] [REGISTRY]"),
        (("auth",), "kodo-bus auth [OPTIONS] COMMAND [ARGS]..."),
    ],
)
def test_help_reads_like_the_readme(procs: Processes, command: tuple[str, ...], usage: str) -> None:
    text = help_of(procs, *command)
    shown = re.search(r"Usage: (?:kodo-bus|python -m kodo_bus) (.*)", text)  # as the test runs it
    assert shown is not None and shown.group(1).strip() == usage.removeprefix("kodo-bus "), text
    assert "<bool>" not in text and "{" not in text.split("Usage:")[1].splitlines()[0], text
    if command in {("cancel",), ("answer",), ("disconnect",), ("forget",)}:
        assert "instead of a table" not in text and "Print the reply as JSON" in text, text


def test_flows_text_search_is_query(procs: Processes) -> None:
    text = help_of(procs, "flows")
    assert re.search(r"--query\s+-q\b", text), text
    assert "--q " not in text


def test_exit_codes_are_documented_alike() -> None:
    """README and `kodo-bus --help` give the same table, 130 included."""
    from kodo_bus.cli.app import HELP

    readme = " ".join((REPO / "README.md").read_text().split())
    for code, words in (("0", "finished"), ("1", "error"), ("2", "bad input"), ("3", "cancelled")):
        assert f"**{code}** {words}" in readme, code
    assert "**130** interrupted" in readme
    assert "130 interrupted" in " ".join(HELP.split())


def test_an_invalid_answer_says_answer() -> None:
    from kodo_bus.cli import hint_for

    error = InputsInvalid(
        [FieldProblem("approved", "Input should be a valid boolean")], what="answer"
    )
    assert str(error).startswith("invalid answer: approved:"), error
    hint = hint_for(error, ["answer", "5e1f0000"])
    assert hint is not None and "'kodo-bus answer ID'" in hint


def test_missing_server_config_is_a_usage_error(procs: Processes, tmp_path: Path) -> None:
    """`server --config missing.conf` exits 2, as `run --config missing.yaml` does."""
    for args in (
        ("server", "--config", str(tmp_path / "missing.conf")),
        ("run", "--config", str(tmp_path / "missing.yaml")),
    ):
        proc = procs.start(*args, env={"COLUMNS": "200"})
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 2, (args, out)
        assert "Traceback" not in out and "--debug" not in out, (args, out)


# -- a cluster electing its leader -----------------------------------------------------------------
STARTED_BEFORE_QUORUM = 7.0
"""Seconds the registry runs on a cluster with one server of three up (no JetStream leader)."""


@pytest.mark.slow
def test_run_started_before_the_cluster_has_a_leader_waits_for_it(
    procs: Processes, tmp_path: Path
) -> None:
    """One of three servers up (no JetStream quorum), a registry with 3 replicas started, then
    the two others: the registry waits for the leader and gets ready. It crashed with a bare
    `nats.errors.TimeoutError` from `js.key_value`."""
    servers = cluster_servers(tmp_path)
    try:
        servers[0].start()
        url = ",".join(f"nats://127.0.0.1:{server.settings.port}" for server in servers)
        proc = procs.start(
            "run", "--role", "registry", "--id", "reg", "--nats", url,
            env={"KODO_REPLICAS": "3"},
        )  # fmt: skip
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        # The scenario, not a wait for a condition: the others start once the registry's first
        # JetStream request (5 s) has gone unanswered — where it crashed.
        time.sleep(STARTED_BEFORE_QUORUM)
        for server in servers[1:]:
            server.start()
        deadline = time.monotonic() + 60
        while not any("registry reg ready" in line for line in lines):
            text = "".join(lines)
            assert proc.poll() is None and "Traceback" not in text, text
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
    finally:
        procs.stop_all()
        for server in servers:
            server.stop()
