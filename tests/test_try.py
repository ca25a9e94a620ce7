"""`kodo-bus try TARGET` (issue 19) as a user runs it: the real binary in a subprocess, with its
own nats-server, the flow in its process (or on its own local Ray, for a flow that uses Ray or
with `--ray`), judged by its output, its exit code and the processes it leaves (every process
seen below it while it ran must be gone once it exits).

The reference for "the same events" is a `kodo-bus launch` of the same flow on a real bus: a
nats-server and a hybrid node serving `examples.hello` on the session's Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from kodo_bus import Client
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO, Processes
from .test_reliability_support import online_flow

COLUMNS = "100"
HAS_CREWAI = importlib.util.find_spec("crewai") is not None
NEEDED = "crewai targets need `pip install kodo-bus[crewai]`"
FAILING = """\
from kodo_bus import Tracer, flow


def divide(x: int) -> float:
    return 1 / x  # line 5


@flow(summary="fails in a helper")
async def boom(inputs: dict, tracer: Tracer) -> float:
    await tracer.markdown("about to fail")
    return divide(0)


@flow(summary="waits until stopped")
async def wait(inputs: dict, tracer: Tracer) -> None:
    await tracer.markdown("waiting")
    await asyncio.Event().wait()


import asyncio
"""
USES_RAY = f"""\
import ray

{FAILING}

@ray.remote
def square(x: int) -> int:
    return x * x


@flow(summary="squares on Ray")
async def squares(inputs: dict, tracer: Tracer) -> int:
    return await square.remote(3)
