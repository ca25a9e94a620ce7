"""The one way an execution ends: exactly once, decided by JetStream, seen by every follower.

Several parties may want to end the same execution: its worker (the flow returned, failed,
timed out or was cancelled), the node's runner (the execution never reached a worker, or its
worker died), a registry (the node is gone), a stopping node. They must not both succeed, and
the loser must learn it. Msg-Id de-duplication cannot decide that (two enders number their
events differently, and colliding ids silently drop a real event), so the decision is a
compare-and-set on the execution's record in `KODO_EXECUTIONS`: whoever moves the record from a
live status to a terminal one owns the ending, and only the owner publishes the terminal events
(`final` or `error`, then the terminal `status`). Everyone else gets `Ending(won=False)` with the
status that won.

Only the owner of a `final` value has it, so an owner (the worker; the runner before the
hand-over) stores its `final`/`error` first, then claims, then stores the status; an outsider
claims first (its `error` can be made again from the record), then fences the worker (`fence`:
every worker event is stored only while `kodo.fence.<execution>` is empty, `not_ended`), then
stores both after the tail the fence holds still (`store_ending`, each event conditional on
that tail, renumbered if it moved). A crash between the claim and the events leaves a terminal
record without its terminal status; `repair` (run by any later ender, e.g. the runner after a
worker death or a registry) stores what the record stands for the same way. Terminal events
carry the Msg-Id `<execution>:<seq>:end` whoever stores them, and they never collide with the
ids of ordinary events (`<execution>:<seq>`), so no real event is dropped as a duplicate.

An outside ender numbers its events after the last *valid* event stored for the execution
(`stored_tail`): a message that does not decode, or whose envelope names another execution or
launcher than its subject, is skipped, so garbage published on an execution's subjects cannot
make the ender reuse seqs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.kv import KeyValue

from . import snapshot, subjects
from .bus import js_retry
from .codec import MSG_ID, MSG_TTL, decode_events, ttl_seconds
from .errors import WireError
from .execution_id import EXPECTED_LAST_SUBJECT, EXPECTED_LAST_SUBJECT_SEQUENCE
from .executions import (
    WRONG_LAST_SEQUENCE,
    Stored,
    event_message,
    move_last_seq,
    read_record,
    record_key,
    set_status,
    update_record,
)
from .models import TERMINAL_STATUSES, Event, ExecutionRecord

log = logging.getLogger("kodo_bus.lifecycle")

Message = tuple[str, bytes, dict[str, str]]
"""Subject, body and headers of one event."""

NOTHING: Any = object()
"""`final` not given (None is a valid return value of a flow)."""

END_ID = ":end"
"""Suffix of the Msg-Id of terminal events (see the module docstring)."""

PUBLISH_WITHIN = 30.0
"""Seconds an outside ender retries storing the terminal events (a stream electing a leader);
shorter than the events' `DUPLICATE_WINDOW`, so a retry is de-duplicated (`publish`)."""


@dataclass(frozen=True)
class Ending:
    """How an execution ended, as one ender learned it."""

    status: str
    """The terminal status the execution has (this caller's, or the one that won)."""
    won: bool
    """This caller ended the execution (and published its terminal events)."""
    last_seq: int = 0
    """Seq of the terminal status event (0 when unknown: the record had none)."""


def envelope(record: ExecutionRecord) -> dict[str, Any]:
    """The fields every event of an execution carries besides seq, ts, kind and data."""
    return {
        "execution": record.execution,
        "node": record.node,
        "flow": record.flow,
        "launcher": record.launcher,
        "parent": record.parent,
        "root": record.root,
    }


def error_of(type_name: str, message: str, traceback: str = "") -> dict[str, str]:
    """The `data` of an `error` event."""
    return {"type": type_name, "message": message, "traceback": traceback}


