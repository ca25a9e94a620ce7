"""Ctrl-C at a `kodo-bus launch` input prompt, on a real terminal (a pty): it ends at once.

The prompt reads stdin in a thread; it used to be asyncio's executor thread, which `asyncio.run`
joins before returning — a thread blocked on a terminal never ends, so Ctrl-C did nothing and a
second one printed "detached" though nothing had been launched.
"""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

from kodo_bus.client import Client
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO, Processes
from .test_reliability_support import eventually, service

PROMPT = b"Who to greet"
"""The label of the `hello` flow's one input."""


def read_until(master: int, proc: subprocess.Popen[bytes], marker: bytes, within: float) -> bytes:
    """What the terminal shows until `marker` appears (or the program exits)."""
    seen = b""
    deadline = time.monotonic() + within
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} not shown within {within} s: {seen!r}"
        if select.select([master], [], [], min(left, 0.2))[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the program closed the terminal
                chunk = b""
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    return seen


def ctrl_c_at_the_prompt(procs: Processes, url: str, node: str) -> tuple[int, float, bytes]:
    """`kodo-bus launch hello` on a pty, Ctrl-C at its prompt: exit code, seconds, output."""
    master, slave = pty.openpty()
    try:
        launch = subprocess.Popen(
            [*KODO_BUS, "launch", "hello", "--via", node, "--nats", url],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        procs.procs.append(launch)  # type: ignore[arg-type]  # stopped by PID at the end
        os.close(slave)
        slave = -1
        read_until(master, launch, PROMPT, 60)
        sent = time.monotonic()
        launch.send_signal(signal.SIGINT)  # the terminal's Ctrl-C
        rest = read_until(master, launch, b"nothing was launched", 5)
        code = launch.wait(5)
        return code, time.monotonic() - sent, rest
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


async def test_ctrl_c_at_an_input_prompt_exits_at_once(
    procs: Processes, fresh_server: NatsServer, tmp_path: Path
) -> None:
    node = "prompt-node"
    hello = [{"module": "examples.hello"}]
    service(procs, tmp_path, [fresh_server.url], None, id=node, flows=hello)
    async with Client(fresh_server.url) as kb:
        await eventually(lambda: kb.flow("hello", via=node), lambda _: True, 60)
    code, took, rest = await asyncio.to_thread(ctrl_c_at_the_prompt, procs, fresh_server.url, node)
    assert code == 130, rest
    assert took < 2, f"{took:.1f} s"
    assert b"cancelled: nothing was launched" in rest
    assert b"detached" not in rest
    assert b"Traceback" not in rest
