"""`kodo-bus try` without Ray (issue 19): the flow runs on an in-process worker (`LocalPool`),
Ray only when the flow uses it; inputs prompted on a terminal as `launch` prompts them.

The pseudo-terminal tests give the command a real controlling terminal (its own session, the
pty's slave as its controlling tty), so a typed Ctrl-C (0x03) reaches it as a terminal's does:
the line discipline sends SIGINT to its foreground process group. Every process seen below it
is recorded by PID while it runs, and must be gone once it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from kodo_bus import trial
from kodo_bus.errors import ExecutionCancelled
from kodo_bus.local_pool import LocalPool
from kodo_bus.runner import Runner

from . import test_try_support as support
from .conftest import KODO_BUS, REPO, Processes
from .test_try import _alive, _env, assert_nothing_left, start, trials_dirs

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SUPPORT = "tests/test_try_support.py"


# -- the rule: Ray only for a flow that uses it -------------------------------------------------
def _module(source: str) -> types.ModuleType:
    module = types.ModuleType("try_rule_probe")
    exec(compile(source, "<probe>", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import ray\n", True),
        ("import ray.util\n", True),
        ("from ray import remote\n", True),
        ("from ray.util import queue as q\n", True),
        ("import ray\n@ray.remote\ndef f() -> int:\n    return 1\ndel ray\n", True),
        ("import json, os\nrayleigh = 3\nray_count = 'ray'\n", False),
        ("import types\nray = types.ModuleType('rayon')\n", False),
        ("", False),
    ],
)
def test_a_flow_uses_ray_when_its_module_refers_to_ray(source: str, expected: bool) -> None:
    assert trial.uses_ray(_module(source)) is expected


def test_the_examples_and_the_support_flows_run_without_ray() -> None:
    for target in ("examples/hello.py:hello", f"{SUPPORT}:show", f"{SUPPORT}:spin"):
        found = trial.resolve(target)
        assert not found.uses_ray, target
        assert not trial.Trial(found).on_ray
        assert trial.Trial(found, ray=True).on_ray
        assert trial.Trial(found, ray_address="127.0.0.1:1").on_ray


# -- the in-process worker: events, prints, cancel via the worker's stop -------------------------
def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


async def _until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what}")
        await asyncio.sleep(0.05)


async def test_a_sync_flow_runs_in_process_and_its_cancel_stops_its_thread() -> None:
    found = trial.resolve(f"{SUPPORT}:spin")
    before = _children()
    streams = (sys.stdout, sys.stderr)
    started = support.SPUN[0]
    async with trial.Trial(found) as running:
        execution = await running.flow.launch({})
        kinds: list[str] = []
        events = execution.events()
        async for event in events:
            kinds.append(event.kind)
            if event.kind == "markdown":
                break
        await events.aclose()
        new = [psutil.Process(pid) for pid in _children() - before]
        assert [p.name() for p in new] == ["nats-server"], "only the trial's server, no Ray"
        assert isinstance(running.runner, Runner)
        assert isinstance(running.runner._pool, LocalPool)
        await _until(lambda: support.SPUN[0] > started + 3, 10, "the flow's thread spins")
        await execution.cancel()
        with pytest.raises(ExecutionCancelled):
            await execution.result(timeout=10)
        stopped = support.SPUN[0]
        await asyncio.sleep(0.3)  # the loop turns every 50 ms: a live thread would count on
        assert support.SPUN[0] <= stopped + 1, "the flow's thread went on after its cancel"
        stdout = [e.data async for e in execution.events(kinds=("stdout",))]
    assert kinds[:3] == ["meta", "inputs", "status"]
    assert "".join(map(str, stdout)).startswith("spinning"), stdout
    assert (sys.stdout, sys.stderr) == streams, "the worker's capture outlived the trial"
    assert _children() == before


# -- prompts on a terminal ------------------------------------------------------------------------
def _controlling_tty() -> None:
    """In the child, after its `setsid`: the pty on fd 0 becomes its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@dataclass
