"""What the `kodo-bus up` stack keeps in memory (issue 18: ≤ 500 MB PSS after its first launch).

Two savings, each checked on real processes:
- a node's own Ray runs without the three processes nothing of kodo-bus uses (the autoscaler's
  monitor, the log monitor, the dashboard's API server) and without idle prestarted workers;
- importing kodo_bus leaves aiohttp out (nats-py loads it for WebSocket URLs only), and a
  `ws://` URL still works, against a real nats-server with a WebSocket listener.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from kodo_bus import Client
from kodo_bus.bench.memory import family, smaps
from kodo_bus.config import ServerSettings
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes, free_ports, run_python
from .test_ray_quiet import Output
from .test_reliability_support import online_flow

UNUSED = {
    "autoscaler monitor": "autoscaler/_private/monitor.py",
    "log monitor": "_private/log_monitor.py",
    "dashboard API server": "dashboard/dashboard.py",
}
"""Ray processes a node's own Ray stops (pool.py `_trim_local_ray`), by their command line."""


def described(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return ""


@pytest.mark.slow
async def test_a_nodes_own_ray_runs_without_the_processes_kodo_bus_does_not_use(
    nats_server: NatsServer, procs: Processes, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "KODO_"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    node = f"lean-node-{time.monotonic_ns() % 10**10}"
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "id": node,
                "role": "hybrid",
                "nats": [nats_server.url],
                "heartbeat": 0.5,
                "actors": 1,  # fewer actors than CPUs: a prestarted worker would stay idle
                "flows": [{"module": "examples.hello"}],
            }
        )
    )
    proc = procs.spawn(
        [sys.executable, "-m", "kodo_bus", "run", "--config", str(config)], env=env, cwd=str(REPO)
    )
    output = Output(proc)
    async with Client(nats_server.url) as kb:
        flow = await online_flow(kb, f"{node}/hello")
        execution = await flow.launch({"name": "Ray"})  # the first: the node starts its Ray
        assert await execution.result(timeout=120) == "Hello, **Ray**!"
        # the actor is up and has run: whatever Ray started for the driver has started too
        tree = family(proc.pid)
        lines = [described(p) for p in tree]
        found = {name for name, part in UNUSED.items() if any(part in line for line in lines)}
        assert not found, f"{found} still run:\n" + "\n".join(lines)
        idle = [line for line in lines if line.startswith("ray::IDLE")]
        assert not idle, "\n".join(lines)
        assert any(line.startswith("ray::ExecActor") for line in lines), "\n".join(lines)
        pss = sum(smaps(p.pid).get("Pss", 0.0) for p in tree)
        print(f"node tree: {len(tree)} processes, {pss:.0f} MB PSS")
        # Ray keeps working without them: a second launch, on the running actor
        again = await flow.launch({"name": "again"})
        assert await again.result(timeout=60) == "Hello, **again**!"
    procs.stop(proc, timeout=60)
    assert "Traceback" not in output.all(), output.all()


WS_SCRIPT = """
import asyncio, sys
import kodo_bus
assert "aiohttp" not in sys.modules, "kodo_bus imported aiohttp"
import nats

async def main(url):
    nc = await nats.connect(url, connect_timeout=10, max_reconnect_attempts=0)
    sub = await nc.subscribe("ws.check")
    await nc.publish("ws.check", b"over a websocket")
    msg = await sub.next_msg(timeout=10)
    assert msg.data == b"over a websocket", msg.data
    await nc.close()

asyncio.run(main(sys.argv[1]))
print("aiohttp loaded:", "aiohttp" in sys.modules)
"""


def test_kodo_bus_imports_without_aiohttp_and_a_websocket_url_still_works(
    tmp_path: Path,
) -> None:
    (port,) = free_ports(1)
    config = tmp_path / "ws.conf"
    config.write_text(
        (REPO / "nats-server.conf").read_text()
        + f'\nwebsocket {{\n    listen: "127.0.0.1:{port}"\n    no_tls: true\n}}\n'
    )
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=tmp_path / "store", config=config)
    ).start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", WS_SCRIPT, f"ws://127.0.0.1:{port}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    assert "aiohttp loaded: True" in done.stdout  # the WebSocket transport imported it on use


SERVICE_SCRIPT = """
import sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
import kodo_bus.cli as cli
names = sorted(c.name or c.callback.__name__ for c in cli.app.registered_commands)
others = ("kodo_bus.cli.bench_cmd", "kodo_bus.cli.try_cmd", "kodo_bus.cli.dashboard_cmd")
heavy = [m for m in others if m in sys.modules]
print(names, heavy)
"""


def _cli_process(script: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`script` run as if `argv` were the command line of a `kodo-bus` process; must succeed."""
    return run_python("-c", script, *argv)


@pytest.mark.parametrize(
    ("argv", "commands"),
    [
        (["kodo_bus/__main__.py", "run", "--role", "node"], ["run"]),
        (["/venv/bin/kodo-bus", "web"], ["web"]),
        (["/venv/bin/kodo-bus", "up"], ["server", "up", "version"]),
    ],
)
def test_a_stack_process_registers_its_own_command_alone(
    argv: list[str], commands: list[str]
) -> None:
    """`up`, and the `run`/`web` processes it starts, skip the other commands' imports."""
    done = _cli_process(SERVICE_SCRIPT, str(REPO / argv[0]), *argv[1:])
    assert done.stdout.strip() == f"{commands} []"


def test_any_other_use_of_the_cli_registers_every_command() -> None:
    done = _cli_process(SERVICE_SCRIPT, "/venv/bin/kodo-bus", "launch", "hello")
    names = done.stdout.split("]")[0]
    for command in ("run", "web", "up", "launch", "bench", "flows"):
        assert f"'{command}'" in names, done.stdout


def test_the_up_process_leaves_out_the_sdk_and_the_panel_command() -> None:
    """`up` only supervises: the SDK's client and the panel's command module (~10 MB PSS of the
    stack) stay out of it; its `import kodo_bus` loads no public name it does not use."""
    script = SERVICE_SCRIPT.replace(
        "print(names, heavy)", "print(sorted(m for m in sys.modules if m.startswith('kodo_bus.')))"
    )
    done = _cli_process(script, "/venv/bin/kodo-bus", "up")
    loaded = done.stdout
    for module in (
        "kodo_bus.client",
        "kodo_bus.cli.web_cmd",
        "kodo_bus.cli.exec_cmd",
        "kodo_bus.bus",
    ):
        assert f"'{module}'" not in loaded, loaded
