"""The Node.js reference client (examples/js) against a real bus (issue 16): a nats-server of
its own, a registry and a node serving the flows `kodo-bus up` serves (`kodo-bus run`
processes, the session's Ray), and `node examples/js/demo.mjs` — discovery, validation, a
launch with its own id, events with bursts, an answer, a cancel, a replay, and the error reply
of each wrong request — written from subjects.md and schemas/ alone.

Skipped, saying why, when `node` (>= 18) or `npm` is not on the machine. `.ci/run` installs
the npm dependencies; a checkout without them gets `npm ci` here first.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kodo_bus.bus import connect
from kodo_bus.config import ConnectSettings
from kodo_bus.discovery import live_services
from kodo_bus.server import NatsServer

from .conftest import Processes
from .test_reliability_support import service

REPO = Path(__file__).resolve().parent.parent
CLIENT = REPO / "examples" / "js"
FLOWS = [
    {"module": "examples.hello"},
    {"module": "examples.hitl"},
    {"module": "examples.throughput"},
]

pytestmark = pytest.mark.ray


def _node_binary() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"the Node.js client needs node and npm on PATH (node: {node}, npm: {npm})")
    version = subprocess.run(
        [node, "--version"], check=True, capture_output=True, text=True, timeout=30
    )
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    if major < 18:
        pytest.skip(f"the Node.js client needs node >= 18, this machine has {version.stdout}")
    if not (CLIENT / "node_modules" / "nats").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT, check=True, timeout=300)
    return node


async def both_answer(url: str, ids: set[str], within: float = 60.0) -> None:
    nc = await connect(ConnectSettings(nats=[url], retry=0))
    try:
        deadline = time.monotonic() + within
        while not ids <= {s["id"] for s in await live_services(nc)}:
            assert time.monotonic() < deadline, f"{ids} did not all answer $SRV.PING"
    finally:
        await nc.close()


def test_the_js_client_walks_through_the_contract(
    fresh_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path
) -> None:
    node = _node_binary()
    urls = [fresh_server.url]
    service(procs, tmp_path, urls, id="js-registry", role="registry")
    service(procs, tmp_path, urls, ray_address, id="js-node", role="node", flows=FLOWS)
    # The demo discovers the services of that very moment: both must be up first.
    asyncio.run(both_answer(fresh_server.url, {"js-registry", "js-node"}))
    env = {"PATH": os.environ.get("PATH", ""), "KODO_NATS": fresh_server.url}
    demo = procs.spawn([node, "demo.mjs"], cwd=str(CLIENT), env=env)
    out, _ = demo.communicate(timeout=240)  # stderr goes to stdout
    assert demo.returncode == 0, out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"step"')]
    steps = {line["step"]: line for line in lines}
    assert list(steps) == [
        "discover",
        "validate",
        "launch",
        "bursts",
        "answer",
        "cancel",
        "replay",
        "done",
    ]
    assert {s["role"] for s in steps["discover"]["services"]} == {"registry", "node"}
    assert steps["launch"]["existing"] is True
    assert steps["answer"]["second"] == "closed"
    assert steps["cancel"]["status"] == "cancelled"
    assert steps["cancel"]["unknown"] == ["not_found", "not_found"]
    assert steps["replay"]["events"] == steps["launch"]["events"]
    print(steps["bursts"])  # how many messages were bursts in this run
