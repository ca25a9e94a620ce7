"""`Execution.delete()` on the default profile: through a node when one is on the bus (the
request `kodo.exec.<user>.<execution>.delete`), by the SDK itself when none answers (no
responders). Either way nothing of the execution is left: no event, no record, no index entry,
no object, not even the metadata message nats-py's own delete leaves behind.
"""

from __future__ import annotations

import os
import time

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from kodo_bus import files, subjects
from kodo_bus.bus import ensure_execution_storage, jetstream, request
from kodo_bus.client import Client
from kodo_bus.config import ServiceSettings
from kodo_bus.errors import ExecutionNotEnded, ExecutionNotFound, RemoteError
from kodo_bus.executions import create_record, event_message
from kodo_bus.models import TERMINAL_STATUSES, Ack, Empty, Event, ExecutionRecord
from kodo_bus.runner import Runner
from kodo_bus.server import NatsServer

USER = subjects.DEFAULT_USER
RECORDS = subjects.BUCKET_EXECUTIONS


async def an_execution(
    js: JetStreamContext, status: str = "finished", ending_stored: bool = True
) -> str:
    """An execution as a node leaves it: record and index entry, events, an input and an
    output file (one of them deleted the nats-py way, which leaves its metadata behind)."""
    kv = await ensure_execution_storage(js, max_age=ServiceSettings().events_max_age)
    execution = os.urandom(16).hex()
    BEFORE[execution] = await every_subject(js)
    now = time.time()
    await create_record(
        kv,
        ExecutionRecord(
            execution=execution, flow="f", node="n1", launcher=USER, status=status,
            created=now, updated=now,
        ),
    )  # fmt: skip
    trail: list[tuple[str, dict[str, str]]] = [("meta", {}), ("inputs", {}), ("final", {})]
    if status in TERMINAL_STATUSES and ending_stored:  # (else a delete waits for it)
        trail.append(("status", {"status": status}))
    for seq, (kind, data) in enumerate(trail, start=1):
        event = Event(
            execution=execution, seq=seq, ts=now, kind=kind, node="n1", flow="f",
            launcher=USER, data=data,
        )  # fmt: skip
        subject, body, headers = event_message(event)
        await js.publish(subject, body, headers=headers)
    await files.upload(js, USER, subjects.file_name(execution, "in", "data/x.csv"), b"a,1\n")
    out = subjects.file_name(execution, "out", "chart.svg")
    await files.upload(js, USER, out, os.urandom(3 * files.CHUNK))
    gone = subjects.file_name(execution, "out", "old.txt")
    await files.upload(js, USER, gone, b"old")
    await (await files.bucket(js, USER)).delete(gone)
    return execution


async def stored_subjects(js: JetStreamContext, execution: str) -> set[str]:
    """Every stored subject of the execution: its events, its record and index entry, each
    object's metadata (a deleted one's too) and chunks — what the stores hold that they did
    not before it (`an_execution`)."""
    return await left_of(js, execution, await every_subject(js) - BEFORE[execution])


BEFORE: dict[str, set[str]] = {}
"""Subjects the stores held before each execution was made."""


async def every_subject(js: JetStreamContext) -> set[str]:
    found: set[str] = set()
    for stream in (
        subjects.STREAM_EVENTS,
        subjects.kv_stream(RECORDS),
        subjects.obj_stream(subjects.bucket_files(USER)),
    ):
        try:
            info = await js.stream_info(stream, subjects_filter=">")
        except nats.js.errors.NotFoundError:
            continue
        found |= set(info.state.subjects or {})
    return found


async def left_of(js: JetStreamContext, execution: str, own: set[str]) -> set[str]:
    """Which of the execution's subjects (`own`, and any naming it) the stores still hold."""
    found: set[str] = set()
    for stream, pattern in (
        (subjects.STREAM_EVENTS, subjects.events(USER, execution, "*")),
        (subjects.kv_stream(RECORDS), subjects.kv_subject(RECORDS, ">")),
        (
            subjects.obj_stream(subjects.bucket_files(USER)),
            subjects.obj_subject(subjects.bucket_files(USER), ">"),
        ),
    ):
        info = await js.stream_info(stream, subjects_filter=pattern)
        found |= {s for s in (info.state.subjects or {}) if execution in s or s in own}
    # A deleted execution's record key holds an empty value for a while (`files._hold_the_id`).
    record = subjects.kv_subject(RECORDS, subjects.record_key(USER, execution))
    stream = subjects.kv_stream(RECORDS)
    return {s for s in found if s != record or (await js.get_last_msg(stream, s)).data}


async def test_without_a_node_the_sdk_deletes_itself(fresh_server: NatsServer, nc: NATS) -> None:
    js = jetstream(nc)
    execution = await an_execution(js)
    own = await stored_subjects(js, execution)
    assert len(own) >= 9  # 3 event kinds, record and index, 3 metadata, 2 chunk subjects
    async with Client(fresh_server.url) as kb:
        await kb.execution(execution).delete()  # no responders: the SDK purges
        assert await left_of(js, execution, own) == set()
        with pytest.raises(ExecutionNotFound):
            await kb.execution(execution).delete()


async def test_with_a_node_the_node_deletes(fresh_server: NatsServer, nc: NATS) -> None:
    js = jetstream(nc)
    execution = await an_execution(js)
    own = await stored_subjects(js, execution)
    live = await an_execution(js, status="running")
    kept = await stored_subjects(js, live)
    heard = await nc.subscribe(subjects.exec_delete(USER, "*"))
    node = Runner(nc, ServiceSettings(id="n1", nats=[fresh_server.url]), [])
    await node.start()
    try:
        async with Client(fresh_server.url) as kb:
            await kb.execution(execution).delete()
            assert (await heard.next_msg(timeout=5)).subject == subjects.exec_delete(
                USER, execution
            )
            assert await left_of(js, execution, own) == set()
            with pytest.raises(ExecutionNotFound):
                await kb.execution(execution).delete()
            with pytest.raises(ExecutionNotEnded, match="cancel it first"):
                await kb.execution(live).delete()
        assert await left_of(js, live, kept) == kept  # the live one is untouched
    finally:
        await node.stop()


async def test_a_delete_waits_for_an_ending_still_being_stored(
    fresh_server: NatsServer, nc: NATS
) -> None:
    """An ender claims the record, then stores the terminal status (re-sent for up to a
    minute): a delete in between would purge the events and that status be stored after the
    purge, events of no record (found by review). The node answers `busy` until it is stored."""
    js = jetstream(nc)
    execution = await an_execution(js, ending_stored=False)
    node = Runner(nc, ServiceSettings(id="n1", nats=[fresh_server.url]), [])
    await node.start()
    try:
        subject = subjects.exec_delete(USER, execution)
        with pytest.raises(RemoteError, match="still storing its ending") as busy:
            await request(nc, subject, Empty(), Ack, timeout=10)
        assert busy.value.kind == "busy"
        status = Event(
            execution=execution, seq=4, ts=time.time(), kind="status", node="n1", flow="f",
            launcher=USER, data={"status": "finished"},
        )  # fmt: skip
        await js.publish(*event_message(status)[:2], headers=event_message(status)[2])
        await request(nc, subject, Empty(), Ack, timeout=10)
        assert await stored_subjects(js, execution) == set()
    finally:
        await node.stop()