"""


@dataclass
class Run:
    """One `kodo-bus` process: its streams (files, read at the end) and what ran below it."""

    proc: subprocess.Popen[str]
    out: Path
    err: Path
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    """Of the processes seen, by PID (a process gone has no name to ask)."""

    def look(self) -> None:
        """Note every process below it now (Ray's, the nats-server)."""
        try:
            below = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for child in below:
            if child.pid not in self.seen:
                with contextlib.suppress(psutil.Error):  # gone already: no name to note
                    self.names[child.pid] = child.name()
                self.seen[child.pid] = child

    def wait(self, within: float = 150.0) -> int:
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            self.look()
            if time.monotonic() > deadline:
                raise AssertionError(f"kodo-bus did not end in {within:g} s:\n{self.text()}")
            time.sleep(0.1)  # a poll with a deadline: the processes below are noted meanwhile
        return self.proc.returncode

    def wait_for(self, text: str, within: float = 120.0) -> None:
        deadline = time.monotonic() + within
        while text not in self.out.read_text():
            self.look()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not printed:\n{self.text()}")
            time.sleep(0.1)

    def text(self) -> str:
        return f"stdout:\n{self.out.read_text()}\nstderr:\n{self.err.read_text()}"

    def left(self, within: float = 15.0) -> list[psutil.Process]:
        """Processes seen below it that are still alive (after `within` seconds)."""
        deadline = time.monotonic() + within
        while True:
            alive = [p for p in self.seen.values() if _alive(p)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _env(**extra: str) -> dict[str, str]:
    """The user's environment without any bus or Ray of the test session's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KODO_", "RAY_ADDRESS"))}
    return {**env, "COLUMNS": COLUMNS, "PYTHONUNBUFFERED": "1", **extra}


def start(procs: Processes, tmp: Path, *args: str, cwd: Path = REPO, **env: str) -> Run:
    """`kodo-bus ARGS` in its own session (so a Ctrl-C can reach its whole group)."""
    n = len(procs.procs)
    out, err = tmp / f"out-{n}.txt", tmp / f"err-{n}.txt"
    with out.open("w") as out_file, err.open("w") as err_file:
        proc = subprocess.Popen(
            [*KODO_BUS, *args],
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
            cwd=cwd,
            env=_env(**env),
            text=True,
            start_new_session=True,
        )
    procs.procs.append(proc)
    return Run(proc, out, err)


def trials_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("kodo-try-*"))


def events_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def comparable(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Kinds and data; not ids, times or the node's name (a served node has its own id)."""
    shown = []
    for event in events:
        data = event.get("data")
        if event["kind"] == "meta" and isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "node"}
        shown.append((event["kind"], data))
    return shown


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_nothing_left(run: Run, before: set[Path]) -> None:
    assert not run.left(), f"left running: {[(p.pid, p.name()) for p in run.left(0)]}"
    assert trials_dirs() <= before, "a temporary directory of the trial is left"


# -- the same events as a launch ----------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_try_prints_the_events_a_launch_prints(
    nats_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path
) -> None:
    node = f"hello-{time.monotonic_ns() % 10**8}"
    config = tmp_path / "node.yaml"
    config.write_text(f"id: {node}\nrole: hybrid\nflows:\n  - module: examples.hello\n")
    served = start(
        procs,
        tmp_path,
        *("run", "--config", str(config), "--nats", nats_server.url, "--heartbeat", "0.5"),
        KODO_RAY_ADDRESS=ray_address,
        PYTHONPATH=str(REPO),
    )

    async def online() -> None:
        async with Client(nats_server.url) as kb:
            await online_flow(kb, f"{node}/hello")

    asyncio.run(online())
    launches = {}
    for form in ((), ("--json",)):
        args = ("launch", f"{node}/hello", "-i", "name=Ada", "--nats", nats_server.url, *form)
        launch = start(procs, tmp_path, *args)
        assert launch.wait() == 0, launch.text()
        launches[form] = launch.out.read_text()
    assert served.proc.poll() is None, served.text()

    before = trials_dirs()
    runs: dict[tuple[str, ...], Run] = {}
    on_ray = ("--json", "--ray")
    forms: list[tuple[str, ...]] = [(), ("--json",), on_ray]
    for how in forms:  # one after the other: each must leave nothing behind
        run = runs[how] = start(
            procs, tmp_path, "try", "examples/hello.py:hello", "-i", "name=Ada", *how
        )
        assert run.wait() == 0, run.text()
        assert_nothing_left(run, before)
    ran = {how: set(run.names.values()) for how, run in runs.items()}
    assert "raylet" in ran[on_ray], ran  # --ray: on a Ray of its own
    assert not {"raylet", "gcs_server"} & (ran[()] | ran[("--json",)]), ran  # else in-process

    tried = events_of(runs[("--json",)].out.read_text())  # every stdout line is one JSON event
    launched = events_of(launches[("--json",)])
    assert comparable(tried) == comparable(launched)
    assert comparable(events_of(runs[on_ray].out.read_text())) == comparable(launched)
    assert [e["kind"] for e in tried][:3] == ["meta", "inputs", "status"]
    assert tried[0]["node"] == "try" and tried[0]["data"]["entry"] == "examples.hello:hello"
    assert tried[-2]["data"] == "Hello, **Ada**!"

    launch_lines = launches[()].splitlines()[1:]  # after the execution id launch prints first
    try_lines = runs[()].out.read_text().splitlines()
    assert try_lines == [line.replace(f"{node}/hello", "try/hello") for line in launch_lines]
    assert "Hello, Ada!" in "\n".join(try_lines) and try_lines[-1] == "status finished"


# -- failures point at the flow's line ----------------------------------------------------------
@pytest.mark.slow
def test_a_failing_flow_exits_1_naming_its_file_and_line(procs: Processes, tmp_path: Path) -> None:
    (tmp_path / "try_failing_flows.py").write_text(FAILING)
    config = tmp_path / "node.yaml"
    config.write_text("id: my-node\nflows:\n  - module: try_failing_flows\n")
    before = trials_dirs()
    run = start(procs, tmp_path, "try", "--config", str(config), "boom", cwd=tmp_path)
    assert run.wait() == 1, run.text()

    lines = error_lines(run.err.read_text())
    assert lines[-1] == (
        "error: ZeroDivisionError: division by zero (try_failing_flows.py:5, in divide)"
    ), run.text()
    assert "Traceback" not in run.err.read_text()  # the traceback is the error event's (stdout)
    out = run.out.read_text()
    assert out.startswith("my-node/boom") and "about to fail" in out
    assert out.splitlines()[-1] == "status error"
    assert_nothing_left(run, before)


# -- bad targets --------------------------------------------------------------------------------
BAD_TARGETS = [
    (["examples/nope.py:hello"], "no file examples/nope.py"),
    (["no_such_module_here:hello"], "no module 'no_such_module_here'"),
    (["examples/hello.py:nope"], "has no 'nope' (its flows: hello)"),
    (["examples.hello:nope"], "has no 'nope' (its flows: hello)"),
    (["examples/hello.py:HelloInputs"], "is not a flow (it is a class)"),
    (["hello"], "give module:function, path/to/file.py:function"),
    (["--config", "examples/up-node.yaml", "nope"], "has no flow 'nope' (its flows: "),
]


