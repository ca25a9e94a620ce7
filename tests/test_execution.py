"""Launch → events → final against a real nats-server and real Ray."""

from __future__ import annotations

import pytest

from kodo_bus import subjects
from kodo_bus.errors import InputsInvalid, RemoteError

from . import test_execution_support as support
from .test_execution_support import NodeFactory, check_well_formed, read_events, status_of

make_node = support.make_node

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("invariants")]


async def test_round_trip(make_node: NodeFactory) -> None:
    node = await make_node(max_running=2)
    reply = await node.launch("add", {"a": 2, "b": 3})
    assert len(reply.execution) == 32
    assert reply.subject == f"kodo.events.local.{reply.execution}.*"
    events = await read_events(node.js, reply.execution)
    check_well_formed(events)
    kinds = [e.kind for e in events]
    assert kinds[:3] == ["meta", "inputs", "status"]
    assert "markdown" in kinds and "progress" in kinds
    assert status_of(events) == ["starting", "running", "finished"]  # a free slot: no wait
    assert events[-2].kind == "final" and events[-2].data == 5
    assert events[1].data == {"a": 2, "b": 3}
    assert all(e.launcher == "local" and e.node == node.id for e in events)
    kv = await node.js.key_value("KODO_EXECUTIONS")
    rec = await kv.get(subjects.record_key("local", reply.execution))
    assert rec.value


async def test_sync_flow(make_node: NodeFactory) -> None:
    node = await make_node(max_running=2)
    events = await node.run("add-sync", {"a": 1, "b": 1}, user="alice")
    check_well_formed(events)
    assert events[-2].data == 2
    assert all(e.launcher == "alice" for e in events)


async def test_invalid_inputs_field_by_field(make_node: NodeFactory) -> None:
    node = await make_node(max_running=2)
    with pytest.raises(InputsInvalid) as info:
        await node.launch("add", {"a": 5000, "b": -1})
    fields = {p.field for p in info.value.problems}
    assert fields == {"a", "b"}
    with pytest.raises(RemoteError) as missing:
        await node.launch("nope", {})
    assert missing.value.kind == "not_found"
    assert node.runner.load()[0:2] == (0, 0)


async def test_exception_ends_error(make_node: NodeFactory) -> None:
    node = await make_node(max_running=2)
    events = await node.run("boom", {})
    check_well_formed(events)
    assert status_of(events)[-1] == "error"
    err = events[-2].data
    assert err["type"] == "ValueError" and err["message"] == "bad things"
    assert "Traceback" in err["traceback"]
