"""The wire contract: schemas generated and current, strict requests, replies in the requester's
content type, and one table of error kinds that matches the code.

The request/reply tests run a real node (a `KodoService`, in this process, on the session's
nats-server) and speak to it with raw NATS messages, as a client in another language would. A
refused launch never reaches Ray, so only the `tracer.ask` test needs it.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import msgpack
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from kodo_bus import models, schemas, subjects
from kodo_bus.bus import connect
from kodo_bus.client import Client
from kodo_bus.codec import CONTENT_TYPE, ERROR_HEADER, JSON, MSGPACK, decode, reply_content_type
from kodo_bus.config import ConnectSettings, FlowDecl, ServiceSettings
from kodo_bus.errors import InputsInvalid, WireError
from kodo_bus.flow_ref import Flow
from kodo_bus.flows import FlowSpec, flow, load_flows, spec_of
from kodo_bus.lifecycle import envelope
from kodo_bus.server import NatsServer
from kodo_bus.service import KodoService
from kodo_bus.tracer import Emitter, Tracer

from . import test_execution_support as support
from .conftest import KODO_BUS, REPO

make_node = support.make_node
DOC = (REPO / "subjects.md").read_text()


# -- flows the test node serves ------------------------------------------------------------------
class GreetInputs(BaseModel):
    name: str = Field(description="Who to greet", max_length=100)
    times: int = Field(1, ge=1, le=5)


class OpenInputs(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str


class AliasedInputs(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    source: str = Field(alias="from")
    target: str = Field(validation_alias=AliasChoices("to", "target"))


@flow(summary="greets")
async def greet(inputs: GreetInputs, tracer: Tracer) -> str:
    return f"hello {inputs.name}"


@flow(summary="takes extra inputs")
async def open_flow(inputs: OpenInputs, tracer: Tracer) -> dict[str, Any]:
    return inputs.model_dump()


@flow(summary="aliased inputs")
async def aliased(inputs: AliasedInputs, tracer: Tracer) -> str:
    return inputs.source


def _spec(func: Any) -> FlowSpec:
    spec = spec_of(func)
    assert spec is not None
    return spec


# -- schemas -------------------------------------------------------------------------------------
def test_committed_schemas_and_wire_doc_are_generated_from_the_models() -> None:
    assert schemas.stale(REPO) == [], "run: python -m kodo_bus.schemas"


def test_a_model_change_without_regeneration_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    class Heartbeat(models.Heartbeat):
        load: float = 0.0

    real = schemas.specs
    changed = [
        replace(s, schema=Heartbeat.model_json_schema) if s.name == "Heartbeat" else s
        for s in real()
    ]
    monkeypatch.setattr(schemas, "specs", lambda: changed)
    assert schemas.stale(REPO) == ["schemas/Heartbeat.json", schemas.WIRE_DOC]


def test_check_names_missing_changed_and_stray_files(tmp_path: Path) -> None:
    assert schemas.main(["--root", str(tmp_path)]) == 0
    assert schemas.main(["--root", str(tmp_path), "--check"]) == 0
    (tmp_path / "schemas/Ack.json").write_text("{}")
    (tmp_path / "schemas/Event.json").unlink()
    (tmp_path / "schemas/Gone.json").write_text("{}")
    assert schemas.stale(tmp_path) == [
        "schemas/Ack.json",
        "schemas/Event.json",
        "schemas/Gone.json",
    ]
    assert schemas.main(["--root", str(tmp_path), "--check"]) == 1
    schemas.write(tmp_path)
    assert schemas.stale(tmp_path) == []


def _schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REPO / "schemas" / f"{name}.json").read_text())
    return data


def _files() -> list[str]:
    return sorted(p.stem for p in (REPO / "schemas").glob("*.json"))


@pytest.mark.parametrize("name", _files())
def test_each_schema_is_2020_12_versioned_and_linked_from_subjects_md(name: str) -> None:
    schema = _schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == f"urn:kodo-bus:v{models.SCHEMA_VERSION}:{name}"
    assert f"[`{name}`](schemas/{name}.json)" in DOC, f"subjects.md does not link {name}"


def test_every_payload_subjects_md_names_has_a_schema() -> None:
    linked = set(re.findall(r"\]\(schemas/(\w+)\.json\)", DOC))
    assert linked == set(_files())
    messages = {
        cls.__name__
        for cls in vars(models).values()
        if isinstance(cls, type)
        and issubclass(cls, models.Message)
        and cls not in (models.Message, models.Request)
    }
    assert messages <= set(_files())
    assert "msgpack | [`JobBatch`]" not in DOC and "msgpack | [`OutcomeBatch`]" not in DOC


def _valid(name: str, data: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(_schema(name)).is_valid(data))


def test_the_bytes_on_the_wire_match_the_schemas() -> None:
    """What the code really sends (an event's pre-serialised envelope, a burst, a launch),
    checked against the committed schemas: `ts` is a number, an absent `parent` is allowed."""
    sent: list[bytes] = []
    record = models.ExecutionRecord(
        execution="e" * 32,
        flow="f",
        node="n",
        launcher="local",
        status="starting",
        created=1.0,
        updated=1.0,
        root="e" * 32,
    )
    emitter = Emitter(envelope(record), 0, lambda subject, body, headers: sent.append(body))
    emitter.emit("status", {"status": "starting"})
    emitter.emit("markdown", "# hi")
    events = [json.loads(body) for body in sent]
    assert all(isinstance(e["ts"], float) and "parent" not in e for e in events)
    assert all(_valid("Event", e) for e in events)
    assert _valid("EventBurst", events)
    assert not _valid("EventBurst", [])
    assert not _valid("Event", {**events[0], "ts": "2026-01-01T00:00:00Z"})
    launch = json.loads(models.LaunchRequest(inputs={"name": "Ada"}).model_dump_json())
    assert _valid("LaunchRequest", launch)


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("LaunchRequest", {"name": "bare"}),
        ("LaunchRequest", {"inputs": {}, "colour": "red"}),
        ("LaunchRequest", {"inputs": {}, "v": 99}),
        ("FlowsQuery", {"query": "x"}),
        ("Empty", {"x": 1}),
        ("AnswerRequest", {"data": 1, "answer": 2}),
    ],
)
def test_schema_and_decoder_refuse_the_same_request_bodies(name: str, body: Any) -> None:
    assert not _valid(name, body)
    with pytest.raises(WireError):
        decode("s", json.dumps(body).encode(), None, getattr(models, name))


def test_broadcast_and_stored_messages_keep_ignoring_unknown_fields() -> None:
    event = {"execution": "e", "seq": 1, "ts": 1.5, "kind": "status", "node": "n", "flow": "f"}
    event |= {"launcher": "u", "data": {"status": "running"}, "added_later": True, "v": 2}
    assert _valid("Event", event)
    assert decode("s", json.dumps(event).encode(), None, models.Event).seq == 1
    beat = msgpack.packb({"node": "n1", "ts": 2.0, "added_later": [1]})
    assert decode("s", beat, None, models.Heartbeat).node == "n1"


# -- error kinds ---------------------------------------------------------------------------------
def _kinds_sent_by_the_code() -> set[str]:
    """Every kind a `respond_error(msg, KIND, ...)` or `encode_error(KIND, ...)` can send."""
    wire_errors: list[type[WireError]] = [WireError, *WireError.__subclasses__()]
    from_exc = {cls.kind for cls in wire_errors}
    kinds: set[str] = set()
    for path in (REPO / "kodo_bus").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            position = {"respond_error": 1, "encode_error": 0}.get(name)
            if position is None or len(node.args) <= position:
                continue
            arg = node.args[position]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                kinds.add(arg.value)
            elif isinstance(arg, ast.Attribute) and arg.attr == "kind":
                kinds |= from_exc
            elif not (isinstance(arg, ast.Name) and arg.id == "kind"):  # encode_error's own
                raise AssertionError(f"{path}:{node.lineno}: a kind this test cannot read")
    return kinds


def _documented_kinds() -> list[str]:
    section = DOC.split("## Error kinds", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)


def test_error_kinds_table_matches_the_models_and_the_code() -> None:
    documented = _documented_kinds()
    assert len(documented) == len(set(documented))
    assert set(documented) == set(models.ERROR_KINDS)
    assert _kinds_sent_by_the_code() == set(models.ERROR_KINDS)
    doc = models.ErrorReply.model_fields["error"].description or ""
    assert all(kind in doc for kind in models.ERROR_KINDS)
    assert "forbidden" not in doc  # nothing sends it: NATS permissions refuse instead


# -- content types -------------------------------------------------------------------------------
class _Msg(BaseModel):
    subject: str = "s"
    data: bytes = b""
    headers: dict[str, str] | None = None


@pytest.mark.parametrize(
    ("data", "headers", "expected"),
    [
        (b"", None, JSON),
        (b"", {CONTENT_TYPE: MSGPACK}, MSGPACK),
        (b"hello", {CONTENT_TYPE: "text/plain"}, JSON),
        (b"\x80", {CONTENT_TYPE: "text/plain"}, JSON),
        (b"hello", None, JSON),
        (b"\x81\xa1v\x01", None, MSGPACK),
        (b"{}", None, JSON),
        (b"\x80", {CONTENT_TYPE: "application/msgpack; x=y"}, MSGPACK),
        (b"{}", {CONTENT_TYPE: "application/json"}, JSON),
    ],
)
def test_reply_content_type(data: bytes, headers: dict[str, str] | None, expected: str) -> None:
    assert reply_content_type(_Msg(data=data, headers=headers)) == expected


# -- flow inputs: one rule on the node and on the client -----------------------------------------
def _client_flow(spec: FlowSpec) -> Flow:
    item = models.FlowItem(node="n1", **spec.info().model_dump())
    return Flow(None, item)  # type: ignore[arg-type]  # validate() never touches the client


def _problems(call: Any, data: dict[str, Any]) -> list[tuple[str, str]] | None:
    try:
        call(data)
    except InputsInvalid as exc:
        return [(p.field, p.message) for p in exc.problems]
    return None


@pytest.mark.parametrize(
    ("func", "data", "refused"),
    [
        (greet, {"name": "Ada"}, []),
        (greet, {"name": "Ada", "colour": "red"}, ["colour"]),
        (greet, {"nmae": "Ada"}, ["nmae", "name"]),
        (greet, {"name": "Ada", "times": 9, "x": 1}, ["x", "times"]),
        (open_flow, {"name": "Ada", "colour": "red"}, []),
        (aliased, {"from": "a", "to": "b"}, []),
        (aliased, {"from": "a", "to": "b", "too": 1}, ["too"]),
    ],
)
def test_unknown_inputs_refused_alike_by_node_and_client(
    func: Any, data: dict[str, Any], refused: list[str]
) -> None:
    spec = _spec(func)
    node = _problems(spec.validate, data)
    client = _problems(_client_flow(spec).validate, data)
    assert node == client
    assert [field for field, _ in node or []] == refused


def test_alternative_aliases_are_taken_by_the_node_only() -> None:
    """The schema names one key per field (the alias); the node also takes the alternatives a
    Python model declares (`AliasChoices`, names with `populate_by_name`). A client that knows
    only the schema is stricter, never looser, and the node stays the judge."""
    spec = _spec(aliased)
    assert _problems(spec.validate, {"source": "a", "target": "b"}) is None
    client = _problems(_client_flow(spec).validate, {"from": "a", "target": "b"})
    assert client is not None and client[0][0] == "target"


def test_unknown_input_message_names_it_and_suggests() -> None:
    spec = _spec(greet)
    assert spec.info().input_schema["additionalProperties"] is False
    assert _spec(open_flow).info().input_schema["additionalProperties"] is True
    problems = _problems(spec.validate, {"nmae": "Ada"})
    assert problems is not None and "did you mean 'name'?" in problems[0][1]
    problems = _problems(spec.validate, {"name": "Ada", "colour": "red"})
    assert problems == [
        ("colour", "the flow has no input 'colour'; did you mean one of name, times?")
    ]


# -- requests on a real node ---------------------------------------------------------------------
NODE_FLOWS = "tests.test_wire_contract"


@pytest.fixture
async def service(nats_server: NatsServer) -> AsyncIterator[KodoService]:
    """A node serving this module's flows (no launch here reaches Ray)."""
    node = f"wire-{secrets.token_hex(4)}"
    settings = ServiceSettings(id=node, role="node", nats=[nats_server.url], heartbeat=0.5)
    svc = KodoService(settings, load_flows([FlowDecl(module=NODE_FLOWS)]))
    await svc.start()
    try:
        yield svc
    finally:
        await asyncio.wait_for(svc.stop(), 30)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await connect(ConnectSettings(nats=[nats_server.url]))
    try:
        yield conn
    finally:
        await conn.close()


async def _raw(
    nc: NATS, subject: str, body: bytes, content_type: str | None = JSON
) -> tuple[Msg, Any]:
    """Send bytes as a foreign client would; the reply and its body, parsed as its header says."""
    headers = {CONTENT_TYPE: content_type} if content_type else None
    reply = await nc.request(subject, body, timeout=10, headers=headers)
    assert reply.headers is not None
    if reply.headers[CONTENT_TYPE] == JSON:
        return reply, json.loads(reply.data)
    assert reply.headers[CONTENT_TYPE] == MSGPACK
    return reply, msgpack.unpackb(reply.data)


def _error(reply: Msg, body: Any, kind: str) -> str:
    assert reply.headers is not None and reply.headers.get(ERROR_HEADER) == kind, body
    assert body["error"] == kind
    assert jsonschema.Draft202012Validator(_schema("ErrorReply")).is_valid(body)
    return str(body["message"])


def _launch_subject(svc: KodoService, flow_name: str = "greet") -> str:
    return subjects.launch("local", svc.settings.id, flow_name)


async def _no_record(nc: NATS, execution: str) -> None:
    kv = await nc.jetstream().key_value(subjects.BUCKET_EXECUTIONS)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get(subjects.record_key("local", execution))


async def test_launch_body_not_wrapped_is_refused_naming_the_fields(
    service: KodoService, nc: NATS
) -> None:
    reply, body = await _raw(nc, _launch_subject(service), b'{"name": "bare"}')
    message = _error(reply, body, "invalid_request")
    assert "unknown field(s) name" in message and "inputs: Field required" in message


async def test_unknown_top_level_key_is_refused_and_creates_nothing(
    service: KodoService, nc: NATS
) -> None:
    execution = secrets.token_hex(16)
    launch = {"inputs": {"name": "Ada"}, "execution": execution, "colour": "red", "prio": 1}
    reply, body = await _raw(nc, _launch_subject(service), json.dumps(launch).encode())
    assert "unknown field(s) colour, prio" in _error(reply, body, "invalid_request")
    await _no_record(nc, execution)


@pytest.mark.parametrize("v", [99, 0, 2])
async def test_unsupported_version_has_its_own_kind(service: KodoService, nc: NATS, v: int) -> None:
    execution = secrets.token_hex(16)
    launch = {"v": v, "inputs": {"name": "Ada"}, "execution": execution}
    reply, body = await _raw(nc, _launch_subject(service), msgpack.packb(launch), MSGPACK)
    assert f"schema version {v} is not supported" in _error(reply, body, "unsupported_version")
    await _no_record(nc, execution)


async def test_unknown_input_is_invalid_inputs_naming_it(service: KodoService, nc: NATS) -> None:
    execution = secrets.token_hex(16)
    launch = {"inputs": {"name": "Ada", "colour": "red"}, "execution": execution}
    reply, body = await _raw(nc, _launch_subject(service), json.dumps(launch).encode())
    _error(reply, body, "invalid_inputs")
    assert [f["field"] for f in body["fields"]] == ["colour"]
    assert "did you mean" in body["fields"][0]["message"]
    await _no_record(nc, execution)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"hello", "text/plain"), (b"", None), (b"\x00\x01", None), (b"{not json", JSON)],
)
async def test_unreadable_requests_get_a_json_error_reply(
    service: KodoService, nc: NATS, body: bytes, content_type: str | None
) -> None:
    for subject in (
        _launch_subject(service),
        subjects.svc_flows(service.settings.id),
        subjects.exec_cancel("local", secrets.token_hex(16)),
    ):
        if subject.startswith(subjects.ROOT + ".exec") and not body:
            continue  # an empty cancel is a valid cancel (of an unknown execution: silence)
        if subject.startswith(subjects.ROOT + ".svc") and not body:
            continue  # an empty query is a valid query
        reply, parsed = await _raw(nc, subject, body, content_type)
        assert reply.headers is not None and reply.headers[CONTENT_TYPE] == JSON
        _error(reply, parsed, "invalid_request")