def ending_messages(
    record: ExecutionRecord,
    after: int,
    status: str,
    error: dict[str, str] | None = None,
    final: Any = NOTHING,
) -> list[Message]:
    """`final` or `error` (when given), then the terminal status, numbered after seq `after`."""
    kinds: list[tuple[str, Any]] = []
    if final is not NOTHING:
        kinds.append(("final", final))
    if error is not None:
        kinds.append(("error", error))
    kinds.append(("status", {"status": status}))
    base = envelope(record)
    messages = []
    for offset, (kind, data) in enumerate(kinds, start=1):
        event = Event(seq=after + offset, ts=time.time(), kind=kind, data=data, **base)
        messages.append(event_message(event, f"{record.execution}:{event.seq}{END_ID}"))
    return messages


def unless_ended(message: Message, record: ExecutionRecord) -> Message:
    """`message` stored only if nobody ended the execution from outside already
    (`not_ended`): a worker's `running`, and an owner's `final`/`error` (`conclude`).

    A job can still reach a worker after that — sent just before its node died, and taken by
    the node's Ray actor in the moment before Ray killed it — and that worker must not run it:
    its events would follow the terminal status. The runner's ending before the hand-over
    needs it too (a node frozen past its ttl, then resumed: its ending would follow the
    registry's); the worker's carries it already, by its guard.
    """
    subject, body, headers = message
    return subject, body, {**headers, **not_ended(record)}


def not_ended(record: ExecutionRecord) -> dict[str, str]:
    """The headers of a worker's events: JetStream stores one only while the execution's
    fence (`subjects.FENCE`) is empty.

    Every event of a worker carries it, from its `running` to its `final`/`error`
    (`EventPublisher.guard`); only its terminal status, sent once its own claim won, does not.
    Whoever ends the execution from outside stores the fence once its claim won, before it
    reads the tail it numbers its ending after (`end_from_outside`): from then on nothing of
    the worker is stored, so that tail stays the tail. The fence is a subject of its own, not
    the outsider's `error`: an `error` needs its seq, and the seq needs the tail that only the
    fence holds still.
    """
    return {
        EXPECTED_LAST_SUBJECT_SEQUENCE: "0",
        EXPECTED_LAST_SUBJECT: subjects.fence(record.execution),
    }


async def fence(js: JetStreamContext, record: ExecutionRecord) -> None:
    """Stop the worker of `record` storing events (`not_ended`). Idempotent: a fence stored
    again is one message more, and the worker's events are refused alike."""
    headers = {MSG_ID: f"{record.execution}:fence"}
    if record.retention is not None:  # it goes with the execution's events (`retain`)
        headers[MSG_TTL] = str(ttl_seconds(record.retention))
    await _publish_one(js, subjects.fence(record.execution), b"", headers)


# -- the stored trail ----------------------------------------------------------------------------
async def stored_events(js: JetStreamContext, record: ExecutionRecord) -> list[Event]:
    """Every valid event of the execution in the stream, in stream order (no consumer made).

    Valid: it decodes, and its envelope names this execution and launcher, like its subject.
    Read with direct gets (`next_by_subj`), so reading leaves no state in the server.
    """
    return (await _read(js, record, 1))[0]


async def _read(js: JetStreamContext, record: ExecutionRecord, seq: int) -> tuple[list[Event], int]:
    """The valid events of the execution from stream seq `seq` on, and the stream seq of the
    last message on its subjects (valid or not: 0 when none), which is what a condition on
    those subjects is checked against.

    Read up to the message that was last when the read began: a worker still emitting would
    otherwise keep a reader that is slower than it reading for ever."""
    wanted = subjects.events(record.launcher, record.execution, "*")
    events: list[Event] = []
    try:
        last = await js_retry(
            functools.partial(js.get_last_msg, subjects.STREAM_EVENTS, wanted, direct=True),
            f"read the last event of {record.execution}",
        )
    except nats.js.errors.NotFoundError:
        return events, 0
    end = int(last.seq or 0)
    while seq <= end:
        try:
            msg = await js_retry(
                functools.partial(
                    js.get_msg, subjects.STREAM_EVENTS, seq, wanted, direct=True, next=True
                ),
                f"read the events of {record.execution}",
            )
        except nats.js.errors.NotFoundError:
            break
        stored_at = int(msg.seq or seq)
        if stored_at > end:
            break
        seq = stored_at + 1
        try:
            decoded = decode_events(msg.subject or "", msg.data or b"", msg.headers)
        except WireError as exc:
            log.warning("execution %s: skipping a message: %s", record.execution, exc)
            continue
        events.extend(decoded)  # each checked against its subject, so it is this execution's
    return events, end


