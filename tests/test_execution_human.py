"""Human in the loop (`tracer.ask`) and the seed 002 fan-out example on real Ray."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from kodo_bus import subjects
from kodo_bus.bus import connect, request
from kodo_bus.config import ConnectSettings, ServiceSettings
from kodo_bus.errors import InputsInvalid, RemoteError
from kodo_bus.executions import read_record
from kodo_bus.flows import load_flows
from kodo_bus.models import Ack, AnswerRequest, LaunchReply, LaunchRequest
from kodo_bus.runner import Runner
from kodo_bus.server import NatsServer

from . import test_execution_support as support
from .test_execution_support import NodeFactory, check_well_formed, read_events, status_of

make_node = support.make_node
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("invariants")]
REPO = Path(__file__).resolve().parent.parent


async def test_ask_waits_for_a_valid_answer(make_node: NodeFactory) -> None:
    node = await make_node(max_running=2)
    reply = await node.launch("asker", {})
    sub = await node.nc.subscribe(subjects.events("local", reply.execution, "lock"))
    lock = await sub.next_msg(timeout=20)
    assert b"pick a colour" in lock.data
    kv = await node.js.key_value(subjects.BUCKET_EXECUTIONS)
    deadline = time.monotonic() + 5
    while (rec := await read_record(kv, subjects.record_key("local", reply.execution))) and rec[
        0
    ].status != "awaiting":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    answer = subjects.exec_answer("local", reply.execution)
    with pytest.raises(InputsInvalid) as bad:
        await request(node.nc, answer, AnswerRequest(data={"colour": "red", "count": 0}), Ack)
    assert [p.field for p in bad.value.problems] == ["count"]
    ok = await request(node.nc, answer, AnswerRequest(data={"colour": "red", "count": 2}), Ack)
    assert ok.ok
    events = await read_events(node.js, reply.execution)
    check_well_formed(events)
    assert status_of(events) == [
        "starting",
        "running",
        "awaiting",
        "running",
        "finished",
    ]
    assert [e.kind for e in events if e.kind in ("lock", "answer")] == ["lock", "answer"]
    assert events[-2].data == {"colour": "red", "count": 2}


async def test_ask_times_out(make_node: NodeFactory) -> None:
    node = await make_node(max_running=2)
    events = await node.run("asker", {"timeout": 0.5})
    check_well_formed(events)
    assert status_of(events)[-1] == "timeout"
    assert events[-2].data["type"] == "AskTimeout"


@pytest.mark.slow
async def test_seed_002_fan_out_25_tasks(nats_server: NatsServer, ray_address: str) -> None:
    settings = ServiceSettings.from_yaml(REPO / "examples/calc/flows.yaml").model_copy(
        update={"nats": [nats_server.url], "max_running": 2}
    )
    flows = load_flows(settings.flows)
    assert flows[0].info().input_schema["properties"]["tasks"]["maximum"] == 500
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    runner = Runner(nc, settings, flows)
    try:
        await runner.start()
        subject = subjects.launch("local", settings.id, "calc")
        with pytest.raises(InputsInvalid):
            await request(nc, subject, LaunchRequest(inputs={"tasks": 501}), LaunchReply)
        reply = await request(nc, subject, LaunchRequest(inputs={"tasks": 25}), LaunchReply)
        events = await read_events(nc.jetstream(), reply.execution, timeout=150)
        check_well_formed(events)
        assert status_of(events)[-1] == "finished", events[-2].data
        result = events[-2].data
        assert sorted(r["i"] for r in result) == list(range(25))
        assert any(e.kind == "markdown" for e in events)
        assert any(e.kind == "stdout" and "100.00%" in e.data for e in events)
    finally:
        await runner.stop()
        await nc.close()


async def test_unknown_flow_not_found(make_node: NodeFactory) -> None:
    node = await make_node(max_running=2)
    with pytest.raises(RemoteError) as info:
        await node.launch("missing", {})
    assert info.value.kind == "not_found"
