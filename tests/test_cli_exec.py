"""`kodo-bus launch | events | executions | cancel | answer | logs` as subprocesses.

One nats-server, registry and node (on the session's Ray) serve this module and the dashboard and
plain-NATS tests (the `bus` fixture); the flows the node runs are defined here, so Ray workers
import them as `tests.test_cli_exec`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from kodo_bus.client import Client
from kodo_bus.flows import flow
from kodo_bus.server import NatsServer
from kodo_bus.tracer import Tracer

from .conftest import KODO_BUS, REPO, Processes, _server

pytestmark = pytest.mark.ray
NODE = "cli-node"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
REGISTRY = "cli-registry"


# -- flows the node serves -----------------------------------------------------------------------
class Show(BaseModel):
    name: str = Field(min_length=1, description="who to greet")
    count: int = Field(default=2, ge=1, le=5)
    colour: Literal["red", "blue"] = "red"


class Pick(BaseModel):
    colour: str
    count: int = Field(ge=1)


@flow(summary="Shows every kind of output")
async def show(inputs: Show, tracer: Tracer) -> dict[str, Any]:
    await tracer.markdown(f"# Hello {inputs.name}")
    for i in range(inputs.count):
        await tracer.progress(i + 1, inputs.count, f"step {i + 1}")
    await tracer.info("greeting done", name=inputs.name)
    await tracer.warning(f"careful with {inputs.colour}")
    print(f"printed for {inputs.name}")
    return {"hello": inputs.name, "count": inputs.count, "colour": inputs.colour}


@flow(summary="Always fails")
async def fail(inputs: dict[str, Any], tracer: Tracer) -> None:
    raise ValueError("kaput")


@flow(summary="Waits until cancelled")
async def wait(inputs: dict[str, Any], tracer: Tracer) -> None:
    await tracer.markdown("waiting")
    await asyncio.Event().wait()


@flow(summary="Asks a human")
async def ask(inputs: dict[str, Any], tracer: Tracer) -> dict[str, Any]:
    answer = await tracer.ask(Pick, "pick a colour", timeout=60)
    return answer.model_dump()


@flow(summary="Returns at once")
async def quick(inputs: dict[str, Any], tracer: Tracer) -> int:
    return 1


# -- services ------------------------------------------------------------------------------------
class Bus:
    def __init__(self, server: NatsServer, procs: Processes) -> None:
        self.server = server
        self.procs = procs
        self.url = server.url

    def cli(
        self, *args: str, stdin: str | None = None, timeout: float = 60
    ) -> tuple[int, str, str]:
        """Run one command; returns (exit code, stdout, stderr)."""
        env = {**os.environ, "KODO_NATS": self.url, "COLUMNS": "120", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(
            [*KODO_BUS, *args],
            input=stdin or "",
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=REPO,
            check=False,
        )
        return proc.returncode, proc.stdout, proc.stderr


def _logs(tmp: Path) -> str:
    return "".join(p.read_text()[-2000:] for p in tmp.glob("*.log"))


def start_services(
    procs: Processes, server: NatsServer, ray: str, *, node: str, registry: str, tmp: Path
) -> None:
    """A registry and a node serving this module's flows, on the shared Ray."""
    config = tmp / f"{node}.yaml"
    config.write_text(f"id: {node}\nrole: node\nflows:\n  - module: tests.test_cli_exec\n")
    env = {**os.environ, "KODO_RAY_ADDRESS": ray, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    common = [*KODO_BUS, "run", "--nats", server.url, "--heartbeat", "0.5"]
    for name, args in (
        (registry, ["--role", "registry", "--id", registry]),
        (node, ["--config", str(config)]),
    ):
        with (tmp / f"{name}.log").open("w") as log:  # a file, so a chatty service never blocks
            procs.procs.append(
                subprocess.Popen(
                    [*common, *args],
                    env=env,
                    cwd=REPO,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
            )

    async def ready() -> None:
        deadline = time.monotonic() + 60
        async with Client(server.url) as kb:
            while True:
                for proc in procs.procs:
                    if proc.poll() is not None:
                        raise AssertionError(f"a service exited at start:\n{_logs(tmp)}")
                try:
                    names = {f.name for f in await kb.flows(via=registry)}
                    if {"show", "ask", "wait"} <= names:
                        return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                if time.monotonic() > deadline:
                    raise AssertionError(f"flows did not appear in {registry}")
                await asyncio.sleep(0.2)

    asyncio.run(ready())


@pytest.fixture(scope="session")
def bus(tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> Iterator[Bus]:
    tmp = tmp_path_factory.mktemp("cli-exec")
    server = _server(tmp / "nats").start()
    procs = Processes()
    try:
        start_services(procs, server, ray_address, node=NODE, registry=REGISTRY, tmp=tmp)
        yield Bus(server, procs)
    finally:
        procs.stop_all()
        server.stop()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def statuses(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["status"] for e in events if e["kind"] == "status"]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines[0].startswith("error: "), err
    assert len(lines) <= 2, err  # the error, then maybe a hint naming the next command
    return lines[0]


# -- tests ---------------------------------------------------------------------------------------
def test_launch_follows_to_the_final_value(bus: Bus) -> None:
    code, out, err = bus.cli("launch", "show", "-i", "name=Ada", "-i", "count=3")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines[0]) == 32 and all(c in "0123456789abcdef" for c in lines[0])
    assert "Hello Ada" in out
    assert "WARNING" in out and "careful with red" in out
    assert "printed for Ada" in out
    assert "'hello': 'Ada'" in out and "'count': 3" in out
    assert "finished" in out


def test_launch_json_prints_one_event_per_line(bus: Bus) -> None:
    code, out, err = bus.cli(
        "launch", "show", "-i", "name=Bo", "--json", "--inputs", "-", stdin='{"colour": "blue"}'
    )
    assert code == 0, err
    events = json_lines(out)
    assert [e["kind"] for e in events[:3]] == ["meta", "inputs", "status"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[1]["data"] == {"name": "Bo", "count": 2, "colour": "blue"}
    assert statuses(events)[-1] == "finished"
    assert events[-2]["kind"] == "final"
    assert events[-2]["data"] == {"hello": "Bo", "count": 2, "colour": "blue"}
    assert {"progress", "markdown", "log", "stdout"} <= {e["kind"] for e in events}


def test_launch_exit_codes_and_error_lines(bus: Bus) -> None:
    code, out, err = bus.cli("launch", "fail", "--json")
    assert code == 1, err
    events = json_lines(out)
    assert statuses(events)[-1] == "error"
    assert events[-2]["data"]["message"] == "kaput"

    code, _, err = bus.cli("launch", "show", "-i", "name=Ada", "-i", "count=9")
    assert code == 2
    assert "count" in one_error_line(err) and "less than or equal to 5" in err

    code, _, err = bus.cli("launch", "show")  # stdin is not a terminal: no prompt
    assert code == 2
    assert "name: Field required" in one_error_line(err)

    code, _, err = bus.cli("launch", "shw")
    assert code == 2
    assert "no flow named 'shw'" in one_error_line(err)

    code, _, err = bus.cli("launch", "show", "-i", "oops")
    assert code == 2
    assert "key=value" in one_error_line(err)

    code, _, err = bus.cli("launch", "show", "--nats", "nats://127.0.0.1:1")
    assert code == 1
    assert "cannot reach NATS" in one_error_line(err)
    code, _, err = bus.cli("--debug", "launch", "show", "--nats", "nats://127.0.0.1:1")
    assert code == 1 and "Traceback" in err


def test_no_follow_events_cancel(bus: Bus) -> None:
    code, out, err = bus.cli("launch", "wait", "--no-follow", "--json")
    assert code == 0, err
    reply = json.loads(out)
    assert (reply["node"], reply["flow"], reply["launcher"]) == (NODE, "wait", "local")
    execution = reply["execution"]

    code, out, err = bus.cli("events", execution, "--json")  # what is there now, then returns
    assert code == 0, err
    assert [e["kind"] for e in json_lines(out)][:3] == ["meta", "inputs", "status"]

    code, out, err = bus.cli("cancel", execution)
    assert code == 0, err
    assert f"cancel requested for {execution}" in out

    code, out, err = bus.cli("events", execution, "--follow", "--kind", "status", "--json")
    assert code == 0, err
    assert statuses(json_lines(out))[-1] == "cancelled"
    assert {e["kind"] for e in json_lines(out)} == {"status"}

    code, out, err = bus.cli("events", execution)
    assert code == 0, err
    assert "waiting" in out and "cancelled" in out

    code, _, err = bus.cli("events", "0" * 32)
    assert code == 2  # an unknown id is bad input, like an unknown flow
    assert "no execution" in one_error_line(err)
    code, _, err = bus.cli("events", execution, "--kind", "nonsense")
    assert code == 2


def test_following_a_cancelled_execution_exits_3(bus: Bus) -> None:
    env = {**os.environ, "KODO_NATS": bus.url}
    proc = subprocess.Popen(
        [*KODO_BUS, "launch", "wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        execution = proc.stdout.readline().strip()
        assert len(execution) == 32
        code, _, err = bus.cli("cancel", execution, "--json")
        assert code == 0, err
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 3, err
        assert "cancelled" in out
    finally:
        bus.procs.stop(proc)


def test_executions_lists_newest_first(bus: Bus) -> None:
    bus.cli("launch", "quick")
    code, out, err = bus.cli("executions", "--json", "--flow", "quick", "--limit", "5")
    assert code == 0, err
    page = json.loads(out)
    assert page["total"] >= 1
    assert {i["flow"] for i in page["items"]} == {"quick"}
    created = [i["created"] for i in page["items"]]
    assert created == sorted(created, reverse=True)
    assert page["items"][0]["status"] == "finished"

    code, out, err = bus.cli("executions", "--status", "finished", "--node", NODE)
    assert code == 0, err
    assert "quick" in out and "finished" in out and "executions" in out


def test_answer_a_question(bus: Bus) -> None:
    code, out, err = bus.cli("launch", "ask", "--no-follow")
    assert code == 0, err
    execution = out.strip()

    async def awaiting() -> None:
        async with Client(bus.url) as kb:
            async for event in kb.execution(execution).events(kinds=["status"]):
                if event.data["status"] == "awaiting":
                    return

    asyncio.run(asyncio.wait_for(awaiting(), 30))
    code, _, err = bus.cli("answer", execution, '{"colour": "red", "count": 0}')
    assert code == 2
    assert "count" in one_error_line(err)
    code, _, err = bus.cli("answer", execution)  # no value and no terminal
    assert code == 2
    code, out, err = bus.cli("answer", execution, "-i", "colour=red", "-i", "count=2")
    assert code == 0, err
    code, out, err = bus.cli("events", execution, "--follow", "--json", "--kind", "final")
    assert code == 0, err
    assert json_lines(out)[-1]["data"] == {"colour": "red", "count": 2}
    code, _, err = bus.cli("answer", execution, "{}")
    assert code == 2 and "not awaiting" in err


def test_logs(bus: Bus) -> None:
    code, _, err = bus.cli("launch", "show", "-i", "name=Logan")
    assert code == 0, err
    code, out, err = bus.cli("logs", "--json", "--level", "warning", "--flow", "show")
    assert code == 0, err
    events = json_lines(out)
    assert events and all(e["data"]["level"] == "warning" for e in events)
    code, out, err = bus.cli("logs", "--since", "10m", "--node", NODE)
    assert code == 0, err
    assert "greeting done" in out and "INFO" in out and f"{NODE}/show" in out
    code, _, err = bus.cli("logs", "--since", "yesterday")
    assert code == 2
    assert "--since" in one_error_line(err)


def _pty_session(bus: Bus, args: list[str], replies: list[tuple[str, str]]) -> tuple[int, str]:
    """Run a command on a pseudo-terminal, typing each reply once its prompt text shows."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "KODO_NATS": bus.url, "COLUMNS": "100", "TERM": "xterm"}
    proc = subprocess.Popen(
        [*KODO_BUS, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if replies and replies[0][0].encode() in seen:
                os.write(master, (replies.pop(0)[1] + "\n").encode())
                seen = seen.replace(b"?", b"")  # a later prompt must appear anew
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running; screen: {seen.decode(errors='replace')}"
            ) from None
    finally:
        os.close(master)
        bus.procs.stop(proc)  # type: ignore[arg-type]
    assert not replies, f"prompts not seen: {replies}; screen: {seen.decode(errors='replace')}"
    return code, ANSI.sub("", seen.decode(errors="replace"))


def test_prompts_on_a_terminal(bus: Bus) -> None:
    code, screen = _pty_session(
        bus,
        ["launch", "show", "-i", "count=7"],
        [
            ("Name", ""),
            ("value is required", "Ada"),
            ("[red/blue]", "blue"),
            ("less than or equal", "3"),
        ],
    )
    assert code == 0, screen
    assert "'colour': 'blue'" in screen and "'count': 3" in screen

    code, screen = _pty_session(
        bus,
        ["launch", "ask"],
        [("Colour", "green"), ("Count", "0"), ("greater than or equal", "4")],
    )
    assert code == 0, screen
    assert "'colour': 'green'" in screen and "'count': 4" in screen


def test_help_documents_exit_codes() -> None:
    result = subprocess.run(
        [*KODO_BUS, "launch", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert result.returncode == 0
    assert "Exit codes" in result.stdout and "3 cancelled" in result.stdout
    for command in ("events", "executions", "cancel", "answer", "logs"):
        result = subprocess.run(
            [*KODO_BUS, command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0 and "Usage" in result.stdout
