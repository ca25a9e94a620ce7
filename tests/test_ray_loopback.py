"""A node that starts a Ray of its own keeps every part of it on loopback.

Nothing outside the machine needs a node's own Ray; before, its GCS, raylet, agents and actors
listened on every interface (`*:port`). Here a real `kodo-bus run` (a hybrid: its own registry,
no Ray address, so it starts Ray at its first launch) runs one flow, and every listening TCP
socket of the node process and of the processes it started is read with psutil.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from kodo_bus.client import Client
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO, Processes
from .test_reliability_support import online_flow

pytestmark = [pytest.mark.slow]

STOP_WITHIN = 30.0
"""Seconds the node and its Ray get to end after SIGTERM before what is left is killed."""


def listening(proc: psutil.Process) -> list[str]:
    """`ip:port` of each TCP socket `proc` listens on (none once it has ended)."""
    with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
        return [
            f"{c.laddr.ip}:{c.laddr.port}"
            for c in proc.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        ]
    return []


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rpartition(":")[0].strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def stop_tree(procs: Processes, node: subprocess.Popen[str], tree: list[psutil.Process]) -> None:
    """SIGTERM the node (it shuts its Ray down), then kill by PID whatever of it is left."""
    procs.stop(node, timeout=STOP_WITHIN)
    alive = [p for p in tree if p.is_running()]
    _, alive = psutil.wait_procs(alive, timeout=STOP_WITHIN)
    for rest in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            rest.kill()


EARLY_RAY = """
import asyncio
from typing import Any

import ray  # at the top, as examples/calc does: Ray is imported before the node starts it

from kodo_bus.flows import flow


@ray.remote(num_cpus=1)
def _square(x: int) -> int:
    return x * x


@flow(summary="Ray tasks, from a module that imported Ray first")
async def squares(inputs: dict[str, Any], tracer: Any) -> list[int]:
    return list(await asyncio.gather(*(_square.remote(i) for i in range(3))))
"""
"""A flow module that imports `ray` when the node loads it: Ray's switch for the node address
is read at that import, so the node must not rely on setting it before its own."""


@pytest.mark.parametrize("early", [False, True], ids=["plain-flow", "ray-imported-first"])
async def test_own_ray_listens_on_loopback_only(
    fresh_server: NatsServer, procs: Processes, tmp_path: Path, early: bool
) -> None:
    node = f"loop-{secrets.token_hex(4)}"
    inputs: dict[str, Any]
    expected: object
    if early:
        (tmp_path / "early_ray_flows.py").write_text(EARLY_RAY)
        module, name, inputs, expected = "early_ray_flows", "squares", {}, [0, 1, 4]
    else:
        module, name, inputs, expected = "tests.flowpkg.basic", "add", {"a": 2, "b": 3}, 5
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "id": node,
                "role": "hybrid",
                "nats": [fresh_server.url],
                "heartbeat": 0.5,
                "flows": [{"module": module}],
                "log_file": str(tmp_path / "node.log"),
                "log_level": "WARNING",
            }
        )
    )
    # No Ray address from anywhere: the node must start a Ray of its own.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "KODO_RAY_ADDRESS")}
    path = os.pathsep.join(p for p in (str(tmp_path), str(REPO), env.get("PYTHONPATH")) if p)
    env.update(
        PYTHONPATH=path,
        PYTHONUNBUFFERED="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DISABLE_FAILURE_SIGNAL_HANDLER="1",  # a graceful SIGTERM with Ray imported early
    )
    proc = procs.spawn([*KODO_BUS, "run", "--config", str(config)], env=env, cwd=str(tmp_path))
    root = psutil.Process(proc.pid)
    tree: list[psutil.Process] = [root]
    try:
        async with Client(fresh_server.url) as kb:
            flow = await online_flow(kb, f"{node}/{name}", timeout=60)
            execution = await flow.launch(inputs)
            assert await execution.result(timeout=180) == expected  # Ray and its actors are up
        tree = [root, *root.children(recursive=True)]
        names = {p.name() for p in tree if p.is_running()}
        assert {"gcs_server", "raylet"} <= names, f"no Ray of its own under the node: {names}"
        sockets = {f"{p.pid} {p.name()}": listening(p) for p in tree}
        assert any(sockets.values()), sockets
        exposed = {who: [a for a in addrs if not loopback(a)] for who, addrs in sockets.items()}
        exposed = {who: addrs for who, addrs in exposed.items() if addrs}
        assert not exposed, f"listening beyond loopback: {exposed} (all: {sockets})"
        print(f"{len(tree)} processes, listening: {sorted(a for v in sockets.values() for a in v)}")
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = [root, *root.children(recursive=True)]
        stop_tree(procs, proc, tree)
