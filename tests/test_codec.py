"""Wire format: both encodings round-trip every model; bad bytes give one typed error."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from kodo_bus import models
from kodo_bus.codec import (
    CONTENT_TYPE,
    ERROR_HEADER,
    JSON,
    MSGPACK,
    decode,
    decode_reply,
    encode,
    encode_error,
    reply_content_type,
)
from kodo_bus.errors import Busy, FieldProblem, InputsInvalid, RemoteError, WireError

FLOW = models.FlowInfo(
    name="calc",
    summary="adds",
    tags=["math"],
    version="1.0",
    author="a@b.c",
    input_schema={"type": "object", "properties": {"a": {"type": "integer", "maximum": 5}}},
)
CATALOG = models.Catalog(node="n1", organization="org", revision=3, started=1.5, flows=[FLOW])
HEARTBEAT = models.Heartbeat(
    node="n1", revision=3, ts=2.0, running=1, capacity=2, cpu=0.5, memory=10
)

SAMPLES: list[models.Message] = [
    CATALOG,
    HEARTBEAT,
    models.Bye(node="n1", reason="stop"),
    models.SyncRequest(registry="r1"),
    models.RegistryView(
        registry="r1", nodes=[models.NodeEntry(catalog=CATALOG, heartbeat=HEARTBEAT)]
    ),
    models.Empty(),
    models.ServiceInfo(id="r1", role="registry", registry=True, feed=True, nodes=2, flows=55),
    models.FlowsQuery(q="calc", tags=["math"], offset=5, limit=10),
    models.FlowsPage(total=1, items=[models.FlowItem(node="n1", **FLOW.model_dump())]),
    models.NodesPage(total=1, items=[models.NodeItem(id="n1", flows=5)]),
    models.Ack(message="done"),
    models.ErrorReply(
        error="busy", message="queue full", fields=[models.FieldError(field="a", message="m")]
    ),
    models.LaunchRequest(
        inputs={"a": 1, "nested": {"b": [1, 2]}}, timeout=3.5, parent="p", depth=1
    ),
    models.LaunchReply(
        execution="e", node="n", flow="f", launcher="local", subject="kodo.events.local.e.*"
    ),
    models.Event(
        execution="e",
        seq=1,
        ts=1.0,
        kind="markdown",
        node="n",
        flow="f",
        launcher="u",
        data={"text": "# hi"},
    ),
    models.AnswerRequest(data={"ok": True}),
    models.ExecutionRecord(
        execution="e", flow="f", node="n", launcher="u", status="running", created=1.0, updated=2.0
    ),
]


def test_every_wire_model_has_a_sample() -> None:
    """A new message model must be added to SAMPLES so that it is round-tripped too."""
    wire = {
        cls
        for cls in vars(models).values()
        if isinstance(cls, type)
        and issubclass(cls, models.Message)
        and cls not in (models.Message, models.Request)
    }
    assert wire == {type(m) for m in SAMPLES}


@pytest.mark.parametrize("content_type", [MSGPACK, JSON])
@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: models.Message, content_type: str) -> None:
    body, headers = encode(message, content_type)
    assert headers[CONTENT_TYPE] == content_type
    assert decode("kodo.test", body, headers, type(message)) == message
    # Decoders also cope with a foreign publisher that sent no Content-Type header.
    assert decode("kodo.test", body, None, type(message)) == message


def test_json_is_readable_and_carries_version() -> None:
    body, _ = encode(SAMPLES[14], JSON)
    parsed = json.loads(body)
    assert parsed["v"] == models.SCHEMA_VERSION
    assert parsed["kind"] == "markdown"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    inputs=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    ct=st.sampled_from([MSGPACK, JSON]),
)
def test_launch_inputs_round_trip_any_json_data(inputs: dict[str, Any], ct: str) -> None:
    msg = models.LaunchRequest(inputs=inputs)
    body, headers = encode(msg, ct)
    assert decode("kodo.launch.u.n.f", body, headers, models.LaunchRequest).inputs == inputs


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=200), ct=st.sampled_from([MSGPACK, JSON, None, "text/plain"]))
def test_garbage_gives_the_typed_error_or_a_valid_model(garbage: bytes, ct: str | None) -> None:
    headers = {CONTENT_TYPE: ct} if ct else None
    try:
        decode("kodo.node.x.heartbeat", garbage, headers, models.Heartbeat)
    except WireError as exc:
        assert exc.subject == "kodo.node.x.heartbeat"
        assert "kodo.node.x.heartbeat" in str(exc)


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"\xc1\xc1", {CONTENT_TYPE: MSGPACK}, "undecodable"),
        (b"{not json", {CONTENT_TYPE: JSON}, "not a valid Heartbeat"),
        (msgpack.packb({"node": 5}), {CONTENT_TYPE: MSGPACK}, "node"),
        (msgpack.packb([1, 2]), {CONTENT_TYPE: MSGPACK}, "not a valid Heartbeat"),
        (b"hello", {CONTENT_TYPE: "text/plain"}, "unsupported content type"),
        (json.dumps({"node": "x", "running": "many"}).encode(), {CONTENT_TYPE: JSON}, "running"),
    ],
)
def test_bad_messages_name_subject_and_reason(
    body: bytes, headers: dict[str, str], reason: str
) -> None:
    with pytest.raises(WireError) as info:
        decode("kodo.node.x.heartbeat", body, headers, models.Heartbeat)
    assert "kodo.node.x.heartbeat" in str(info.value)
    assert reason in info.value.reason
    # never a bare msgpack/json/pydantic exception chained underneath
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


class FakeMsg(BaseModel):
    subject: str = "s"
    data: bytes = b""
    headers: dict[str, str] | None = None


def test_reply_mirrors_request_content_type() -> None:
    assert reply_content_type(FakeMsg(data=b"", headers=None)) == JSON
    assert reply_content_type(FakeMsg(data=b"{}", headers={CONTENT_TYPE: JSON})) == JSON
    assert reply_content_type(FakeMsg(data=b"\x80", headers={CONTENT_TYPE: MSGPACK})) == MSGPACK
    assert reply_content_type(FakeMsg(data=b'{"q": "x"}')) == JSON


def test_error_replies_become_typed_errors() -> None:
    body, headers = encode_error("invalid_inputs", "bad", [FieldProblem("a", "too big")], JSON)
    assert headers[ERROR_HEADER] == "invalid_inputs"
    with pytest.raises(InputsInvalid) as info:
        decode_reply(FakeMsg(data=body, headers=headers), models.LaunchReply)
    assert info.value.problems == [FieldProblem("a", "too big")]
    body, headers = encode_error("busy", "queue full")
    with pytest.raises(Busy):
        decode_reply(FakeMsg(data=body, headers=headers), models.LaunchReply)
    body, headers = encode_error("forbidden", "no")
    with pytest.raises(RemoteError) as err:
        decode_reply(FakeMsg(data=body, headers=headers), models.LaunchReply)
    assert err.value.kind == "forbidden"
