"""Execution records, and event bodies built the one way every writer builds them.

The `KODO_EXECUTIONS` bucket holds one `ExecutionRecord` per execution. Several writers touch a
record (the node's runner, the Ray worker, a registry declaring the node lost), so every change
goes through compare-and-set: a writer that lost the race re-reads and applies its change again,
or drops it when the record already ended. Who may END an execution, and how, is decided in
`lifecycle.py`; the changes here only move a live record between live statuses.

Events are JSON `Event`s with the header `Nats-Msg-Id: <execution>:<seq>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import traceback as tb
from collections.abc import Callable
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic_core import to_jsonable_python

from . import subjects
from .bus import js_retry
from .codec import JSON, MSG_ID, MSGPACK, decode, decode_events, encode, ttl_seconds
from .errors import WireError
from .models import TERMINAL_STATUSES, Event, ExecutionRecord

log = logging.getLogger("kodo_bus.executions")

WRONG_LAST_SEQUENCE = 10071
"""JetStream API error code: a compare-and-set or conditional publish found another last
sequence than it expected."""


def jsonable(data: Any) -> Any:
    """Event data as plain JSON values (pydantic models, datetimes...; anything else as str)."""
    return to_jsonable_python(data, fallback=str)


def event_message(event: Event, msg_id: str | None = None) -> tuple[str, bytes, dict[str, str]]:
    """Subject, body and headers of one event (the id lets JetStream drop re-sent copies)."""
    subject = subjects.events(event.launcher, event.execution, event.kind)
    msg_id = msg_id or f"{event.execution}:{event.seq}"
    body, headers = encode(event, JSON, {MSG_ID: msg_id})
    return subject, body, headers


def error_data(exc: BaseException, type_name: str | None = None) -> dict[str, str]:
    """The `data` of an `error` event for an exception."""
    return {
        "type": type_name or type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(tb.format_exception(exc)),
    }


async def last_seq(js: JetStreamContext, execution: str) -> int:
    """Highest event seq of an execution stored in the stream (0 when it has none)."""
    try:
        msg = await js.get_last_msg(
            subjects.STREAM_EVENTS, subjects.events_of_execution(execution), direct=True
        )
    except nats.js.errors.NotFoundError:
        return 0
    try:
        return decode_events(msg.subject or "", msg.data or b"", msg.headers)[-1].seq
    except (WireError, IndexError):
        log.warning("undecodable last event of %s", execution)
        return 0


# -- records -------------------------------------------------------------------------------------
def record_bytes(record: ExecutionRecord) -> bytes:
    return encode(record, MSGPACK)[0]


def record_key(record: ExecutionRecord) -> str:
    """The KV key of a record: launcher first, so permissions confine a user to their own."""
    return subjects.record_key(record.launcher, record.execution)


async def create_record(kv: KeyValue, record: ExecutionRecord) -> int:
    """Store a new record, and its node's index entry beside it (sent together: the index
    costs no round trip of its own); the record's revision. An index entry without its record
    (a create that failed) is harmless: its reader checks the record."""
    create = asyncio.ensure_future(
        kv.create(record_key(record), record_bytes(record), msg_ttl=_ttl(record))
    )
    index = asyncio.ensure_future(index_record(kv, record))
    try:
        revision = int(await create)
    except BaseException:  # the create's error is the one that says what happened
        with contextlib.suppress(Exception):
            await index
        raise
    await index
    return revision


async def index_record(kv: KeyValue, record: ExecutionRecord) -> None:
    """Name the record in its node's index (`subjects.RECORD_NODE_KEY`), so the executions of
    a dead node are found in proportion to that node's, not to the bucket's."""
    key = subjects.record_node_key(record.node, record.launcher, record.execution)
    await kv.put(key, b"")


def _ttl(record: ExecutionRecord) -> int | None:
    """The record write's `Nats-TTL` (whole seconds): the terminal write of a record of a flow
    with a `retention` carries it, so the record goes `retention` after the execution ended.
    Live writes carry none: a record that expired while its execution waited or ran could not
    be ended (the bucket's history is 1, so the terminal write replaces them)."""
    if record.retention is None or record.status not in TERMINAL_STATUSES:
        return None
    return ttl_seconds(record.retention)


async def read_record(kv: KeyValue, key: str) -> tuple[ExecutionRecord, int] | None:
    """The record under `key` (`subjects.record_key`) and its revision, or None."""
    try:
        entry = await js_retry(lambda: kv.get(key), f"read {key}")
    except nats.js.errors.KeyNotFoundError:
        return None
    if not entry.value:
        return None
    try:
        record = decode(key, entry.value, None, ExecutionRecord)
    except WireError as exc:
        log.warning("%s", exc)
        return None
    return record, int(entry.revision or 0)


Change = Callable[[ExecutionRecord], ExecutionRecord | None]


Stored = tuple[ExecutionRecord, int]
"""A record and its revision in the bucket."""


async def update_record(
    kv: KeyValue, key: str, change: Change, known: Stored | None = None
) -> Stored | None:
    """Apply `change` to the record under `key` with compare-and-set, retrying on a lost race.

    `change` returns the new record, or None to leave it as it is. Terminal records are never
    changed: whoever ended the execution first wins. A writer that holds the record's last
    revision (`known`: the runner after creating it, the worker after its own update) skips
    the read; a stale `known` costs one conflict and a re-read. Returns the new record and
    revision, or None when nothing was written.
    """
    for _ in range(50):
        current = known or await read_record(kv, key)
        known = None
        if current is None:
            return None
        record, revision = current
        if record.status in TERMINAL_STATUSES:
            return None
        new = change(record)
        if new is None:
            return None
        new = new.model_copy(update={"updated": time.time()})
        written = await _replace(kv, key, new, revision)
        if written is not None:
            return new, written
    log.warning("gave up updating the record %s after 50 conflicts", key)
    return None


async def _replace(kv: KeyValue, key: str, new: ExecutionRecord, revision: int) -> int | None:
    """Write `new` if the record is still at `revision`: its new revision, None if not."""
    try:
        written = await js_retry(
            # nats-py's public `update` sends no TTL; its `_update` (what `update` calls) does
            functools.partial(kv._update, key, record_bytes(new), last=revision, msg_ttl=_ttl(new)),
            f"update {key}",
        )
    except nats.js.errors.KeyWrongLastSequenceError:
        return None
    except nats.js.errors.APIError as exc:
        if exc.err_code != WRONG_LAST_SEQUENCE:
            raise
        return None
    return int(written)


async def move_last_seq(kv: KeyValue, key: str, last_seq: int) -> None:
    """Point a terminal record's `last_seq` at its terminal status as stored.

    The one change ever made to a terminal record: an ender claims with the seq its ending
    would take after the tail it read, and a worker still emitting can move the tail before
    the ending is stored (`lifecycle.store_ending` then numbers after it). Status and error
    stay as claimed."""
    for _ in range(50):
        current = await read_record(kv, key)
        if current is None:
            return
        record, revision = current
        if record.status not in TERMINAL_STATUSES or record.last_seq == last_seq:
            return
        new = record.model_copy(update={"last_seq": last_seq, "updated": time.time()})
        if await _replace(kv, key, new, revision) is not None:
            return
    log.warning("gave up moving the last_seq of %s after 50 conflicts", key)


def set_status(status: str, **fields: Any) -> Change:
    """A change that sets the status (and any other fields)."""

    def change(record: ExecutionRecord) -> ExecutionRecord:
        return record.model_copy(update={"status": status, **fields})

    return change
