"""deploy/ray/start.sh: a kodo-bus server, a registry, a Ray head, one Ray worker node and a node
attached with --ray-address come up; the node's flows are seen through the registry and `hello`
runs on the Ray cluster; SIGTERM to the script stops every process of its tree.

The script runs as it is documented (`bash deploy/ray/start.sh`), with RAY_PORT, NATS_PORT and
NATS_HTTP_PORT set to free loopback ports, 1 CPU per Ray node, and DATA a short new dir under /tmp
(Ray's socket paths must stay under 107 bytes). It never touches the session's Ray. Everything
the script started is stopped by PID, also when the test fails; never `ray stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from kodo_bus.client import Client

from .conftest import REPO, free_ports, start_script, unpicked_ports, wait_logged

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

SCRIPT = REPO / "deploy" / "ray" / "start.sh"
UP_WITHIN = 240.0
"""Two Ray nodes, a bus, a registry and a node on a loaded 2-core machine: 40-90 s seen."""
REGISTRY, NODE = "ray-registry", "ray-node"


def tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).children(recursive=True)
    return []


def of_data(data: Path) -> list[psutil.Process]:
    """Processes whose command line names DATA (Ray's temp dir is in it): a Ray process that
    left the script's tree would still be found here, by this run's own unique path."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and any(str(data) in a for a in proc.cmdline()):
                found.append(proc)
    return found


async def run_hello(url: str) -> str:
    """Through the SDK: the registry lists both flows of node.yaml online; `hello` runs."""
    async with Client(url) as kb:
        deadline = time.monotonic() + 60
        while True:
            flows = await kb.flows(via=REGISTRY)
            online = {f.name for f in flows if f.node == NODE and f.status == "online"}
            if {"hello", "calc"} <= online:
                break
            assert time.monotonic() < deadline, f"flows of {NODE} not online: {flows}"
            await asyncio.sleep(0.5)
        flow = await kb.flow(f"{NODE}/hello", via=REGISTRY)
        execution = await flow.launch({"name": "Ray"})
        result = await execution.result(timeout=120)
        assert isinstance(result, str)
        return result


def test_start_script_runs_a_node_on_two_ray_nodes_and_stops_everything() -> None:
    nats_port, nats_http = free_ports(2)
    (ray_port,) = unpicked_ports(1)  # bound by `ray start` seconds later: see unpicked_ports
    data = Path(tempfile.mkdtemp(prefix="kr", dir="/tmp"))
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DATA": str(data),
        "RAY_PORT": str(ray_port),
        "NATS_PORT": str(nats_port),
        "NATS_HTTP_PORT": str(nats_http),
        "HEAD_CPUS": "1",
        "WORKER_CPUS": "1",
    }
    for var in ("RAY_ADDRESS", "NATS_URL", "KODO_NATS", "KODO_RAY_ADDRESS"):
        env.pop(var, None)
    log = data / "start.log"
    script = start_script(SCRIPT, env, log, cwd=data)
    seen: dict[int, psutil.Process] = {}
    try:
        wait_logged(script, log, b"\nup: Ray ", UP_WITHIN)  # after the node's `ready (`
        result = asyncio.run(run_hello(f"nats://127.0.0.1:{nats_port}"))
        assert result == "Hello, **Ray**!"

        # The whole tree now, the node's Ray actors included, and anything naming DATA.
        seen.update((p.pid, p) for p in [*tree(script.pid), *of_data(data)])
        cmdlines = [" ".join(p.cmdline()) for p in seen.values() if p.is_running()]
        assert sum("ray start --block" in c for c in cmdlines) == 2, cmdlines
        assert any("raylet" in c for c in cmdlines), cmdlines
        assert any(" run --config " in c and "--ray-address" in c for c in cmdlines), cmdlines

        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=180) == 143  # 128 + SIGTERM: stopped, not crashed
        _, alive = psutil.wait_procs(list(seen.values()), timeout=20)
        assert alive == [], f"left running: {alive}"
        assert of_data(data) == []
    finally:  # whatever failed: every process seen, by its PID, then the script by its own
        if script.poll() is None:
            seen.update((p.pid, p) for p in tree(script.pid))
        seen.update((p.pid, p) for p in of_data(data))
        for proc in seen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if script.poll() is None:
            script.kill()
            script.wait()
        shutil.rmtree(data, ignore_errors=True)
