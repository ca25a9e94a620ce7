"""The invariant checker itself, on hand-made executions published to a real nats-server: each
broken rule is reported (and a well-formed execution is not)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from kodo_bus import subjects
from kodo_bus.bus import connect, ensure_execution_storage
from kodo_bus.config import ConnectSettings
from kodo_bus.executions import create_record, event_message
from kodo_bus.models import Event, ExecutionRecord
from kodo_bus.server import NatsServer

from .invariants import Watch, check_executions

NODE, FLOW = "inv-node", "inv-flow"


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[tuple[NATS, JetStreamContext, KeyValue]]:
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    try:
        js = nc.jetstream()
        kv = await ensure_execution_storage(js, max_age=3600)
        yield nc, js, kv
    finally:
        await nc.close()


def _event(execution: str, seq: int, kind: str, data: Any = None, **over: Any) -> Event:
    fields: dict[str, Any] = {"node": NODE, "flow": FLOW, "launcher": "local", **over}
    return Event(execution=execution, seq=seq, ts=time.time(), kind=kind, data=data, **fields)


def _story(execution: str, ending: str = "finished") -> list[Event]:
    """A well-formed execution: meta, inputs, starting, running, a text, final/error, status."""
    last = ("final", 7) if ending == "finished" else ("error", {"type": "X", "message": ""})
    return [
        _event(execution, 1, "meta", {}),
        _event(execution, 2, "inputs", {}),
        _event(execution, 3, "status", {"status": "starting"}),
        _event(execution, 4, "status", {"status": "running"}),
        _event(execution, 5, "text", "hello"),
        _event(execution, 6, *last),
        _event(execution, 7, "status", {"status": ending}),
    ]


async def _publish(js: JetStreamContext, events: Sequence[Event], dedupe: bool = True) -> None:
    for event in events:
        subject, body, headers = event_message(event)
        if not dedupe:  # a copy under another id: JetStream stores it again
            headers["Nats-Msg-Id"] += f"-copy{os.urandom(4).hex()}"
        await js.publish(subject, body, headers=headers)


async def _record(kv: KeyValue, execution: str, status: str, last_seq: int, **over: Any) -> None:
    now = time.time()
    fields: dict[str, Any] = {"node": NODE, "flow": FLOW, "launcher": "local", **over}
    record = ExecutionRecord(
        execution=execution,
        status=status,
        created=now,
        updated=now,
        last_seq=last_seq,
        **fields,
    )
    await create_record(kv, record)


def _new() -> str:
    return os.urandom(16).hex()


async def _rules(js: JetStreamContext, execution: str, **kw: Any) -> set[str]:
    report = await check_executions(js, executions=[execution], **kw)
    assert report.checked == [execution]
    return report.rules()


async def test_a_well_formed_execution_passes(bus: tuple[NATS, JetStreamContext, KeyValue]) -> None:
    _, js, kv = bus
    ok, failed = _new(), _new()
    await _publish(js, _story(ok))
    await _record(kv, ok, "finished", 7)
    # a burst: output events 5..7 in one message holding an array
    story = _story(failed, "error")
    burst = [_event(failed, s, "text", str(s)) for s in (5, 6, 7)]
    body = ("[" + ",".join(e.model_dump_json(exclude_none=True) for e in burst) + "]").encode()
    await _publish(js, story[:4])
    await js.publish(subjects.events("local", failed, "text"), body)
    await _publish(
        js, [e.model_copy(update={"seq": e.seq + 2}) for e in story[5:]]
    )  # error 8, status 9
    await _record(kv, failed, "error", 9)
    report = await check_executions(js, executions=[ok, failed])
    report.assert_ok()
    assert report.checked == [ok, failed]


async def test_gap(bus: tuple[NATS, JetStreamContext, KeyValue]) -> None:
    _, js, kv = bus
    ex = _new()
    story = _story(ex)
    await _publish(js, story[:3] + story[4:])  # seq 4 never stored
    await _record(kv, ex, "finished", 7)
    report = await check_executions(js, executions=[ex])
    assert report.rules() == {"gap"}, report
    assert "missing seqs 4 of 1..7" in str(report)


async def test_duplicate_terminal_and_events_after_it(
    bus: tuple[NATS, JetStreamContext, KeyValue],
) -> None:
    """Two parties ending one execution: a `lost` after `finished` (issue 14, finding 3)."""
    _, js, kv = bus
    ex = _new()
    await _publish(js, _story(ex))
    lost = [
        _event(ex, 8, "error", {"type": "ExecutionLost", "message": "", "traceback": ""}),
        _event(ex, 9, "status", {"status": "lost"}),
    ]
    await _publish(js, lost)
    await _record(kv, ex, "finished", 7)
    rules = await _rules(js, ex)
    assert rules == {"terminals", "after-terminal", "ending"}


async def test_duplicate_seq(bus: tuple[NATS, JetStreamContext, KeyValue]) -> None:
    _, js, kv = bus
    ex = _new()
    story = _story(ex)
    await _publish(js, story)
    await _publish(js, [story[4]], dedupe=False)  # seq 5 stored twice
    await _record(kv, ex, "finished", 7)
    assert await _rules(js, ex) == {"duplicate"}  # by seq, nothing comes after the end


async def test_record_mismatch(bus: tuple[NATS, JetStreamContext, KeyValue]) -> None:
    _, js, kv = bus
    status, last_seq, node = _new(), _new(), _new()
    for ex in (status, last_seq, node):
        await _publish(js, _story(ex))
    await _record(kv, status, "lost", 7)
    await _record(kv, last_seq, "finished", 5)
    await _record(kv, node, "finished", 7, node="elsewhere")
    report = await check_executions(js, executions=[status, last_seq, node])
    found = {e: {v.rule for v in vs} for e, vs in report.by_execution().items()}
    assert found == {status: {"record"}, last_seq: {"record"}, node: {"envelope"}}, report
    text = str(report)
    assert "record status 'lost', terminal event says 'finished'" in text
    assert "record last_seq 5, terminal event seq 7" in text
    assert "node 'inv-node' != record's 'elsewhere'" in text


async def test_missing_record_and_record_without_terminal_event(
    bus: tuple[NATS, JetStreamContext, KeyValue],
) -> None:
    """No record at all; and a record ended `lost` whose events never say so (finding 4)."""
    _, js, kv = bus
    no_record, no_terminal = _new(), _new()
    await _publish(js, _story(no_record))
    await _publish(js, _story(no_terminal)[:5])
    await _record(kv, no_terminal, "lost", 7)
    assert await _rules(js, no_record) == {"record"}
    assert await _rules(js, no_terminal) == {"no-terminal"}


async def test_garbage_message_is_reported_not_crashed_on(
    bus: tuple[NATS, JetStreamContext, KeyValue],
) -> None:
    _, js, kv = bus
    ex = _new()
    story = _story(ex)
    await _publish(js, story[:4])
    first = await js.publish(subjects.events("local", ex, "text"), b"\xc1 not an event")
    second = await js.publish(subjects.events("local", ex, "status"), b'{"seq": "x"}')
    await _publish(js, story[4:])
    await _record(kv, ex, "finished", 7)
    report = await check_executions(js, executions=[ex])
    assert report.rules() == {"undecodable"}, report
    assert {v.stream_seq for v in report.violations} == {first.seq, second.seq}
    # garbage a test stored on purpose is no violation when it says so
    assert (await check_executions(js, executions=[ex], injected={first.seq, second.seq})).ok
    assert not (await check_executions(js, executions=[ex], injected={first.seq})).ok


async def test_event_after_terminal(bus: tuple[NATS, JetStreamContext, KeyValue]) -> None:
    _, js, kv = bus
    ex = _new()
    await _publish(js, [*_story(ex), _event(ex, 8, "log", "late")])
    await _record(kv, ex, "finished", 7)
    report = await check_executions(js, executions=[ex])
    assert report.rules() == {"after-terminal"}
    assert "seq 8 log" in str(report)


async def test_envelope_disagrees_with_its_subject(
    bus: tuple[NATS, JetStreamContext, KeyValue],
) -> None:
    _, js, kv = bus
    ex = _new()
    story = _story(ex)
    forged = story[4].model_copy(update={"launcher": "mallory"})
    await _publish(js, story[:4])
    body = forged.model_dump_json(exclude_none=True).encode()
    await js.publish(subjects.events("local", ex, "text"), body)  # mallory's event, local's subject
    await _publish(js, story[5:])
    await _record(kv, ex, "finished", 7)
    report = await check_executions(js, executions=[ex])
    assert report.rules() == {"envelope"}, report
    assert "launcher 'mallory' (subject says 'local')" in str(report)


async def test_running_is_a_violation_unless_allowed(
    bus: tuple[NATS, JetStreamContext, KeyValue],
) -> None:
    _, js, kv = bus
    ex = _new()
    await _publish(js, _story(ex)[:4])
    await _record(kv, ex, "running", 0)
    assert await _rules(js, ex) == {"not-ended"}
    report = await check_executions(js, executions=[ex], allow_running=True)
    assert report.ok and report.running == [ex]


async def test_a_whole_bus_and_what_a_test_added(fresh_server: NatsServer) -> None:
    """Without `executions` every execution of the bus is checked (records without events
    too); a `Watch` names only what was added after it started; nothing is left on the
    server (no consumer)."""
    nc = await connect(ConnectSettings(nats=[fresh_server.url]))
    try:
        js = nc.jetstream()
        kv = await ensure_execution_storage(js, max_age=3600)
        before = _new()
        await _publish(js, _story(before))
        await _record(kv, before, "finished", 7)
        watch = await Watch.start(fresh_server.url)
        try:
            good, lonely = _new(), _new()
            await _publish(js, _story(good))
            await _record(kv, good, "finished", 7)
            await _record(kv, lonely, "pending", 0)  # a record whose events never came
            await _publish(js, [_event(before, 8, "log", "late")])  # an older one, touched
            assert sorted(await watch.new_executions()) == sorted([good, lonely])
            report = await watch.check(within=0)
            assert report.rules() == {"not-ended"}
            assert [v.execution for v in report.violations] == [lonely]
        finally:
            await watch.close()
        whole = await check_executions(js)
        assert sorted(whole.checked) == sorted([before, good, lonely])
        assert {v.execution: v.rule for v in whole.violations} == {
            before: "after-terminal",
            lonely: "not-ended",
        }
        info = await js.stream_info(subjects.STREAM_EVENTS)
        assert info.state.consumer_count == 0
    finally:
        await nc.close()
