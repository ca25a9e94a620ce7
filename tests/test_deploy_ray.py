"""deploy/ray: a kodo-bus node on a Ray cluster of two Ray nodes (`ray start --head`, a worker
joining it with `ray start --address`, `kodo-bus run --ray-address`).

The Ray cluster is this test's own: two `ray start --block` processes in sessions of their own,
on free ports, with a temp dir and an auth token of their own. It is never the session's Ray (no
`ray.init` in this process, no `ray_address` fixture) and never stopped with `ray stop`, which
stops every Ray of this machine's user: each `ray start --block` gets SIGTERM, which it passes on
to its GCS, raylet and agents, and the test checks that nothing of either process tree is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from kodo_bus.client import Client
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes, unpicked_ports, wait_logged
from .test_reliability_support import online_flow

pytestmark = [pytest.mark.slow]

RAY = str(Path(sys.executable).with_name("ray"))
FLOWS = "tests.flowpkg.ray_flows"
START_WITHIN = 90.0
"""Seconds one `ray start` may take to say "Ray runtime started" (12-20 s on 2 busy cores)."""
STOP_WITHIN = 30.0
"""Seconds a `ray start --block` process tree gets to end after SIGTERM (about 4 s here)."""
NODE_PORTS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)
"""Every port a Ray node would otherwise pick by default: two nodes on one machine, next to other
Ray instances, must not meet on a default (the dashboard agent's is a fixed 52365). Each comes
from `unpicked_ports`: the agents bind theirs (the metrics port among them) seconds after `ray
start` began, long enough for a port of the ephemeral range to be taken in between."""
HAS_RAY_CLIENT = importlib.util.find_spec("grpc") is not None
"""Ray's client server (a fixed 10001 on a head) runs only when ray[client] is installed, and
`ray start` refuses `--ray-client-server-port` without it."""


def ray_env(token: str) -> dict[str, str]:
    """Environment of every process of this cluster (Ray processes and the kodo-bus node).

    Token auth with a token of our own (Ray 2.60 turns token auth on when ~/.ray/auth_token
    exists, but a joining node or a driver given an address sends a token only with
    RAY_AUTH_MODE=token); PYTHONPATH so every Ray worker imports `tests.flowpkg.ray_flows`.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env.update(
        PYTHONPATH=path,
        PYTHONUNBUFFERED="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
    )
    return env


@dataclass
class RayCluster:
    """A head and worker `ray start --block` processes, each stopped by PID with its tree."""

    temp: Path
    """Ray's --temp-dir: short, under /tmp (Ray's socket paths must stay under 107 bytes)."""
    logs: Path
    env: dict[str, str]
    address: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> None:
        """`ray start --block ARGS` as `name`; returns once Ray says the node is registered."""
        log = self.logs / f"ray-{name}.log"
        ports = unpicked_ports(len(NODE_PORTS))
        cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1"]
        cmd += ["--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
        cmd += ["--include-log-monitor", "false"]  # no worker logs to forward: one process less
        cmd += ["--temp-dir", str(self.temp), *args]
        cmd += [str(a) for pair in zip(NODE_PORTS, ports, strict=True) for a in pair]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=self.logs,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        # Printed once the node's raylet is registered in the GCS (`ray start` waits for it).
        wait_logged(proc, log, b"Ray runtime started", START_WITHIN)

    def start_head(self) -> None:
        gcs, dashboard, client = unpicked_ports(3)
        self.address = f"127.0.0.1:{gcs}"
        # `--include-dashboard false` still runs a minimal dashboard process (8265 by default).
        head = ["--head", "--port", str(gcs), "--include-dashboard", "false"]
        head += ["--dashboard-port", str(dashboard)]
        if HAS_RAY_CLIENT:
            head += ["--ray-client-server-port", str(client)]
        self.start("head", *head)

    def status(self) -> str:
        """`ray status` of this cluster ("" while it does not answer)."""
        done = subprocess.run(
            [RAY, "status", "--address", self.address],
            check=False,
            env=self.env,
            cwd=self.logs,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout if done.returncode == 0 else ""

    def active_nodes(self) -> set[str]:
        """Node ids under "Active:" in `ray status`."""
        section = self.status().partition("Active:")[2].partition("Pending:")[0]
        return set(re.findall(r"node_([0-9a-f]+)", section))

    def raylet(self, name: str) -> int:
        """PID of the raylet in the tree of `ray start` process `name`."""
        tree = psutil.Process(self.procs[name].pid).children(recursive=True)
        raylets = [p.pid for p in tree if p.name() == "raylet"]
        assert len(raylets) == 1, f"{name}: raylets {raylets}"
        return raylets[0]

    def stop(self) -> list[str]:
        """SIGTERM every `ray start` process (all at once); what of their trees outlived it.

        Leftovers are then killed by PID, so nothing of this cluster survives the test either way.
        """
        trees: list[psutil.Process] = []
        for proc in self.procs.values():
            if proc.poll() is not None:
                continue  # ended and reaped: its PID may belong to another process by now
            root = psutil.Process(proc.pid)
            trees += [root, *root.children(recursive=True)]
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WITHIN
        while (alive := [p for p in trees if _running(p)]) and time.monotonic() < deadline:
            psutil.wait_procs(alive, timeout=0.5)
        left = []
        for rest in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                left.append(f"{rest.pid} {rest.name()}")
                rest.kill()
        for popen in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(10)
        return left


def _running(proc: psutil.Process) -> bool:
    """Still there and not just a zombie waiting for a parent to reap it."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[RayCluster]:
    """Started by the test (so it can time and check each step); always stopped by PID here."""
    cluster = RayCluster(
        temp=Path(tempfile.mkdtemp(prefix="kr-", dir="/tmp")),
        logs=tmp_path,
        env=ray_env(secrets.token_hex(32)),
    )
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.temp, ignore_errors=True)


def start_service(
    procs: Processes, tmp: Path, env: dict[str, str], *args: str, **body: Any
) -> subprocess.Popen[str]:
    """`kodo-bus run` from a YAML file holding `body`; quiet screen, the story in a log file."""
    config = tmp / f"{body['id']}.yaml"
    body = {"log_level": "CRITICAL", "log_file": str(tmp / f"{body['id']}.log"), **body}
    config.write_text(yaml.safe_dump(body))
    return procs.start("run", "--config", str(config), *args, env=env, cwd=str(tmp))


async def test_node_runs_flows_on_a_two_node_ray_cluster(
    nats_server: NatsServer, ray_cluster: RayCluster, procs: Processes, tmp_path: Path
) -> None:
    """`ray_cluster` comes before `procs`: on a failure the node stops before its Ray does."""
    began = time.monotonic()
    cluster = ray_cluster
    cluster.start_head()
    # The node attaches to Ray at its first launch only: it may start while the worker joins.
    suffix = f"{time.monotonic_ns() % 10**10}"
    registry, node = f"ray-reg-{suffix}", f"ray-node-{suffix}"
    # deploy/ray/node.yaml's heartbeat: the node's first launch attaches it to Ray (importing
    # Ray holds the GIL for a while), and on a loaded machine three half-second beats can pass
    # meanwhile: the registry would rightly take the node for dead.
    beat = {"nats": [nats_server.url], "heartbeat": 2, "retry": -1}
    start_service(procs, tmp_path, cluster.env, id=registry, role="registry", **beat)
    node_proc = start_service(
        procs,
        tmp_path,
        cluster.env,
        "--ray-address",
        cluster.address,
        id=node,
        role="node",
        flows=[{"module": FLOWS}],
        **beat,
    )
    cluster.start("worker", "--address", cluster.address)
    deadline = time.monotonic() + START_WITHIN
    while len(active := cluster.active_nodes()) != 2:
        assert time.monotonic() < deadline, f"not 2 active Ray nodes: {active}"
        await asyncio.sleep(1)
    raylets = {cluster.raylet("head"), cluster.raylet("worker")}
    up = time.monotonic() - began

    async with Client(nats_server.url) as kb:
        flow = await online_flow(kb, f"{node}/where")
        online = time.monotonic() - began
        executions = [await flow.launch({"per_node": 2}) for _ in range(4)]
        results = [await ex.result(timeout=90) for ex in executions]
        ran = time.monotonic() - began

    for result in results:
        # The node's driver sees this cluster, both nodes alive: the ones `ray status` lists.
        assert set(result["nodes"]) == active
        # Two tasks pinned to each node ran there, started by that node's raylet: one set of
        # workers under the head's `ray start`, the other under the extra worker's.
        tasks = result["tasks"]
        assert sorted(t["node"] for t in tasks) == sorted(result["nodes"] * 2)
        raylet_of = {t["node"]: t["ppid"] for t in tasks}
        assert len(raylet_of) == 2 and set(raylet_of.values()) == raylets
        assert all(raylet_of[t["node"]] == t["ppid"] for t in tasks)
        # The flow itself ran in one of the node's actors (num_cpus=0: Ray puts each on a random
        # node of the cluster, so which one is not asserted), under the raylet of that node.
        here = result["flow"]
        assert here["node"] in active and raylet_of[here["node"]] == here["ppid"]

    assert procs.stop(node_proc) == 0, "the node did not stop cleanly on SIGTERM"
    node_stopped = time.monotonic() - began
    left = cluster.stop()
    assert left == [], f"left running after SIGTERM to `ray start --block`: {left}"
    hosts = len({r["flow"]["node"] for r in results})
    print(
        f"actors used: {hosts} of 2 Ray nodes; Ray cluster of 2 up {up:.1f} s, flow online"
        f" {online:.1f} s, 4 executions done {ran:.1f} s, node stopped {node_stopped:.1f} s,"
        f" Ray stopped {time.monotonic() - began:.1f} s"
    )
