"""`memory`: resident memory of an idle node, an idle registry, and a registry holding N flows.

Each is a `python -m kodo_bus run` process of its own, read with psutil once it announced
itself (and, for the full registry, once its view is complete). The idle node serves the
benchmark flows but has run nothing, so Ray is not loaded in it (a node starts Ray at its first
launch; Ray's own processes are never counted here). Floor: a bare Python process that imported
nats-py and pydantic — what any Python service on this bus costs before it does anything.
"""

from __future__ import annotations

import asyncio
import sys

import psutil

from .common import Floor, ScenarioResult, Stopwatch
from .env import BenchEnv
from .flows import FLOW_MODULE
from .registry import fill
from .simnodes import SimNodes

TARGET_NODE_MB = 120.0
TARGET_REGISTRY_MB = 250.0

_BARE = "import sys, nats, pydantic, msgpack; print('ready', flush=True); sys.stdin.read()"


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


async def bare_python_mb() -> float:
    """RSS of a Python process with nats-py, pydantic and msgpack imported, idle."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _BARE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 60)
        return rss_mb(proc.pid)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)


async def run(env: BenchEnv, *, nodes: int = 1000, flows: int = 20) -> ScenarioResult:
    watch = Stopwatch()
    total = nodes * flows
    result = ScenarioResult(scenario="memory", params={"nodes": nodes, "flows": flows})
    floor = Floor(name="bare Python + nats-py", value=await bare_python_mb(), unit="MB")

    config = env.write_config("bench-node", {"flows": [{"module": FLOW_MODULE}]})
    node_id = f"bench-node-{env.run_id}"
    node = await env.run_service(node_id, "node", "--config", str(config))
    result.add(
        "idle node (no Ray loaded)", rss_mb(node.pid), "MB", floor=floor, target=TARGET_NODE_MB
    )
    await env.stop(node)

    registry = f"bench-memreg-{env.run_id}"
    proc = await env.run_service(registry, "registry", "--cache-reset")
    result.add("idle registry", rss_mb(proc.pid), "MB", floor=floor)
    await env.stop(proc)

    nc = await env.nats()
    sims = SimNodes(nc, f"memsim-{env.run_id}", nodes, flows)
    proc, _ = await fill(env, nc, registry, sims)
    result.add(
        f"registry holding {total:,} flows",
        rss_mb(proc.pid),
        "MB",
        floor=floor,
        target=TARGET_REGISTRY_MB,
    )
    await env.stop(proc)
    result.seconds = watch()
    return result