@dataclass(frozen=True)
class Tail:
    """What the stream holds of an execution: its last seq, the kind of each seq, and its
    terminal status if one is stored."""

    last_seq: int
    kinds: dict[int, str]
    terminal: str | None
    terminal_seq: int = 0
    stream_seq: int = 0
    """Stream seq of the last message on the execution's subjects (0: none): an ending
    numbered after this tail is stored only if that is still the last (`store_ending`)."""

    def ending_at(self, seq: int) -> bool:
        """Whether the event at `seq` is a `final` or `error` (an ending under way)."""
        return self.kinds.get(seq) in ENDING_KINDS


ENDING_KINDS = frozenset({"final", "error"})


async def stored_tail(
    js: JetStreamContext, record: ExecutionRecord, since: Tail | None = None
) -> Tail:
    """The execution's tail as stored; with `since`, read on from where that one ended."""
    last, terminal, terminal_seq, stream_seq = 0, None, 0, 0
    kinds: dict[int, str] = {}
    if since is not None:
        last, terminal, terminal_seq = since.last_seq, since.terminal, since.terminal_seq
        kinds, stream_seq = dict(since.kinds), since.stream_seq
    events, read_to = await _read(js, record, stream_seq + 1)
    for event in events:
        last = max(last, event.seq)
        kinds.setdefault(event.seq, event.kind)
        if event.kind == "status" and isinstance(event.data, dict):
            status = event.data.get("status")
            if status in TERMINAL_STATUSES and terminal is None:
                terminal, terminal_seq = str(status), event.seq
    return Tail(last, kinds, terminal, terminal_seq, max(stream_seq, read_to))


# -- the decision --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """The result of trying to move a record to a terminal status."""

    won: bool
    record: ExecutionRecord | None
    """The record as written (won) or as found (lost; None when there is none)."""


async def claim(
    kv: KeyValue,
    key: str,
    status: str,
    *,
    last_seq: int,
    error: str | None,
    known: Stored | None = None,
) -> Claim:
    """Compare-and-set the record under `key` to `status`; lost if it is terminal already
    (`update_record` never changes a terminal record)."""
    written = await update_record(
        kv, key, set_status(status, last_seq=last_seq, error=error), known
    )
    if written is not None:
        return Claim(True, written[0])
    current = await read_record(kv, key)
    if current is not None and current[0].status not in TERMINAL_STATUSES:
        log.error("cannot end %s: its record keeps changing", key)
        return Claim(False, None)
    return Claim(False, None if current is None else current[0])


# -- ending ---------------------------------------------------------------------------------------
Store = Callable[[list[Message]], Awaitable[None]]
"""Stores events, acknowledged, behind whatever the ender stored before (its publisher)."""
Send = Callable[[list[Message]], None]
"""Queues events behind whatever the ender queued before, without waiting for them."""