class Tty:
    """A `kodo-bus` on a pseudo-terminal: what it wrote, and every process seen below it."""

    proc: subprocess.Popen[bytes]
    master: int
    screen: bytes = b""
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def look(self) -> None:
        try:
            below = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for child in below:
            self.seen.setdefault(child.pid, child)

    def read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            with contextlib.suppress(OSError):  # the slave side is closed: the command ended
                self.screen += os.read(self.master, 65536)

    def text(self) -> str:
        return ANSI.sub("", self.screen.decode(errors="replace"))

    def wait_for(self, text: str, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while text not in self.text():
            self.look()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not shown; screen:\n{self.text()}")
            self.read(0.1)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def dialog(self, replies: list[tuple[str, str]]) -> None:
        """Type each reply once its prompt text shows (a later prompt must show anew)."""
        for prompt, reply in replies:
            self.wait_for(prompt)
            self.screen = self.screen.replace(prompt.encode(), b"")
            self.type(reply + "\n")

    def exit_code(self, within: float = 60) -> int:
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            self.look()
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {within:g} s:\n{self.text()}")
            self.read(0.1)
        self.read(0)
        return self.proc.returncode

    def left(self, within: float = 15) -> list[psutil.Process]:
        deadline = time.monotonic() + within
        while (alive := [p for p in self.seen.values() if _alive(p)]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        return alive


@pytest.fixture
def tty(procs: Processes) -> Iterator[Callable[..., Tty]]:
    opened: list[int] = []

    def run(*args: str) -> Tty:
        master, slave = os.openpty()
        opened.append(master)
        env = _env(TERM="xterm")
        try:
            proc = subprocess.Popen(
                [*KODO_BUS, *args],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=REPO,
                start_new_session=True,
                preexec_fn=_controlling_tty,  # noqa: PLW1509 (setsid first, then this ioctl)
            )
        finally:
            os.close(slave)
        procs.procs.append(proc)  # type: ignore[arg-type]  # stopped by PID at the test's end
        return Tty(proc, master)

    yield run
    for master in opened:
        os.close(master)


def test_missing_inputs_are_prompted_as_launch_prompts_them(tty: Callable[..., Tty]) -> None:
    # the dialog of tests/test_cli_exec.py::test_prompts_on_a_terminal for `launch show`
    session = tty("try", f"{SUPPORT}:show", "-i", "count=7")
    session.dialog(
        [
            ("Name", ""),
            ("value is required", "Ada"),
            ("[red/blue]", "blue"),
            ("less than or equal", "3"),
        ]
    )
    assert session.exit_code() == 0, session.text()
    screen = session.text()
    assert "'colour': 'blue'" in screen and "'count': 3" in screen, screen
    assert "Hello Ada" in screen and "printed for Ada" in screen, screen
    assert "status finished" in screen
    assert not session.left()


def test_a_question_of_the_running_flow_is_prompted(tty: Callable[..., Tty]) -> None:
    session = tty("try", f"{SUPPORT}:ask")
    session.dialog([("Colour", "green"), ("Count", "0"), ("greater than or equal", "4")])
    assert session.exit_code() == 0, session.text()
    screen = session.text()
    assert "'colour': 'green'" in screen and "'count': 4" in screen, screen
    assert not session.left()


def test_ctrl_c_at_an_input_prompt_exits_130_having_started_nothing(
    tty: Callable[..., Tty],
) -> None:
    before = trials_dirs()
    session = tty("try", f"{SUPPORT}:show")
    session.wait_for("Name")
    session.type("\x03")  # Ctrl-C, as typed: the terminal sends SIGINT to the command
    assert session.exit_code(within=20) == 130, session.text()
    assert "cancelled: nothing was launched" in session.text()
    assert "Traceback" not in session.text()
    assert not session.seen, f"started at a prompt: {[p.name() for p in session.seen.values()]}"
    assert trials_dirs() <= before


def test_ctrl_c_at_a_question_of_the_flow_stops_everything(tty: Callable[..., Tty]) -> None:
    before = trials_dirs()
    session = tty("try", f"{SUPPORT}:ask")
    session.wait_for("Colour")
    session.look()
    names = {p.name() for p in session.seen.values() if _alive(p)}
    assert names == {"nats-server"}, names  # and no Ray: the flow runs in the process
    session.type("\x03")
    assert session.exit_code(within=30) == 130, session.text()
    assert "interrupted" in session.text() and "Traceback" not in session.text()
    assert not session.left(), [(p.pid, p.name()) for p in session.left(0)]
    assert trials_dirs() <= before


# -- a sync flow deaf to its stop ---------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_ends_the_trial_even_if_a_sync_flow_is_blocked_in_c(
    procs: Processes, tmp_path: Path
) -> None:
    before = trials_dirs()
    run = start(procs, tmp_path, "try", f"{SUPPORT}:blocked")
    run.wait_for("blocked")
    asked = time.monotonic()
    os.killpg(run.proc.pid, signal.SIGINT)
    assert run.wait(within=40) == 130, run.text()
    took = time.monotonic() - asked
    assert took < 20, f"exit took {took:.1f} s"  # grace 2 s + the stuck thread's 5 s
    assert "interrupted" in run.err.read_text() and "Traceback" not in run.err.read_text()
    assert_nothing_left(run, before)
