"""`memory`: resident memory of an idle node, an idle registry, a registry holding N flows, and
the whole `kodo-bus up` stack after its first launch.

Each service is a `python -m kodo_bus run` process of its own, read with psutil once it
announced itself (and, for the full registry, once its view is complete). The idle node serves
the benchmark flows but has run nothing, so Ray is not loaded in it (a node starts Ray at its
first launch). Floor: a bare Python process that imported nats-py and pydantic — what any Python
service on this bus costs before it does anything.

The `up` stack (issue 18) is counted as smem counts it: PSS, from /proc/<pid>/smaps_rollup, of
every process of the `kodo-bus up` tree (nats-server, the node that is also the registry, the
web panel, `up` itself and the node's own Ray: GCS, raylet, its agents, the actor's worker),
summed, once the first launch of `hello` finished and `SETTLE` seconds passed. PSS splits a
shared page among every process mapping it, machine-wide, so it reads a few percent higher on an
idle machine than next to other Python processes; USS (pages of one process only) is given too,
and is not. Floor: a bare Ray (`ray.init(address="local", include_dashboard=False)`, its driver
included), idle, with one actor. Skipped with `--quick` (it starts Ray twice, about 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil

from ..client import Client
from ..errors import KodoError
from .common import Floor, ScenarioResult, Stopwatch
from .env import BenchEnv, stop_process
from .flows import FLOW_MODULE
from .registry import fill
from .simnodes import SimNodes

TARGET_NODE_MB = 120.0
TARGET_REGISTRY_MB = 250.0
TARGET_UP_MB = 500.0
SETTLE = 5.0
"""Seconds after the first launch before the `up` stack is read (Ray's late starters start)."""
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
"""`up` serves the examples of a source checkout (an installed package has none)."""

_BARE_RAY = """
import sys, ray
from ray._private import ray_constants
ray_constants.ENABLE_RAY_CLUSTER = False
ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")

@ray.remote(num_cpus=0)
class Idle:
    def ping(self):
        return 1

actor = Idle.remote()
ray.get(actor.ping.remote())
print("ready", flush=True)
sys.stdin.read()
ray.shutdown()
"""

_BARE = "import sys, nats, pydantic, msgpack; print('ready', flush=True); sys.stdin.read()"


def free_port() -> int:
    """A free loopback port (released at once: `up` binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def smaps(pid: int) -> dict[str, float]:
    """Pss, Rss, Private_Clean and Private_Dirty of one process, in MB ({} once it is gone)."""
    sizes: dict[str, float] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return sizes
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in {"Pss", "Rss", "Private_Clean", "Private_Dirty"}:
            sizes[key] = int(rest.split()[0]) / 1024
    return sizes


def family(pid: int) -> list[psutil.Process]:
    """`pid` and every process below it ([] once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def is_web_panel(proc: psutil.Process) -> bool:
    """`up`'s web panel (`python -m kodo_bus web`), which the issue's stack leaves out."""
    try:
        argv = proc.cmdline()
    except psutil.Error:
        return False
    return argv[1:4] == ["-m", "kodo_bus", "web"]


def tree_memory(
    pid: int, *, leave_out: list[psutil.Process] | None = None
) -> tuple[float, float, float, int]:
    """PSS, RSS and USS of `pid` and every process below it but `leave_out` (and theirs), in
    MB, and how many processes."""
    left = {p.pid for proc in leave_out or [] for p in family(proc.pid)}
    pss = rss = uss = 0.0
    counted = 0
    for proc in family(pid):
        if proc.pid in left:
            continue
        sizes = smaps(proc.pid)
        if sizes:
            counted += 1
            pss += sizes["Pss"]
            rss += sizes["Rss"]
            uss += sizes["Private_Clean"] + sizes["Private_Dirty"]
    return pss, rss, uss, counted


@contextlib.asynccontextmanager
async def _snippet(code: str, ready_within: float) -> AsyncIterator[int]:
    """A Python process running `code`, once it printed its ready line: its PID. `code` waits
    on stdin, so closing it ends the process; what is left is stopped by PID."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), ready_within)
        yield proc.pid
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        await stop_process(proc, timeout=30)


async def bare_ray_mb(settle: float = SETTLE) -> float:
    """PSS of a bare local Ray, idle with one actor, its driver included."""
    async with _snippet(_BARE_RAY, 180) as pid:
        await asyncio.sleep(settle)
        return tree_memory(pid)[0]


async def up_stack(
    settle: float = SETTLE,
) -> tuple[tuple[float, float, float, int], tuple[float, float, float, int], float]:
    """Run `kodo-bus up` on free ports, launch `hello` once, read the tree: PSS, RSS, USS (MB)
    and processes of the whole tree, the same without the web panel, and the seconds from the
    start of `up` to the end of that first launch."""
    port, web = free_port(), free_port()
    url = f"nats://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="kodo-bench-up-") as tmp:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "kodo_bus",
            "up",
            "--port",
            str(port),
            "--http-port",
            "0",
            "--web-port",
            str(web),
            "--store",
            str(Path(tmp) / "nats"),
            "--examples",
            str(EXAMPLES),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            first = await _first_launch(url, proc, deadline=started + 180)
            await asyncio.sleep(settle)
            panel = [p for p in family(proc.pid) if is_web_panel(p)]
            whole = tree_memory(proc.pid)
            return whole, tree_memory(proc.pid, leave_out=panel), first - started
        finally:
            await stop_process(proc, timeout=30)


async def _first_launch(url: str, proc: asyncio.subprocess.Process, deadline: float) -> float:
    """Launch up-node/hello once it is listed; when its result came (monotonic)."""
    while True:
        if proc.returncode is not None or time.monotonic() > deadline:
            raise KodoError(f"kodo-bus up did not serve hello (exit code {proc.returncode})")
        try:
            async with Client(url, timeout=10) as kb:
                flow = await kb.flow("up-node/hello")
                execution = await flow.launch({"name": "bench"})
                await execution.result(timeout=max(1.0, deadline - time.monotonic()))
                return time.monotonic()
        except (KodoError, OSError, TimeoutError):
            await asyncio.sleep(0.5)  # the bus or the node is still starting


async def bare_python_mb() -> float:
    """RSS of a Python process with nats-py, pydantic and msgpack imported, idle."""
    async with _snippet(_BARE, 60) as pid:
        return rss_mb(pid)


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

    if env.settings.quick:
        result.notes.append("the `up` stack is not measured with --quick (it starts Ray)")
    elif not (EXAMPLES / "up-node.yaml").exists():
        result.notes.append(f"the `up` stack is not measured: no {EXAMPLES} (not a checkout)")
    else:
        ray_floor = Floor(name="bare Ray, idle, one actor", value=await bare_ray_mb(), unit="MB")
        whole, bare, first = await up_stack()
        for label, (pss, rss, uss, count) in (
            ("`kodo-bus up` stack after its first launch", whole),
            ("same without the web panel", bare),
        ):
            name = f"{label} ({count} processes)"
            result.add(f"{name}, PSS", pss, "MB", floor=ray_floor, target=TARGET_UP_MB)
            result.add(f"{name}, USS", uss, "MB")
            result.add(f"{name}, RSS", rss, "MB")
        result.notes.append(f"`kodo-bus up` to the end of its first launch: {first:.1f} s")
    result.seconds = watch()
    return result