async def conclude(
    js: JetStreamContext,
    kv: KeyValue,
    record: ExecutionRecord,
    after: int,
    status: str,
    *,
    error: dict[str, str] | None = None,
    final: Any = NOTHING,
    known: Stored | None = None,
    store: Store | None = None,
    send: Send | None = None,
    settled: Callable[[], Awaitable[None]] | None = None,
    written: Callable[[], Awaitable[None]] | None = None,
) -> Ending:
    """End, as its owner, the execution with `status` after seq `after` (the owner numbers its
    events), unless someone else ended it first.

    Order: the `final`/`error` is stored, then the record claimed, then the terminal status
    stored. The `final` goes first because only the owner has it: a claimed record has its
    `final`/`error` stored, so a repair only adds the status. With `send` (the owner's
    publisher: the events and the claim travel on one connection), the `final` and the status
    are handed over without waiting for their acknowledgements: a nats-server stores what one
    connection sends in order, so the `final` is stored before the claim is applied (on a
    cluster, where the two streams have leaders of their own, only as good as likely), and
    the publisher re-sends until stored. A wait for each cost more CPU than the rest of a no-op
    execution's ending and put two round trips between its `final` and its status. If the
    status is never stored (the owner died, the server stayed away longer than re-sends are
    tried), the record holds the ending for `repair` and for followers.

    `written` (the publisher's) is awaited between handing over the `final` and the claim, so
    the `final` is on the wire before the claim: without it the claim, sent through nats-py
    directly, went out ahead of the `final` still queued in the publisher.

    `settled` is awaited between a won claim and the status: the worker's, until its `running`
    is acknowledged (its `final`/`error` may have been sent under that condition, which the
    status must not carry: the worker's own `error` would fail it).
    """
    store = store or functools.partial(publish, js)
    first, last = ending_messages(record, after, status, error, final)
    first = unless_ended(first, record)
    if final is not NOTHING and not _fits(js, first):
        # No re-send stores it: it would be given up, while the claim and the status went on,
        # leaving `finished` behind a gap where the value should be (followers waited for it,
        # then took None for the result). It ends `error`, saying why.
        size = len(first[1])
        why = f"the flow's result ({size} bytes as its final event) does not fit in one NATS "
        why += f"message (the server's max_payload is {js._nc.max_payload} bytes)"
        status, error, final = "error", error_of("EventsNotStored", why), NOTHING
        first, last = ending_messages(record, after, status, error, final)
        first = unless_ended(first, record)
    if send is None:
        try:
            await store([first])
        except nats.js.errors.APIError as exc:  # fenced: an outsider's claim won already
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
    else:
        send([first])
        if written is not None:
            await written()
    message = error.get("message") if error is not None else None
    decided = await claim(
        kv, record_key(record), status, last_seq=after + 2, error=message, known=known
    )
    if decided.won:
        if settled is not None:
            await settled()
        if send is None:
            await store([last])
        else:
            send([last])
        return Ending(status, True, after + 2)
    return await _lost(js, kv, record, decided)


def _fits(js: JetStreamContext, message: Message) -> bool:
    """Whether the server takes `message` (it counts the headers in its max_payload)."""
    _, body, headers = message
    size = len(body) + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 16
    return size <= js._nc.max_payload


async def end_from_outside(
    js: JetStreamContext,
    kv: KeyValue,
    record: ExecutionRecord,
    status: str,
    error: dict[str, str],
) -> Ending:
    """End an execution whose worker cannot (it died, its node did, it never got it) — or
    that looks so from outside while its worker runs on (a node frozen past its ttl).

    Claims the record with the seq its ending takes after the tail it read; once that won,
    fences the worker (nothing more of it is stored, `not_ended`), reads on to the tail the
    fence holds still and stores the ending there (`store_ending`). If the last stored event is
    an owner's `final`/`error` (an ending under way, whose owner may have died, or a worker's
    `final` stored before the fence), that stays the ending event and only the status follows
    it. When the record is terminal already, this caller lost: it repairs the stream if the
    terminal status is missing.
    """
    current = await read_record(kv, record_key(record))
    if current is None:
        log.warning("cannot end %s: it has no record", record.execution)
        return Ending(status, False)
    found = current[0]
    if found.status in TERMINAL_STATUSES:
        return await repair(js, kv, found)
    tail = await stored_tail(js, found)
    if tail.terminal is not None:  # stored without a claim: not by this protocol; keep it
        return Ending(tail.terminal, False, tail.terminal_seq)
    last = tail.last_seq + (1 if tail.ending_at(tail.last_seq) else 2)
    decided = await claim(
        kv, record_key(found), status, last_seq=last, error=error["message"], known=current
    )
    if not decided.won or decided.record is None:
        return await _lost(js, kv, found, decided)
    await fence(js, found)
    tail = await stored_tail(js, found, tail)  # what the worker stored before the fence
    return Ending(status, True, await store_ending(js, kv, decided.record, tail, error))