async def test_replies_use_the_requester_content_type(service: KodoService, nc: NATS) -> None:
    info = subjects.svc_info(service.settings.id)
    reply, body = await _raw(nc, info, msgpack.packb({}), MSGPACK)
    assert reply.headers is not None and reply.headers[CONTENT_TYPE] == MSGPACK
    assert body["id"] == service.settings.id
    reply, body = await _raw(nc, info, b"{}", JSON)
    assert body["id"] == service.settings.id
    reply, body = await _raw(nc, info, b"", None)  # unknown: JSON
    assert reply.headers is not None and reply.headers[CONTENT_TYPE] == JSON
    assert jsonschema.Draft202012Validator(_schema("ServiceInfo")).is_valid(body)
    flows = subjects.svc_flows(service.settings.id)
    reply, body = await _raw(nc, flows, b"", None)
    assert reply.headers is not None and reply.headers[CONTENT_TYPE] == JSON
    assert {item["name"] for item in body["items"]} == {"greet", "open_flow", "aliased"}
    reply, body = await _raw(nc, flows, b"", "text/plain")  # a type kodo-bus does not read
    _error(reply, body, "invalid_request")


@pytest.mark.parametrize(
    "case",
    [
        ("flows", {"query": "greet"}, "invalid_request", "query"),
        ("flows", {"q": "greet", "v": 7}, "unsupported_version", "7"),
        ("info", {"verbose": True}, "invalid_request", "verbose"),
        ("nodes", {"v": 3}, "unsupported_version", "3"),
        ("catalog", {"node": "x"}, "invalid_request", "node"),
        ("disconnect", {"force": True}, "invalid_request", "force"),
    ],
)
async def test_service_requests_are_strict(
    service: KodoService, nc: NATS, case: tuple[str, dict[str, Any], str, str]
) -> None:
    suffix, body, kind, named = case
    subject = getattr(subjects, f"svc_{suffix}")(service.settings.id)
    reply, parsed = await _raw(nc, subject, json.dumps(body).encode())
    assert named in _error(reply, parsed, kind)


