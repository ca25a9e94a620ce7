"""Issue 17, "Done when": every client command of the README, against a stopped bus (nothing
listens at the URL), a fresh one (a nats-server, no service) and a running one (a registry),
answers with an exit code of the documented table and never a traceback; a failure is one
`error:` line (and its hint).

The commands run at once per state (each is a process of its own), so the whole matrix costs
about one command's time per state.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kodo_bus.config import ServerSettings
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes, free_ports

ID = "5e1f" + "0" * 28
COMMANDS: list[tuple[str, ...]] = [
    ("info", "nobody"),
    ("nodes",),
    ("flows",),
    ("flows", "--query", "hello"),
    ("disconnect", "nobody"),
    ("forget", "nobody"),
    ("launch", "nosuch", "-i", "name=Ada"),
    ("events", ID),
    ("events", ID[:6], "--follow"),
    ("events", "--all"),
    ("executions",),
    ("cancel", ID),
    ("answer", ID, "{}"),
    ("logs",),
    ("files", ID),
    ("inspect", "view"),
    ("inspect", "record", ID),
    ("dashboard",),
]
EXIT_CODES = {0, 1, 2, 3}
"""The documented table (README, `kodo-bus --help`); 130 is Ctrl-C only."""
WITHIN = 60.0


@pytest.fixture
def bus_states(procs: Processes, tmp_path: Path) -> Iterator[dict[str, str]]:
    """URL of each state: stopped (a free port nobody listens on), fresh, running."""
    (stopped,) = free_ports(1)
    fresh = NatsServer(ServerSettings(port=0, http_port=None, store=tmp_path / "fresh")).start()
    running = NatsServer(ServerSettings(port=0, http_port=None, store=tmp_path / "run")).start()
    try:
        registry = procs.start(
            "run", "--role", "registry", "--id", "reg", "--nats", running.url, cwd=str(REPO)
        )
        _wait_ready(registry)
        yield {"stopped": f"nats://127.0.0.1:{stopped}", "fresh": fresh.url, "running": running.url}
    finally:
        fresh.stop()
        running.stop()


def _wait_ready(proc: object, timeout: float = 60.0) -> None:
    """Until the registry says it is ready (its log line), failing with what it printed."""
    stdout = proc.stdout  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(r"registry reg ready", line):
            return
    raise AssertionError("the registry did not start:\n" + "".join(seen))


@pytest.mark.parametrize("state", ["stopped", "fresh", "running"])
def test_every_command_answers_in_one_line_in_every_state(
    procs: Processes, bus_states: dict[str, str], state: str
) -> None:
    url = bus_states[state]
    started = {
        args: procs.start(*args, "--nats", url, env={"COLUMNS": "200"}, cwd=str(REPO))
        for args in COMMANDS
    }
    problems = []
    for args, proc in started.items():
        try:
            out, _ = proc.communicate(timeout=WITHIN)
        except TimeoutError:
            problems.append(f"{' '.join(args)}: still running after {WITHIN:g} s")
            continue
        lines = [line for line in out.splitlines() if line.strip()]
        said = f"{' '.join(args)} → {proc.returncode}:\n    " + "\n    ".join(lines[-6:])
        if "Traceback" in out or proc.returncode not in EXIT_CODES:
            problems.append(said)
        elif proc.returncode != 0:
            errors = [line for line in lines if line.startswith("error: ")]
            if len(errors) != 1 or len(lines) > 3:
                problems.append(said)
    assert not problems, f"{state} bus:\n" + "\n".join(problems)