async def store_ending(
    js: JetStreamContext,
    kv: KeyValue,
    record: ExecutionRecord,
    tail: Tail,
    error: dict[str, str],
) -> int:
    """Store the ending the terminal `record` stands for right after `tail`: `error` (unless
    the tail ends with a `final`/`error` already), then the status; the seq of the terminal
    status stored.

    Each message is stored only while the last message on the execution's subjects is the
    one the tail ended with (JetStream's `Nats-Expected-Last-Subject-Sequence` on them). If
    something came in between — a worker that ran on, another ender storing this same ending
    (a repair) — the tail is read on and the ending numbered after it, until it is stored or a
    terminal status is found; so no seq is stored twice and nothing follows the status. The
    record's `last_seq` follows where the status went. Called with the worker fenced
    (`fence`), so only other enders can move the tail; tried for `PUBLISH_WITHIN` all the same.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PUBLISH_WITHIN
    while tail.terminal is None:
        after = tail.last_seq
        ending = error if not tail.ending_at(after) else None
        subject, body, headers = ending_messages(record, after, record.status, ending)[0]
        headers[EXPECTED_LAST_SUBJECT_SEQUENCE] = str(tail.stream_seq)
        headers[EXPECTED_LAST_SUBJECT] = subjects.events(record.launcher, record.execution, "*")
        try:
            ack = await _publish_one(js, subject, body, headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
            if loop.time() > deadline:
                log.error("execution %s: its ending is still overtaken", record.execution)
                return record.last_seq
            tail = await stored_tail(js, record, tail)
            continue
        kind = "status" if ending is None else "error"
        tail = Tail(
            after + 1,
            {**tail.kinds, after + 1: kind},
            record.status if ending is None else None,
            after + 1,
            ack.seq,
        )
    if tail.terminal == record.status and tail.terminal_seq != record.last_seq:
        await move_last_seq(kv, record_key(record), tail.terminal_seq)
    return tail.terminal_seq


async def _lost(
    js: JetStreamContext, kv: KeyValue, record: ExecutionRecord, decided: Claim
) -> Ending:
    if decided.record is None:
        log.warning("cannot end %s: it has no record", record.execution)
        return Ending(record.status, False)
    return await repair(js, kv, decided.record)


async def repair(js: JetStreamContext, kv: KeyValue, record: ExecutionRecord) -> Ending:
    """A terminal record: make sure the events it stands for are stored (its ender may have
    died between the claim and storing them). Stored by `store_ending`, after the tail, so a
    repair racing the ender (or a worker still emitting) stores one copy."""
    stored = await stored_ending(js, record)
    if stored is not None:  # the common case, in one direct get instead of the whole trail
        return Ending(stored.status, False, stored.seq)
    tail = await stored_tail(js, record)
    if tail.terminal is not None:
        return Ending(tail.terminal, False, tail.terminal_seq)
    if not record.last_seq:
        return Ending(record.status, False)
    log.warning("execution %s: storing the %s its record holds", record.execution, record.status)
    await fence(js, record)  # an outside ender may have died before it stored the fence
    tail = await stored_tail(js, record, tail)
    error = error_of(_ERROR_TYPES.get(record.status, "Error"), record.error or "")
    if record.status == "finished":  # the value was the worker's alone: say it is gone
        error = error_of(RESULT_LOST, "its worker stopped before storing it")
    return Ending(record.status, False, await store_ending(js, kv, record, tail, error))


@dataclass(frozen=True)
class _Stored:
    status: str
    seq: int


async def stored_ending(js: JetStreamContext, record: ExecutionRecord) -> _Stored | None:
    """The terminal status stored last on the execution's `status` subject, if it is one."""
    subject = subjects.events(record.launcher, record.execution, "status")
    try:
        msg = await js_retry(
            functools.partial(js.get_last_msg, subjects.STREAM_EVENTS, subject, direct=True),
            f"read the last status of {record.execution}",
        )
        events = decode_events(msg.subject or "", msg.data or b"", msg.headers)
    except (nats.js.errors.NotFoundError, WireError):
        return None
    for event in reversed(events):
        status = event.data.get("status") if isinstance(event.data, dict) else None
        if status in TERMINAL_STATUSES:
            return _Stored(str(status), event.seq)
    return None


