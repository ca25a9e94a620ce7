"""deploy/cluster/start.sh: the three-server JetStream cluster comes up on the ports it is given,
stores a message in a stream with 3 replicas, and SIGTERM to the script stops all three servers.

The script runs as it is documented (`bash deploy/cluster/start.sh`), with CLIENT_PORTS,
ROUTE_PORTS and HTTP_PORTS set to free loopback ports and DATA in tmp_path. Everything it
started is stopped by PID, also when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import nats
import psutil
import pytest
from nats.js.api import StreamConfig

from kodo_bus.server import find_binary

from .conftest import REPO, free_ports, start_script

pytestmark = pytest.mark.slow

SCRIPT = REPO / "deploy" / "cluster" / "start.sh"
NAMES = ("s1", "s2", "s3")


def monitor(http_port: int, endpoint: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{http_port}/{endpoint}"
    with urllib.request.urlopen(url, timeout=2) as resp:
        data: dict[str, Any] = json.load(resp)
    return data


def wait_cluster(http: list[int], script: subprocess.Popen[bytes], timeout: float = 60) -> str:
    """Until every server's /jsz shows a 3-server meta group with the same leader; the leader."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        assert script.poll() is None, f"start.sh exited with {script.returncode}"
        try:
            metas = [monitor(port, "jsz").get("meta_cluster") or {} for port in http]
            last = metas
            leaders = {m.get("leader") for m in metas}
            if all(m.get("cluster_size") == 3 for m in metas) and len(leaders) == 1:
                (leader,) = leaders
                if leader in NAMES:
                    return str(leader)
        except OSError as exc:  # monitoring not up yet
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"no 3-server JetStream cluster within {timeout} s; last: {last!r}")


async def stores_with_three_replicas(urls: list[str]) -> None:
    """A stream with 3 replicas is created through one server, a message stored in it and read
    back through another: its leader and two current replicas are the three servers."""
    name = f"DEPLOY_{uuid.uuid4().hex[:8].upper()}"
    subject = f"deploy.cluster.{name.lower()}"
    nc = await nats.connect(urls[0], connect_timeout=5, max_reconnect_attempts=0)
    other = await nats.connect(urls[2], connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream(timeout=15)
        await js.add_stream(StreamConfig(name=name, subjects=[subject], num_replicas=3))
        ack = await js.publish(subject, b"stored on three", timeout=15)
        assert (ack.stream, ack.seq) == (name, 1)
        msg = await other.jetstream(timeout=15).get_last_msg(name, subject)
        assert msg.data == b"stored on three"
        deadline = time.monotonic() + 30
        while True:  # the replicas catch up a moment after the ack (quorum is 2 of 3)
            info = await js.stream_info(name)
            assert info.config.num_replicas == 3
            cluster = info.cluster
            assert cluster is not None
            replicas = cluster.replicas or []
            servers = {cluster.leader, *(r.name for r in replicas)}
            if servers == set(NAMES) and all(r.current for r in replicas):
                break
            assert time.monotonic() < deadline, f"replicas not current: {cluster!r}"
            await asyncio.sleep(0.1)
        await js.delete_stream(name)
    finally:
        await nc.close()
        await other.close()


def test_start_script_runs_a_three_replica_cluster_and_stops_it(tmp_path: Path) -> None:
    ports = free_ports(9)
    client, route, http = ports[:3], ports[3:6], ports[6:]
    data = tmp_path / "data"
    env = {
        **os.environ,
        "DATA": str(data),
        "NATS_SERVER": str(find_binary()),
        "CLIENT_PORTS": " ".join(map(str, client)),
        "ROUTE_PORTS": " ".join(map(str, route)),
        "HTTP_PORTS": " ".join(map(str, http)),
    }
    log_path = tmp_path / "start.log"
    script = start_script(SCRIPT, env, log_path, cwd=tmp_path)
    children: list[psutil.Process] = []
    try:
        wait_cluster(http, script)
        children = psutil.Process(script.pid).children(recursive=True)
        confs = sorted(next(a for a in c.cmdline() if a.endswith(".conf")) for c in children)
        assert confs == [str(data / f"{n}.conf") for n in NAMES]
        for i, name in enumerate(NAMES):  # each server listens on the ports given to it
            varz = monitor(http[i], "varz")
            assert (varz["server_name"], varz["port"]) == (name, client[i])
            assert varz["cluster"]["cluster_port"] == route[i], varz["cluster"]
        asyncio.run(stores_with_three_replicas([f"nats://127.0.0.1:{p}" for p in client]))

        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=30) == 143  # 128 + SIGTERM: stopped, not crashed
        _, alive = psutil.wait_procs(children, timeout=15)
        assert alive == [], f"left running: {alive}"
    finally:  # whatever failed: the servers by their PIDs, then the script by its own
        if not children and script.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                children = psutil.Process(script.pid).children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        if script.poll() is None:
            script.kill()
            script.wait()
    text = log_path.read_text()
    assert f"cluster up: nats://127.0.0.1:{client[0]}" in text, text
