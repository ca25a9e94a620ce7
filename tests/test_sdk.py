"""The Python SDK against a real federation: registry and two nodes as `kodo-bus run` processes."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import yaml

from kodo_bus import (
    AmbiguousFlow,
    ConnectError,
    ExecutionCancelled,
    ExecutionFailed,
    FlowNotFound,
    InputsInvalid,
)
from kodo_bus.client import Client
from kodo_bus.config import ServerSettings
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes, run_python

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> Iterator[NatsServer]:
    """A nats-server with a registry and two nodes (`sdk-a`, `sdk-b`) for the whole module."""
    tmp = tmp_path_factory.mktemp("sdk")
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=tmp / "nats", config=REPO / "nats-server.conf")
    ).start()
    procs = Processes()
    env = {"KODO_RAY_ADDRESS": ray_address, "PYTHONPATH": str(REPO)}
    try:
        bodies: dict[str, dict[str, object]] = {
            "registry": {"id": "sdk-reg", "role": "registry"},
            "a": {
                "id": "sdk-a",
                "role": "node",
                "max_depth": 5,
                "flows": [
                    {"module": "tests.flowpkg.sdk_flows"},
                    {"module": "examples.pipeline.flowkit_complete"},
                ],
            },
            "b": {
                "id": "sdk-b",
                "role": "node",
                "flows": [
                    {"module": "tests.flowpkg.sdk_flows_b"},
                    {"entry": "tests.flowpkg.sdk_flows:greet"},
                ],
            },
        }
        for name, body in bodies.items():
            config = tmp / f"{name}.yaml"
            config.write_text(yaml.safe_dump({**body, "nats": [server.url], "heartbeat": 0.5}))
            procs.start("run", "--config", str(config), env=env, cwd=REPO)
        yield server
    finally:
        procs.stop_all()
        server.stop()


@pytest.fixture
async def kb(bus: NatsServer) -> AsyncIterator[Client]:
    async with Client(bus.url) as client:
        deadline = time.monotonic() + 30
        while True:  # until the registry's view holds both nodes
            try:
                nodes = {f.node for f in await client.flows()}
            except Exception:  # registry not up yet
                nodes = set()
            if nodes == {"sdk-a", "sdk-b"}:
                break
            assert time.monotonic() < deadline, f"federation not ready: {nodes}"
            await asyncio.sleep(0.2)
        yield client


async def test_flows_and_lookup(kb: Client) -> None:
    flows = await kb.flows()
    assert {f.qualified_name for f in flows} >= {"sdk-a/greet", "sdk-a/explode", "sdk-b/step2"}
    demo = await kb.flows(tags=["demo"])
    assert {f.qualified_name for f in demo} == {"sdk-a/greet", "sdk-b/greet"}
    greet = await kb.flow("sdk-a/greet")
    assert (greet.summary, greet.version, greet.author) == ("Greets someone", "1.0", "sdk@test")
    assert greet.schema["properties"]["times"]["maximum"] == 5
    with pytest.raises(AmbiguousFlow, match="sdk-a/greet, sdk-b/greet"):
        await kb.flow("greet")
    with pytest.raises(FlowNotFound, match="did you mean: sdk-a/greet"):
        await kb.flow("gree")
    with pytest.raises(FlowNotFound):
        await kb.flow("no-such-flow")


async def test_launch_events_result_and_reattach(kb: Client, bus: NatsServer) -> None:
    greet = await kb.flow("sdk-a/greet")
    ex = await greet.launch({"name": "Ada", "times": 2})
    assert await ex.result(timeout=60) == {"greeting": "Hello Ada", "times": 2}
    events = [e async for e in ex.events()]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.data for e in events if e.kind == "markdown"] == [
        "# Hello Ada (1)",
        "# Hello Ada (2)",
    ]
    assert events[-1].kind == "status" and events[-1].data == {"status": "finished"}
    assert await ex.status() == "finished"
    only = [e.kind async for e in ex.events(kinds=["markdown"])]
    assert only == ["markdown", "markdown"]
    # another process re-attaches by id and reads the same result
    script = textwrap.dedent(f"""
        from kodo_bus.sync import Client
        with Client({bus.url!r}) as kb:
            ex = kb.execution({ex.id!r})
            print(ex.status(), ex.result(timeout=30)["greeting"])
    """)
    done = await asyncio.to_thread(run_python, "-c", script, timeout=60)
    assert done.stdout.strip() == "finished Hello Ada"
    listed = await kb.executions(flow="greet", node="sdk-a", status="finished")
    assert ex.id in [r.execution for r in listed]
    assert all(r.flow == "greet" and r.status == "finished" for r in listed)


async def test_validation_on_client_matches_node(kb: Client) -> None:
    greet = await kb.flow("sdk-a/greet")
    with pytest.raises(InputsInvalid) as local:
        greet.validate({"name": "", "times": 9})
    assert {p.field for p in local.value.problems} == {"name", "times"}
    # the node says the same, field by field, when the client's check is bypassed
    from kodo_bus import subjects
    from kodo_bus.bus import request
    from kodo_bus.models import LaunchReply, LaunchRequest

    with pytest.raises(InputsInvalid) as remote:
        await request(
            kb.nc,
            subjects.launch(kb.user, "sdk-a", "greet"),
            LaunchRequest(inputs={"name": "", "times": 9}),
            LaunchReply,
        )
    assert remote.value.problems == local.value.problems


async def test_typed_errors(kb: Client) -> None:
    ex = await (await kb.flow("sdk-a/explode")).launch({"why": "testing"})
    with pytest.raises(ExecutionFailed) as failed:
        await ex.result(timeout=60)
    assert failed.value.remote_type == "ValueError"
    assert "boom: testing" in failed.value.remote_message
    assert "raise ValueError" in failed.value.traceback

    ex = await (await kb.flow("sdk-a/forever")).launch()
    async for event in ex.events(kinds=["markdown"]):
        assert event.data == "started"
        break
    await ex.cancel()
    with pytest.raises(ExecutionCancelled):
        await ex.result(timeout=10)


async def test_answer_a_question(kb: Client) -> None:
    ex = await (await kb.flow("sdk-a/approve")).launch()
    async for event in ex.events(kinds=["lock"]):
        assert event.data["prompt"] == "Approve?"
        break
    assert await ex.status() == "awaiting"
    with pytest.raises(InputsInvalid):
        await ex.answer({"approved": "perhaps"})
    await ex.answer({"approved": True, "comment": "fine"})
    assert await ex.result(timeout=30) == {"approved": True, "comment": "fine"}


async def test_three_step_workflow_across_two_nodes(kb: Client) -> None:
    ex = await (await kb.flow("sdk-a/step1")).launch({"value": 1})
    tree = await ex.workflow(timeout=60)
    assert (tree.flow, tree.node, tree.status) == ("step1", "sdk-a", "finished")
    [step2] = tree.children
    assert (step2.flow, step2.node, step2.status) == ("step2", "sdk-b", "finished")
    [step3] = step2.children
    assert (step3.flow, step3.node, step3.status) == ("step3", "sdk-a", "finished")
    assert step3.result == {"value": 30}
    child = kb.execution(step3.execution)
    events = [e async for e in child.events()]
    assert {(e.parent, e.root) for e in events} == {(step2.execution, ex.id)}
    assert [c.id for c in await ex.children()] == [step2.execution]


async def test_depth_limit_ends_error(kb: Client) -> None:
    ex = await (await kb.flow("sdk-a/loop")).launch({"value": 0})
    tree = await ex.workflow(timeout=60)
    depth, node = 0, tree
    while node.children:
        [node] = node.children
        depth += 1
    assert depth == 4  # max_depth 5: executions at depths 0..4
    assert node.status == "error" and "depth limit" in (node.error or "")


async def test_central_logs(kb: Client) -> None:
    ex = await (await kb.flow("sdk-a/step1")).launch({"value": 7})
    await ex.workflow(timeout=60)
    logs = [e async for e in kb.logs(level="info", node="sdk-b")]
    assert any(
        e.data["message"] == "step 2 running" and e.data["context"] == {"value": 8} for e in logs
    )
    assert not [e async for e in kb.logs(level="error", node="sdk-b")]


async def test_unreachable_nats_is_a_clear_error() -> None:
    with pytest.raises(ConnectError, match=r"cannot reach NATS at nats://127\.0\.0\.1:1"):
        async with Client("nats://127.0.0.1:1", retry=0):
            pass


def test_blocking_twin(bus: NatsServer) -> None:
    from kodo_bus.sync import Client as SyncClient

    with SyncClient(bus.url) as kb:
        greet = kb.flow("sdk-a/greet")
        ex = greet.launch({"name": "Bob"})
        assert ex.result(timeout=60)["greeting"] == "Hello Bob"
        kinds = [e.kind for e in ex.events()]
        assert kinds[0] == "meta" and kinds[-1] == "status"
        assert ex.status() == "finished"


async def test_flowkit_complete_example_as_a_flow(kb: Client) -> None:
    fk = await kb.flow("sdk-a/flowkit_complete")
    ex = await fk.launch({"data": "abc"})
    tree = await ex.workflow(timeout=60)
    assert tree.status == "finished"
    assert tree.result["message"] == "Success" and tree.result["outputs"] == {"result": "ABC"}
    [child] = tree.children
    assert (child.flow, child.result) == ("next_node", {"received": "ABC"})
    logged = [
        e.data["message"]
        async for e in kb.logs(level="debug", flow="flowkit_complete")
        if e.execution == ex.id
    ]
    assert logged == ["Starting data processing", "Inputs: {'data': 'abc'}", "Processed 3 items"]


async def test_timeout_and_model_inputs(kb: Client) -> None:
    from kodo_bus import ExecutionTimeout

    from .flowpkg.sdk_flows import Greeting

    ex = await (await kb.flow("sdk-a/forever")).launch(timeout=0.5)
    with pytest.raises(ExecutionTimeout):
        await ex.result(timeout=30)
    ex = await (await kb.flow("sdk-a/greet")).launch(Greeting(name="Model"))
    assert (await ex.result(timeout=30))["greeting"] == "Hello Model"
    mine = await kb.executions(launcher=kb.user, flow="greet", limit=1000)
    assert ex.id in {r.execution for r in mine}