def test_a_bad_target_exits_2_with_one_line_and_starts_nothing(
    procs: Processes, tmp_path: Path
) -> None:
    broken = tmp_path / "broken_at_import.py"
    broken.write_text("import os\n\nraise RuntimeError('not today')\n")
    crewai = tmp_path / "crewai"  # a stand-in: a crew is any object of crewai's classes
    crewai.mkdir()
    (crewai / "__init__.py").write_text("class Crew:\n    pass\n")
    (tmp_path / "my_crew.py").write_text("from crewai import Crew\n\ncrew = Crew()\n")
    (tmp_path / "crew.yaml").write_text("agents: {}\n")
    cases = [
        *BAD_TARGETS,
        ([f"{broken}:x"], "RuntimeError: not today ("),
        ([f"{tmp_path / 'my_crew.py'}:crew"], NEEDED),  # its stand-in crewai is no crewai
        # with the extra, a crew file without tasks is refused as such (tests/test_crew.py)
        ([str(tmp_path / "crew.yaml")], "tasks: Field required" if HAS_CREWAI else NEEDED),
    ]
    for args, expected in cases:
        run = start(procs, tmp_path, "try", *args)
        assert run.wait() == 2, run.text()
        lines = error_lines(run.err.read_text())
        assert len(lines) == 1 and lines[0].startswith("error: "), run.text()
        assert expected in lines[0], run.text()
        assert run.out.read_text() == ""
        assert not run.seen, f"{args}: processes started for a bad target"
    run = start(procs, tmp_path, "try", "broken_at_import:x", cwd=tmp_path)
    assert run.wait() == 2, run.text()
    assert error_lines(run.err.read_text()) == [
        "error: importing 'broken_at_import' failed: RuntimeError: not today "
        "(broken_at_import.py:3)"
    ], run.text()


def test_bad_inputs_exit_2_before_any_server_starts(procs: Processes, tmp_path: Path) -> None:
    long_name = "x" * 101  # HelloInputs.name has max_length=100
    run = start(procs, tmp_path, "try", "examples/hello.py:hello", "-i", f"name={long_name}")
    assert run.wait() == 2, run.text()
    assert "name" in run.err.read_text() and "100" in run.err.read_text(), run.text()
    assert not run.seen


# -- a flow that uses Ray runs on Ray -------------------------------------------------------------
@pytest.mark.slow
def test_a_flow_that_uses_ray_runs_on_a_ray_of_its_own(procs: Processes, tmp_path: Path) -> None:
    (tmp_path / "try_ray_flows.py").write_text(USES_RAY)
    before = trials_dirs()
    run = start(procs, tmp_path, "try", "try_ray_flows.py:squares", "--json", cwd=tmp_path)
    assert run.wait() == 0, run.text()
    events = events_of(run.out.read_text())
    assert [e["data"] for e in events if e["kind"] == "final"] == [9], run.text()
    assert "raylet" in run.names.values()
    assert_nothing_left(run, before)


# -- Ctrl-C ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "ran"),
    [(FAILING, {"nats-server"}), (USES_RAY, {"nats-server", "raylet"})],
    ids=["in-process", "on-ray"],
)
def test_ctrl_c_exits_130_and_leaves_nothing(
    procs: Processes, tmp_path: Path, source: str, ran: set[str]
) -> None:
    (tmp_path / "try_failing_flows.py").write_text(source)
    before = trials_dirs()
    run = start(procs, tmp_path, "try", "try_failing_flows.py:wait", cwd=tmp_path)
    run.wait_for("waiting")  # the flow runs on its worker: in the process, or on Ray
    run.look()
    names = {p.name() for p in run.seen.values() if _alive(p)}
    assert ran <= names and ("raylet" in names) == ("raylet" in ran), names
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    assert run.wait(within=60) == 130, run.text()
    assert "interrupted" in run.err.read_text()
    assert "Traceback" not in run.err.read_text(), run.text()
    assert_nothing_left(run, before)
