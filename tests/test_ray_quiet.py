"""Ray's notices stay out of a node's terminal (issue 17, finding 10): at its first launch a node
printed Ray's "Token authentication is enabled for this Ray cluster…" and "SIGTERM handler is
not set because current thread is not the main thread." — the first a notice about the token
the node's own Ray uses as it should, the second about a handler the node does not want (it
stops itself on SIGTERM, with a grace period).

A real `kodo-bus run` node with a registry on a real nats-server; the node starts its own Ray at
its first launch, with a Ray auth token of the test's own and RAY_AUTH_MODE unset (what makes
Ray print the first notice); its whole terminal output is read.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kodo_bus import Client
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes, run_python
from .test_reliability_support import online_flow

NOISE = (
    "Token authentication is enabled",
    "SIGTERM handler is not set",
)


class Output:
    """Every line a process writes, read as it comes (a full pipe would stall the process)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stdout:
            self.lines.append(line)

    def all(self, timeout: float = 15.0) -> str:
        """The whole output, once the process has closed its end (it has stopped)."""
        self._thread.join(timeout)
        return "".join(self.lines)


def start(procs: Processes, tmp: Path, env: dict[str, str], **body: Any) -> subprocess.Popen[str]:
    config = tmp / f"{body['id']}.yaml"
    config.write_text(yaml.safe_dump(body))
    return procs.start("run", "--config", str(config), env=env, cwd=str(REPO))


@pytest.mark.slow
async def test_no_ray_notice_in_a_nodes_terminal_at_its_first_launch(
    nats_server: NatsServer, procs: Processes, tmp_path: Path
) -> None:
    token = tmp_path / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "KODO_"))}
    env.update(RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    suffix = f"{time.monotonic_ns() % 10**10}"
    registry, node = f"quiet-reg-{suffix}", f"quiet-node-{suffix}"
    common = {"nats": [nats_server.url], "heartbeat": 0.5}
    start(procs, tmp_path, env, id=registry, role="registry", **common)
    node_proc = start(
        procs, tmp_path, env, id=node, role="node", flows=[{"module": "examples.hello"}], **common
    )
    output = Output(node_proc)

    async with Client(nats_server.url) as kb:
        flow = await online_flow(kb, f"{node}/hello")
        execution = await flow.launch({"name": "Ray"})  # the first: the node starts its Ray
        assert await execution.result(timeout=120) == "Hello, **Ray**!"
    procs.stop(node_proc, timeout=60)
    text = output.all()

    assert "ready" in text, text  # the node's own lines are there: the terminal was read
    for notice in NOISE:
        assert notice not in text, f"Ray's notice {notice!r} in the node's terminal:\n{text}"


SCRIPT = """
import logging, sys
from pathlib import Path
from kodo_bus import logs

logs.setup("INFO", Path(sys.argv[1]))
import ray  # after setup, as in a node: Ray's import sets up its own "ray" logger

def say(name, level, func, msg):
    logger = logging.getLogger(name)
    logger.handle(logger.makeRecord(name, level, "x.py", 1, msg, (), None, func=func))

say("ray._private.worker", logging.WARNING, "init", "SIGTERM handler is not set because ...")
say("ray._private.authentication.authentication_token_setup", logging.WARNING,
    "_warn_token_auth_enabled", "Token authentication is enabled for this Ray cluster.")
say("ray._private.worker", logging.INFO, "init", "Started a local Ray instance.")
say("ray._private.worker", logging.WARNING, "init", "a Ray warning worth reading")
say("ray.util.state", logging.ERROR, "f", "a Ray error")
say("kodo_bus.node", logging.INFO, "f", "our own line")
"""


def test_the_screen_shows_rays_warnings_but_its_notices_and_info_go_to_the_file(
    tmp_path: Path,
) -> None:
    """The filter in kodo_bus/logs.py alone: which Ray records reach the screen, which the file."""
    log = tmp_path / "node.log"
    done = run_python("-c", SCRIPT, str(log))
    screen, file = done.stderr, log.read_text()
    for shown in ("a Ray warning worth reading", "a Ray error", "our own line"):
        assert shown in screen and shown in file
    for hidden in ("SIGTERM handler", "Token authentication", "Started a local Ray"):
        assert hidden not in screen
    assert "Started a local Ray instance." in file  # Ray's INFO: in the file, for a bad day
    assert screen.count("a Ray error") == 1  # through our handler only, never Ray's as well