async def test_cancel_body_is_strict(service: KodoService, nc: NATS) -> None:
    subject = subjects.exec_cancel("local", secrets.token_hex(16))
    reply, body = await _raw(nc, subject, b'{"reason": "x"}')
    assert "reason" in _error(reply, body, "invalid_request")
    reply, body = await _raw(nc, subject, b'{"v": 5}')
    _error(reply, body, "unsupported_version")


async def test_the_sdk_refuses_unknown_inputs_before_sending(
    service: KodoService, nats_server: NatsServer
) -> None:
    async with Client(nats_server.url) as kb:
        target = await kb.flow("greet", via=service.settings.id)
        with pytest.raises(InputsInvalid) as info:
            await target.launch({"name": "Ada", "colour": "red"})
    assert [p.field for p in info.value.problems] == ["colour"]


async def _cli(url: str, *args: str) -> tuple[int, str]:
    env = {**os.environ, "KODO_NATS": url, "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        *KODO_BUS,
        *args,
        env=env,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


async def test_cli_launch_with_an_unknown_input_exits_2_with_a_suggestion(
    service: KodoService, nats_server: NatsServer
) -> None:
    node = service.settings.id
    code, text = await _cli(nats_server.url, "launch", "greet", "--via", node, "-i", "colour=red")
    assert code == 2, text
    assert "colour" in text and "did you mean one of name, times?" in text
    code, text = await _cli(nats_server.url, "launch", "greet", "--via", node, "-i", "nmae=Ada")
    assert code == 2, text
    assert "nmae" in text and "did you mean 'name'?" in text


# -- answers (the worker answers: Ray) -----------------------------------------------------------
@pytest.mark.ray
async def test_answer_requests_are_strict(make_node: support.NodeFactory) -> None:
    node = await make_node(max_running=1)
    reply = await node.launch("asker", {})
    sub = await node.nc.subscribe(subjects.events("local", reply.execution, "lock"))
    await sub.next_msg(timeout=30)
    answer = subjects.exec_answer("local", reply.execution)
    good = {"colour": "red", "count": 2}
    raw, body = await _raw(node.nc, answer, json.dumps({"data": good, "lock": "x"}).encode())
    assert "lock" in _error(raw, body, "invalid_request")
    raw, body = await _raw(node.nc, answer, json.dumps({"data": good, "v": 9}).encode())
    _error(raw, body, "unsupported_version")
    raw, body = await _raw(node.nc, answer, b"nope", "text/plain")
    _error(raw, body, "invalid_request")
    raw, body = await _raw(node.nc, answer, json.dumps({"data": good}).encode())
    assert raw.headers is not None and ERROR_HEADER not in raw.headers and body["ok"] is True
    events = await support.read_events(node.js, reply.execution)
    assert events[-2].data == good  # the refused bodies were not taken as the answer