_ERROR_TYPES = {"lost": "ExecutionLost", "cancelled": "Cancelled", "timeout": "Timeout"}
"""`error` type of an ending an outsider made, when a repair has to store it again."""

RESULT_LOST = "ResultLost"
"""`error` type a repair stores before a `finished` status whose `final` never was: the worker
claimed the record, then died with its `final` unacknowledged (a server restart in between).
`finished` stays what the record says (the flow did return); readers raise `ExecutionLost`
instead of taking the missing value for None."""


async def publish(js: JetStreamContext, messages: list[Message]) -> None:
    """Store events one by one, acknowledged, in order (retried while JetStream fails over).

    Nothing is handed to nats-py while it is disconnected: its reconnect buffer would write
    every attempt made meanwhile once it is back, however late — past the stream's duplicate
    window (`DUPLICATE_WINDOW`) a second copy of an ending event whose ack was lost would be
    stored. Each attempt is made connected, all within `PUBLISH_WITHIN`, which is shorter."""
    for subject, body, headers in messages:
        await _publish_one(js, subject, body, headers)


async def _publish_one(
    js: JetStreamContext, subject: str, body: bytes, headers: dict[str, str]
) -> PubAck:
    return await js_retry(
        functools.partial(_publish_connected, js, subject, body, headers),
        f"publish on {subject}",
        PUBLISH_WITHIN,
    )


async def _publish_connected(
    js: JetStreamContext, subject: str, body: bytes, headers: dict[str, str]
) -> PubAck:
    if not js._nc.is_connected:
        raise nats.errors.ConnectionReconnectingError  # retried by `js_retry`
    return await js.publish(subject, body, headers=headers)


REPAIR_WITHIN = 600.0
"""Seconds back from a node's death within which its executions' endings are checked: an ender
that died between its claim and its terminal status (a node killed while ending) left a
terminal record whose status is not stored, and nobody else will store it."""


async def mark_lost(js: JetStreamContext, node: str, instance: str | None = None) -> int:
    """End every unfinished execution of `node` (of one replica `instance` when given) as
    `lost`, and repair the recent endings it left half stored; how many this call ended
    (another ender may win some: they are not counted).

    The node's index (`subjects.RECORD_NODE_KEY`) names its records, so this reads that
    node's records only: a registry ending one dead node among thousands does not read the
    whole bucket. A record is judged by what it says (its node, instance and status), never
    by its index entry.
    """
    try:
        kv = await js.key_value(subjects.BUCKET_EXECUTIONS)
    except nats.js.errors.BucketNotFoundError:
        return 0
    ended = 0
    horizon = time.time() - REPAIR_WITHIN
    for key in await records_of(js, node):
        current = await read_record(kv, key)
        if current is None:
            continue
        record = current[0]
        if record.node != node or (instance is not None and record.instance != instance):
            continue
        if record.status in TERMINAL_STATUSES:
            if record.updated >= horizon:
                await repair(js, kv, record)
            continue
        message = f"node {node!r} went offline while the execution was {record.status}"
        try:
            ending = await end_from_outside(
                js, kv, record, "lost", error_of("ExecutionLost", message)
            )
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.error("cannot end %s of %s now: %r", record.execution, node, exc)
            continue  # the others are ended all the same; this one at the next look
        ended += ending.won
    return ended


async def records_of(js: JetStreamContext, node: str) -> list[str]:
    """The record keys `node`'s index names, in one pass over that index only (nats-py's
    kv.keys() can end before it has seen them all)."""
    index = subjects.record_node_key(node, "*", "*")
    keys = []
    for key in await snapshot.kv_keys(js, subjects.BUCKET_EXECUTIONS, index):
        user, execution = key.split(".")[-2:]
        keys.append(subjects.record_key(user, execution))
    return keys
