"""Inputs and outputs stay out of the services' logs at INFO and above (seed 003 privacy)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml

from kodo_bus import Client, InputsInvalid, KodoError, subjects
from kodo_bus.bus import request
from kodo_bus.models import LaunchReply, LaunchRequest
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes

SECRET_IN = "Zephyrine-4711"
"""An input value; the flow's output contains it too (the greeting)."""


@pytest.mark.ray
async def test_inputs_and_outputs_never_reach_info_logs(
    fresh_server: NatsServer, procs: Processes, ray_address: str, tmp_path: Path
) -> None:
    env = {"KODO_RAY_ADDRESS": ray_address, "PYTHONPATH": str(REPO)}
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({
        "id": "priv-node", "nats": [fresh_server.url], "heartbeat": 0.5, "log_level": "INFO",
        "flows": [{"module": "tests.flowpkg.sdk_flows"}],
    }))  # fmt: skip
    registry = procs.start("run", "--role", "registry", "--id", "priv-reg", "--nats",
                           fresh_server.url, "--heartbeat", "0.5", "--log-level", "INFO",
                           env=env, cwd=str(REPO))  # fmt: skip
    node = procs.start("run", "--config", str(config), env=env, cwd=str(REPO))
    async with Client(fresh_server.url) as kb:
        deadline = time.monotonic() + 60
        while True:
            try:
                greet = await kb.flow("priv-node/greet")
                break
            except KodoError:
                assert time.monotonic() < deadline, "federation did not come up"
                await asyncio.sleep(0.2)
        ex = await greet.launch({"name": SECRET_IN})
        assert SECRET_IN in (await ex.result(timeout=60))["greeting"]
        failing = await (await kb.flow("priv-node/explode")).launch({"why": SECRET_IN})
        with pytest.raises(KodoError):
            await failing.result(timeout=60)
        with pytest.raises(InputsInvalid):  # bypass the client's check: the node refuses it
            await request(
                kb.nc,
                subjects.launch(kb.user, "priv-node", "greet"),
                LaunchRequest(inputs={"name": "", "times": SECRET_IN}),
                LaunchReply,
            )
    logs = ""
    for proc in (node, registry):
        procs.stop(proc)
        assert proc.stdout is not None
        logs += proc.stdout.read()
    assert "priv-node" in logs  # the logs were captured at all
    assert SECRET_IN not in logs, [line for line in logs.splitlines() if SECRET_IN in line]
