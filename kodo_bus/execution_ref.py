"""`Execution`: a handle on one execution, from any process that knows its id.

Everything an execution says travels as events on `kodo.events.<user>.<id>.<kind>`, captured by
the `KODO_EVENTS` stream. Reading them through an ordered JetStream consumer gives history then
live events in one sequence, so `events()` needs no separate "catch up" phase and `result()` is
just the last event of that sequence — except that `result()` of a running execution of the
client's own user first listens for its ending on plain subscriptions, with no consumer
(`_live_ending`), and follows the events only when that cannot tell.

A follower never waits on nothing: an id with neither a record nor an event is
`ExecutionNotFound` within `NOT_FOUND_WITHIN` seconds, and a follower that hears nothing for
`STALL_CHECK` seconds looks at its consumer, the record and the stream, so an execution whose
record ended without a terminal event in the stream ends the follow with the record's outcome.
Each follow deletes the consumers it made when it ends (a consumer left to the server's reaping
made a busy bus hit its consumer limit), with a short inactivity threshold as the backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from pydantic import BaseModel

from . import files, subjects
from .bus import JETSTREAM_TRANSIENT, MAX_CONSUMERS_REACHED, consumer_config, js_retry, request
from .codec import decode_events
from .config import ACK_WAIT, RESEND_WITHIN
from .errors import (
    ExecutionCancelled,
    ExecutionError,
    ExecutionFailed,
    ExecutionLost,
    ExecutionNotEnded,
    ExecutionNotFound,
    ExecutionTimeout,
    KodoTimeout,
    NoResponders,
    RemoteError,
    WireError,
)
from .models import (
    TERMINAL_STATUSES,
    Ack,
    AnswerRequest,
    Empty,
    Event,
    ExecutionRecord,
    ExecutionStatus,
    File,
)

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("kodo_bus.client")

STALL_CHECK = 5.0
"""Seconds without an event after which a follower checks its consumer, the record and the
stream."""
GAP_WAIT = ACK_WAIT + RESEND_WITHIN
"""Seconds, from when the first event behind a gap was stored, that the missing event may still
come: its publisher waits `ACK_WAIT` for an ack, then re-sends it for up to `RESEND_WITHIN`."""
GAP_QUIET = 0.5
"""Seconds without a message before a gap whose time is up is skipped (so what the stream holds
behind it, a late re-send included, is delivered first)."""
EARLY_MAX = 10_000
"""Events held back behind a gap at most; beyond that the gap is skipped at once."""
NOT_FOUND_WITHIN = 1.2
"""Seconds an id with neither a record nor an event is looked for before `ExecutionNotFound`
(a launch writes both within milliseconds, in either order)."""
FIRST_CHECK = 0.5
"""Seconds of silence after which a new follow first checks that the execution exists."""
END_GRACE = 2 * ACK_WAIT
"""Seconds a follower waits for the terminal event of an execution whose record already says it
ended (the record is written after its terminal events are acknowledged)."""
_NO_FINAL: Any = object()
"""No `final` event was read: a `finished` ending without one lost its value (a repair stored
`error` `ResultLost` in its place), which is not the flow returning None."""

FOLLOW_INACTIVE = 2.0
"""Inactivity threshold of a follow's consumer: the server deletes it this long after nobody
listens. A backstop only: a follow deletes its consumer itself when it ends."""
CONSUMER_LIMIT_WITHIN = 30.0
"""Seconds a follow retries while the stream is at its consumer limit (other follows end and
free theirs) before giving up."""
EXECUTION_STATUSES: frozenset[str] = frozenset(get_args(ExecutionStatus))
DELETE_WITHIN = 30.0
"""Seconds a delete waits at least for the node's reply: it lists and purges the execution's
files, then purges its events and its record."""

LIVE_HEARD = 64
"""Events a live `result()` keeps at most (an ending is two or three, copies included)."""

NAMES_KEPT = 8
"""Consumer names of one follow remembered for deletion: the ordered consumer takes a new one
each time it re-creates itself; older ones are left to the inactivity threshold."""


def status_of(event: Event) -> str | None:
    """The status a `status` event announces (None for other kinds)."""
    if event.kind != "status":
        return None
    data = event.data
    return str(data.get("status")) if isinstance(data, dict) else str(data)


@dataclass
class WorkflowNode:
    """One execution of a workflow tree, with its ending and its children."""

    execution: str
    flow: str
    node: str
    status: str
    result: Any = None
    error: str | None = None
    children: list[WorkflowNode] = field(default_factory=list)


class Execution:
    """One execution: follow its events, await its result, cancel it or answer its questions."""

    def __init__(
        self,
        client: Client,
        execution: str,
        launcher: str | None = None,
        node: str = "",
        flow: str = "",
        *,
        nc: NATS | None = None,
    ) -> None:
        self._client = client
        self._bus = nc
        """The bus of the node that runs it, when not the client's (a flow reached through
        `connect` or a leaf node): its events, record and control live there."""
        self.id = execution
        self.launcher = launcher
        self.node = node
        self.flow = flow

    def __repr__(self) -> str:
        return f"Execution({self.id!r}, flow={self.flow!r}, node={self.node!r})"

    @property
    def _nc(self) -> NATS:
        """The connection to the bus the execution runs on."""
        return self._bus or self._client.nc

    @property
    def _js(self) -> JetStreamContext:
        return self._client.js if self._bus is None else self._client._jetstream(self._bus)

    # -- state ---------------------------------------------------------------------------------
    async def record(self) -> ExecutionRecord:
        """The current record, its status brought up to the last `status` event.

        The node writes the record just after the events it stands for (so a crash in between
        is repaired from the stream), which means a reader may see the events first: the last
        message on the execution's status subject is the truth for `status`, and an execution
        with events but no record yet gets a record made from its events.
        """
        record = await self._find_record(self.launcher or self._client.user)
        self.launcher, self.node, self.flow = record.launcher, record.node, record.flow
        if record.status in TERMINAL_STATUSES:
            return record
        event = await self._last_event(record.launcher, "status")
        status = None if event is None else status_of(event)
        if event is None or status is None or status == record.status:
            return record
        return record.model_copy(
            update={"status": status, "last_seq": max(record.last_seq, event.seq)}
        )

    async def status(self) -> str:
        """Current status: pending, starting, running, awaiting, or a terminal one."""
        return (await self.record()).status

    async def _find_record(self, launcher: str) -> ExecutionRecord:
        """The record, else one made from the events; `ExecutionNotFound` when neither exists
        after `NOT_FOUND_WITHIN` seconds (a launch writes both, in either order)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NOT_FOUND_WITHIN
        while True:
            record = await self._stored_record(launcher)
            if record is not None:
                return record
            if loop.time() >= deadline:
                made = await self._record_from_events(launcher)
                if made is None:
                    raise ExecutionNotFound(f"no execution {self.id!r} is known to the bus")
                return made
            await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))

    async def _stored_record(self, launcher: str) -> ExecutionRecord | None:
        try:
            return await self._client._record(self.id, launcher, self._js)
        except nats.js.errors.BucketNotFoundError:
            return None  # a bus that never ran an execution
        except nats.js.errors.KeyDeletedError:
            return None  # deleted or purged (not a KeyNotFoundError in nats-py)

    async def _record_from_events(self, launcher: str) -> ExecutionRecord | None:
        """What the events say of an execution whose record is not (yet) written."""
        last = await self._last_event(launcher, "*")
        if last is None:
            return None
        status_event = await self._last_event(launcher, "status")
        meta = await self._last_event(launcher, "meta")
        status = (status_event and status_of(status_event)) or "pending"
        return ExecutionRecord.model_validate(
            {
                "execution": self.id,
                "flow": last.flow,
                "node": last.node,
                "launcher": last.launcher,
                "status": status if status in EXECUTION_STATUSES else "pending",
                "created": (meta or last).ts,
                "updated": max(last.ts, status_event.ts if status_event else 0.0),
                "parent": last.parent,
                "root": last.root,
                "last_seq": max(last.seq, status_event.seq if status_event else 0),
            }
        )

    async def _last_event(self, launcher: str, kind: str) -> Event | None:
        """The last event stored on one of the execution's subjects (`*`: any of them); the
        last of a burst. None when there is none or it does not decode."""
        msg = await self._last_msg(launcher, kind)
        if msg is None:
            return None
        try:
            events = decode_events(msg.subject or "", msg.data or b"", msg.headers)
        except WireError:
            return None
        return max(events, key=lambda e: e.seq) if events else None

    async def _last_msg(self, launcher: str, kind: str) -> api.RawStreamMsg | None:
        subject = subjects.events(launcher, self.id, kind)
        try:
            return await self._js.get_last_msg(subjects.STREAM_EVENTS, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None

    async def _exists(self, launcher: str) -> bool:
        """Whether the bus holds a record or an event of this execution."""
        if await self._stored_record(launcher) is not None:
            return True
        return await self._last_msg(launcher, "*") is not None

    # -- events --------------------------------------------------------------------------------
    async def events(
        self, kinds: Iterable[str] | None = None, replay: bool = True
    ) -> AsyncGenerator[Event]:
        """Events in order, without gaps or duplicates: history first (if `replay`), then live.

        With `replay`, reading starts at seq 1. Without it, reading starts right after the
        highest seq of the last message stored when the follow begins (seq 1 when nothing is
        stored yet); an older event re-sent later is not shown. Ends after the terminal status
        event; raises `ExecutionNotFound` for an id the bus does not know, and the record's
        outcome (`ExecutionLost`, `ExecutionFailed`...) when the record ended but the stream
        never gets a terminal status event.
        """
        stream = self._events(kinds, replay)
        async with contextlib.aclosing(stream):
            try:
                async for event in stream:
                    yield event
            except _RecordEnded as ended:
                self._record_outcome(ended.record, ended.final)

    async def _events(self, kinds: Iterable[str] | None, replay: bool) -> AsyncGenerator[Event]:
        """`events()`, raising `_RecordEnded` where it raises the record's outcome."""
        wanted = set(kinds) if kinds else None
        # The launcher's token in the filter is what a client's permissions allow (its own).
        follower = _Follower(self, self.launcher or self._client.user)
        final: Any = _NO_FINAL
        try:
            await follower.open(replay)
            while True:
                for event in await follower.next_ready():
                    self.launcher, self.node, self.flow = event.launcher, event.node, event.flow
                    if event.kind == "final":
                        final = event.data
                    if wanted is None or event.kind in wanted:
                        yield event
                    if status_of(event) in TERMINAL_STATUSES:
                        return
        except _RecordEnded as ended:
            ended.final = final
            raise
        finally:
            await follower.close()

    async def result(self, timeout: float | None = None) -> Any:
        """The final value, or the typed error of how the execution ended."""
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._ending()
        except TimeoutError:
            if not deadline.expired():
                raise  # ExecutionTimeout: the execution itself timed out
            state = await self._state_note()
            raise KodoTimeout(
                f"execution {self.id} did not end within {timeout:g} s ({state})"
            ) from None

    async def _state_note(self) -> str:
        """What the record says of an execution whose follow timed out, for the message."""
        try:
            async with asyncio.timeout(2.0):
                record = await self._stored_record(self.launcher or self._client.user)
        except (TimeoutError, nats.errors.Error) as exc:
            return f"its record could not be read: {exc!r}"
        if record is None:
            return "the bus holds no record of it"
        if record.status in TERMINAL_STATUSES:
            return f"its record says {record.status}, but its terminal event was not read"
        return f"it goes on running: its record says {record.status}"

    async def _ending(self) -> Any:
        live = await self._live_ending()
        if live is not None:
            return self._outcome(*live)
        return self._outcome(*await self._conclusion())

    async def _live_ending(self) -> tuple[str, Any, dict[str, Any]] | None:
        """How a running execution of this client's user ends, heard live: core subscriptions
        to its `final`, `error` and `status` subjects, no JetStream consumer. None when that
        cannot tell (the execution is not known yet, has ended already, does not end within
        `STALL_CHECK`, or its ending is not one clear event): `_conclusion` follows it then.

        Why: a consumer per `result()` (created, fed with flow control, deleted) cost the SDK
        and the nats-server more CPU than the rest of a short execution, and on two cores that
        CPU is latency (issue 18). What is trusted: a terminal status is sent only by the
        ender that won the record's claim (`lifecycle`), so hearing it is knowing the ending;
        its `final`/`error` is the one event heard at the seq before it — one only: a worker
        whose claim lost may have sent a refused `final` of the same seq.
        """
        launcher = self.launcher or self._client.user
        if launcher != self._client.user:
            return None  # a user may subscribe to its own events only (secure profile)
        heard: list[Event] = []
        ended = asyncio.Event()

        async def on_msg(msg: Msg) -> None:
            try:
                events = decode_events(msg.subject, msg.data, msg.headers)
            except WireError:
                return
            if len(heard) + len(events) > LIVE_HEARD:
                ended.set()  # more than an ending: let the follow sort it out
                return
            heard.extend(events)
            if any(status_of(e) in TERMINAL_STATUSES for e in events):
                ended.set()

        nc = self._nc
        subs = []
        try:
            for kind in ("final", "error", "status"):
                subs.append(await nc.subscribe(subjects.events(launcher, self.id, kind), cb=on_msg))
            # Sent after the subscriptions on one connection: what was published before the
            # server took them is stored by the time this read is answered, as a rule; a
            # status missed in between costs a silent `STALL_CHECK`, then the follow.
            try:
                last = await self._last_event(launcher, "status")
            except nats.errors.Error:  # a stream electing its leader, say: the follow waits
                return None
            if last is None or status_of(last) in TERMINAL_STATUSES:
                return None
            try:
                await asyncio.wait_for(ended.wait(), STALL_CHECK)
            except TimeoutError:
                return None
        finally:
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        return _ending_of(heard)

    async def _conclusion(self) -> tuple[str, Any, dict[str, Any]]:
        """Terminal status, final value and failure data, read from the events themselves.

        The events (not the record, which is written just after them) are the truth of how an
        execution ended. The follow is closed before this returns, so its consumer is gone.
        """
        final: Any = _NO_FINAL
        failure: dict[str, Any] = {}
        events = self._events(("final", "error", "status"), True)
        async with contextlib.aclosing(events):
            try:
                async for event in events:
                    if event.kind == "final":
                        final = event.data
                    elif event.kind == "error":
                        failure = (
                            event.data if isinstance(event.data, dict) else {"message": event.data}
                        )
                    elif (status := status_of(event)) in TERMINAL_STATUSES:
                        return status or "", final, failure
            except _RecordEnded as ended:
                if ended.record.status == "finished" and ended.final is not _NO_FINAL:
                    return "finished", ended.final, {}  # its status is missing, not its value
                self._record_outcome(ended.record, ended.final)
        raise ExecutionLost(self.id, f"execution {self.id} ended without a terminal status")

    def _outcome(self, status: str, final: Any, failure: dict[str, Any]) -> Any:
        message = str(failure.get("message") or "")
        if status == "finished":
            if final is _NO_FINAL:  # repaired: the worker died before its `final` was stored
                raise ExecutionLost(
                    self.id,
                    f"execution {self.id} finished but its result is not in the stream: "
                    + (message or "never stored, or discarded by the store's limits"),
                )
            return final
        if status == "cancelled":
            raise ExecutionCancelled(self.id, f"execution {self.id} was cancelled")
        if status == "timeout":
            raise ExecutionTimeout(self.id, f"execution {self.id} timed out: {message}")
        if status == "lost":
            raise ExecutionLost(
                self.id,
                f"execution {self.id} was lost: "
                + (message or f"its node {self.node!r} went offline"),
            )
        raise ExecutionFailed(
            self.id, str(failure.get("type", "Error")), message, str(failure.get("traceback", ""))
        )

    def _record_outcome(self, record: ExecutionRecord, final: Any = _NO_FINAL) -> None:
        """Raise how `record` says the execution ended (its terminal event is not stored);
        `final`: the value a follow read, if it did."""
        if record.status == "finished" and final is not _NO_FINAL:
            raise ExecutionLost(
                self.id,
                f"execution {self.id} finished (its record says so, and its final event was "
                "read), but its terminal status is not in the stream",
            )
        self._outcome(record.status, _NO_FINAL, {"message": record.error or ""})

    # -- control -------------------------------------------------------------------------------
    async def _launcher(self) -> str:
        if self.launcher is None:
            await self.record()
        assert self.launcher is not None
        return self.launcher

    async def cancel(self) -> None:
        """Ask the node to stop the execution; it ends `cancelled` within about 2 s."""
        launcher = await self._launcher()
        await self._control(
            subjects.exec_cancel(launcher, self.id),
            subjects.exec_cancel_at(launcher, self.id, self.node),
            Empty(),
        )

    async def answer(self, data: Any) -> None:
        """Answer the question an `awaiting` execution asked (validated by the node)."""
        launcher = await self._launcher()
        await self._control(
            subjects.exec_answer(launcher, self.id),
            subjects.exec_answer_at(launcher, self.id, self.node),
            AnswerRequest(data=data),
        )

    async def _control(self, public: str, addressed: str, message: BaseModel) -> None:
        """Ask the execution's node (only its processes hear it), or, when its node is not
        known or none of its processes is up, any node (one answers from the record)."""
        if self.node and subjects.is_token(self.node):
            try:
                await self._client._request(addressed, message, Ack, nc=self._nc)
                return
            except NoResponders:
                pass  # no process of its node is up: any node answers from the record
        await self._client._request(public, message, Ack, nc=self._nc)

    # -- files and housekeeping ----------------------------------------------------------------
    async def files(self) -> list[File]:
        """The files the execution handed out (`tracer.file`), once it has ended; a name given
        twice is its last version."""
        found: dict[str, File] = {}
        async for event in self.events(kinds=["file"]):
            ref = File.model_validate(event.data)
            if not ref.belongs_to(event.launcher, self.id):
                log.warning("execution %s names a file not of its own: %s", self.id, ref.name)
                continue  # never downloaded: a flow cannot hand out another user's object
            found.pop(ref.name, None)
            found[ref.name] = ref
        return list(found.values())

    async def download(self, directory: Path | str = ".") -> list[Path]:
        """Write every file of `files()` into `directory`, each checked against its SHA-256."""
        refs = await self.files()
        return [await files.download(self._js, ref, Path(directory) / ref.filename) for ref in refs]

    async def delete(self) -> None:
        """Delete an ended execution for good: its files, its events, then its record.

        A node does it (`kodo.exec.<user>.<execution>.delete`): on the secure profile a client
        may not purge events and records, a node may. With no node on the bus, this process
        does it itself, which works on the default profile and for an admin.
        `ExecutionNotEnded` for one that has not ended, `ExecutionNotFound` for one that is
        not (or no longer) there: a second delete says so."""
        record = await self.record()
        if record.status not in TERMINAL_STATUSES:
            raise ExecutionNotEnded(f"execution {self.id} is {record.status}: cancel it first")
        subject = subjects.exec_delete(record.launcher, self.id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(self._client.timeout, DELETE_WITHIN)
        pause = 0.05
        while True:
            try:
                timeout = max(0.1, deadline - loop.time())
                await request(self._nc, subject, Empty(), Ack, timeout=timeout)
                return
            except NoResponders:  # no node: delete it from here (the default profile, an admin)
                await files.forget(self._js, record.launcher, self.id, node=record.node)
                return
            except RemoteError as exc:
                if exc.kind == "not_found":  # deleted meanwhile (by another delete, say)
                    raise ExecutionNotFound(exc.message) from None
                if exc.kind != "busy" or loop.time() + pause > deadline:
                    raise
            # The node is at its deletes' bound: it answers at once rather than queue them.
            await asyncio.sleep(pause)
            pause = min(2 * pause, 1.0)

    # -- workflows -----------------------------------------------------------------------------
    async def children(self) -> list[Execution]:
        """Executions this one launched (its next flows)."""
        records = await self._client._records(
            lambda r: r.parent == self.id, self.launcher, self._js
        )
        return [
            Execution(self._client, r.execution, r.launcher, r.node, r.flow, nc=self._bus)
            for r in records
        ]

    async def workflow(self, timeout: float | None = None) -> WorkflowNode:
        """The tree under this execution, once every execution in it has ended."""
        async with asyncio.timeout(timeout):
            return await self._tree()

    async def _tree(self) -> WorkflowNode:
        status, final, failure = await self._conclusion()
        error = None
        if status != "finished" or final is _NO_FINAL:
            try:
                self._outcome(status, final, failure)
            except ExecutionError as exc:
                error = str(exc)
        kids = await asyncio.gather(*(child._tree() for child in await self.children()))
        return WorkflowNode(
            execution=self.id,
            flow=self.flow,
            node=self.node,
            status=status,
            result=final if error is None and status == "finished" else None,
            error=error,
            children=list(kids),
        )


class _RecordEnded(Exception):
    """A follow found the record terminal and its terminal event missing (`END_GRACE` on):
    `events()` raises the record's outcome; `_conclusion` keeps a `final` it read already."""

    def __init__(self, record: ExecutionRecord) -> None:
        super().__init__(record.execution)
        self.record = record
        self.final: Any = _NO_FINAL
        """The `final` the follow read before, if any."""


def _ending_of(heard: list[Event]) -> tuple[str, Any, dict[str, Any]] | None:
    """Terminal status, final value and failure from events heard live, if they say it
    clearly: one terminal status, and one `final` or `error` (copies alike) at the seq before
    it — else None."""
    terminal = {(e.seq, status_of(e)) for e in heard if status_of(e) in TERMINAL_STATUSES}
    if len(terminal) != 1:
        return None
    ((seq, status),) = terminal
    endings = {
        (e.kind, repr(e.data)): e
        for e in heard
        if e.kind in ("final", "error") and e.seq == seq - 1
    }
    if len(endings) != 1:
        return None
    (event,) = endings.values()
    if status == "finished" and event.kind != "final":
        return None  # a repair's `ResultLost`, or a refused `error` heard: the follow reads it
    if event.kind == "final":
        return str(status), event.data, {}
    failure = event.data if isinstance(event.data, dict) else {"message": event.data}
    return str(status), _NO_FINAL, failure


class _Follower:
    """One follow of an execution's events: its consumer, the order of what it read, and what
    it does when the stream falls silent."""

    def __init__(self, execution: Execution, launcher: str) -> None:
        self.ex = execution
        self.launcher = launcher
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.sub: JetStreamContext.PushSubscription | None = None
        self.names: deque[str] = deque(maxlen=NAMES_KEPT)
        self.order = _InOrder()
        self.stream_seq = 0
        self.skipped = 0
        """Messages on the execution's subjects that are not its events (undecodable, or an
        envelope that disagrees with the subject): skipped, counted, logged."""
        self.loop = asyncio.get_running_loop()
        self.heard = self.loop.time()
        """When the last message came (or the follow began)."""
        self.known = False
        """A record or an event of the execution exists."""
        self.ended_at: float | None = None
        self.replayed_at = -1
        """The seq read last when a gap made this follow read the execution from its start."""
        self.resumed_at = -1
        """The seq read last when this follow last went on with a new consumer."""
        """When the follower first saw a terminal record with no terminal event stored."""

    async def _on_msg(self, msg: Msg) -> None:
        self.queue.put_nowait(msg)

    async def open(self, replay: bool) -> None:
        """Subscribe: from seq 1 (`replay`), or after what is stored now."""
        await self._open(replay)
        self.heard = self.loop.time()  # silence counts from here (a subscribe may be retried)

    async def _open(self, replay: bool) -> None:
        if replay:
            await self._subscribe(0)
            return
        msg = await self.ex._last_msg(self.launcher, "*")
        if msg is None:
            await self._subscribe(0)  # nothing stored yet: everything is new
            return
        self.known = True
        try:
            events = decode_events(msg.subject or "", msg.data or b"", msg.headers)
            self.order = _InOrder(max(e.seq for e in events) + 1)
        except (WireError, ValueError):
            self.order = _InOrder(None)  # an undecodable last message: from the first read
        self.stream_seq = int(msg.seq or 0)
        await self._subscribe(self.stream_seq)

    async def next_ready(self) -> list[Event]:
        """Wait for a message (or for silence to be dealt with); the events now in order."""
        try:
            if self.queue.empty():  # a wait_for per message cost more than the message
                msg = await asyncio.wait_for(self.queue.get(), self._patience())
            else:
                msg = self.queue.get_nowait()
        except TimeoutError:
            await self._on_silence()
        else:
            self._on_message(msg)
        return list(self.order.ready())

    def _on_message(self, msg: Msg) -> None:
        self.heard = self.loop.time()
        self.known = True
        self.ended_at = None
        if self.sub is not None and self.sub._consumer not in self.names:
            self.names.append(self.sub._consumer)  # re-created by the ordered consumer
        self.stream_seq = max(self.stream_seq, _stream_seq(msg))
        try:
            events = decode_events(msg.subject, msg.data, msg.headers)
        except WireError as exc:
            self.skipped += 1
            log.warning("execution %s: skipping message %d: %s", self.ex.id, self.skipped, exc)
            return
        self.order.add(events, _stored_at(msg))
        if len(self.order.early) > EARLY_MAX:
            self.order.skip_gap(self.ex.id)

    def _patience(self) -> float:
        """Seconds of silence before the next check."""
        now = self.loop.time()
        if not self.known:
            first = self.heard + FIRST_CHECK
            return max(0.05, (first if now < first else self.heard + NOT_FOUND_WITHIN) - now)
        wait = STALL_CHECK
        if self.ended_at is not None:
            wait = min(wait, max(0.05, self.ended_at + END_GRACE - now))
        gap = self.order.gap_deadline()
        if gap is not None:
            wait = min(wait, max(GAP_QUIET, gap - time.time()))
        return wait

    async def _on_silence(self) -> None:
        if not self.known:
            if await self.ex._exists(self.launcher):
                self.known = True
            elif self.loop.time() - self.heard >= NOT_FOUND_WITHIN:
                raise ExecutionNotFound(f"no execution {self.ex.id!r} is known to the bus")
            return
        if self.sub is not None and await _stalled(self.sub):
            # Its server died and nats-py could not re-create it (no stream leader yet), or it
            # holds messages it does not deliver: a new consumer goes on from the last received.
            await self._resume("consumer lost")
            return
        gap = self.order.gap_deadline()
        if gap is not None and gap <= time.time():
            self.order.skip_gap(self.ex.id)
            return
        silent = self.loop.time() - self.heard >= STALL_CHECK - 0.01
        if gap is not None and silent and self.replayed_at != self.order.last:
            # A gap and silence: the missing events may be stored where this consumer will not
            # go again (a fail-over). Read the execution once more from its start; what was
            # read already is dropped by seq.
            log.info("events of %s: a gap after %d, reading again", self.ex.id, self.order.last)
            self.replayed_at = self.order.last
            await self._release()
            await self._subscribe(0)
            return
        if silent and await self._undelivered():
            # Stored, yet not delivered: a consumer that lived through a failover can say
            # it has nothing pending and still deliver nothing. A new one goes on.
            await self._resume("stored but not delivered")
            return
        if self.loop.time() - self.heard >= STALL_CHECK - 0.01 or self.ended_at is not None:
            await self._check_record()

    async def _resume(self, why: str) -> None:
        """Go on with a new consumer after the last stream seq read — or, if the last time
        that brought nothing, from the execution's start: after a fail-over the events still
        missing can be stored at lower stream seqs than one the old leader delivered (it was
        never committed, and its publisher stored it again elsewhere). What was read already
        is dropped by seq."""
        again = self.resumed_at == self.order.last
        self.resumed_at = self.order.last
        log.info("events of %s: %s, %s", self.ex.id, why, "reading again" if again else "resuming")
        await self._release()
        await self._subscribe(0 if again else self.stream_seq)

    async def _undelivered(self) -> bool:
        """Whether the stream holds a later event of the execution than this follow read."""
        try:
            last = await self.ex._last_event(self.launcher, "*")
        except JETSTREAM_TRANSIENT:  # a stream electing its leader: look again next time
            return False
        return last is not None and last.seq > max(self.order.last, *self.order.early, 0)

    async def _check_record(self) -> None:
        """A silent follow: has the execution ended (or vanished) without telling the stream?"""
        record = await self.ex._stored_record(self.launcher)
        if record is None:
            if not self.order.read and await self.ex._last_msg(self.launcher, "*") is None:
                raise ExecutionNotFound(f"no execution {self.ex.id!r} is known to the bus")
            return
        if record.status not in TERMINAL_STATUSES:
            self.ended_at = None
            return
        last = await self.ex._last_event(self.launcher, "status")
        if last is not None and status_of(last) in TERMINAL_STATUSES:
            return  # stored: the follow reads it (behind a gap, or from a new consumer)
        now = self.loop.time()
        if self.ended_at is None:
            self.ended_at = now
            return
        if now - self.ended_at >= END_GRACE:
            log.warning(
                "execution %s: record says %s but no terminal event is stored",
                self.ex.id,
                record.status,
            )
            self.ex.launcher, self.ex.node, self.ex.flow = (
                record.launcher,
                record.node,
                record.flow,
            )
            raise _RecordEnded(record)

    async def _subscribe(self, after: int) -> None:
        """A consumer of the execution's events from the start, or from stream seq `after` + 1;
        retried while JetStream fails over or the stream is at its consumer limit."""
        js = self.ex._js
        start: dict[str, Any] = {}
        if after:
            start = {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE}
            start["opt_start_seq"] = after + 1
        deadline = self.loop.time() + CONSUMER_LIMIT_WITHIN
        delay = 0.05
        while True:
            try:
                self.sub = await js_retry(
                    lambda: js.subscribe(
                        subjects.events(self.launcher, self.ex.id, "*"),
                        stream=subjects.STREAM_EVENTS,
                        cb=self._on_msg,
                        ordered_consumer=True,
                        deliver_policy=None if after else api.DeliverPolicy.ALL,
                        config=consumer_config(
                            flow_control=True,
                            idle_heartbeat=2.0,
                            inactive_threshold=FOLLOW_INACTIVE,
                            **start,
                        ),
                    ),
                    f"read the events of {self.ex.id}",
                )
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != MAX_CONSUMERS_REACHED or self.loop.time() > deadline:
                    raise
                log.debug("events of %s: stream at its consumer limit, retrying", self.ex.id)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.names.append(self.sub._consumer)
            return

    async def _release(self) -> None:
        """Unsubscribe and delete every consumer this follow made that may still exist.

        The deletions are sent without waiting for their replies: a follow ends without a
        round trip more, and a user whose permissions lack the deletion (the secure profile's
        monitors) loses nothing but an async error; the inactivity threshold reaps what a
        deletion missed (a consumer the ordered consumer re-creates at that very moment).
        """
        sub, self.sub = self.sub, None
        names = list(dict.fromkeys([*self.names, *([sub._consumer] if sub else [])]))
        self.names.clear()
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if self.ex._client._nc is None:
            return  # the client closed: the inactivity threshold reaps them
        nc, js = self.ex._nc, self.ex._js
        for name in names:
            # The JetStream API prefix of this context (it names the domain, if any).
            subject = f"{js._prefix}.CONSUMER.DELETE.{subjects.STREAM_EVENTS}.{name}"
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(subject)

    async def close(self) -> None:
        await self._release()


class _InOrder:
    """Puts events back in seq order, without duplicates (a re-sent event is stored after later
    ones, and JetStream's de-duplication window may miss a copy).

    Reading starts at `start` (seq 1 for a replay): whatever is read first, nothing is given out
    until `start` is. `None` trusts the first event read (the last resort of a live follow
    whose start could not be read). A gap is waited for until `GAP_WAIT` after the first event
    behind it was stored, the longest a re-send of the missing one can take; an old gap (history
    that expired, an event never stored) and a gap from seq 1 (the oldest events of the
    execution discarded at the stream's size limit) are skipped once the stream has nothing
    more to give.
    """

    def __init__(self, start: int | None = 1) -> None:
        self.last = -1 if start is None else start - 1
        self.early: dict[int, tuple[Event, float]] = {}
        self.read = False
        """An event of the execution was read."""

    def add(self, events: list[Event], stored_at: float) -> None:
        for event in events:
            self.read = True
            if self.last < 0:
                self.last = event.seq - 1
            if event.seq <= self.last or event.seq in self.early:
                continue
            self.early[event.seq] = (event, stored_at)

    def ready(self) -> Iterator[Event]:
        while self.last + 1 in self.early:
            event, _ = self.early.pop(self.last + 1)
            self.last = event.seq
            yield event

    def gap_deadline(self) -> float | None:
        """Wall-clock time after which the missing events can no longer come (None: no gap).

        A gap from seq 1 can never be filled: the node stores an execution's first events
        before it answers the launch, ahead of any other, so later ones read without them
        mean they were discarded (the stream's size limit, or `retention`)."""
        if not self.early:
            return None
        if self.last == 0:
            return 0.0
        return min(stored for _, stored in self.early.values()) + GAP_WAIT

    def skip_gap(self, execution: str) -> None:
        """The gap is not being filled: go on without it."""
        if self.early:
            first = min(self.early)
            log.warning("execution %s: events %d..%d missing", execution, self.last + 1, first - 1)
            self.last = first - 1


async def _stalled(sub: JetStreamContext.PushSubscription) -> bool:
    """Whether a quiet consumer is gone (or has messages it does not deliver)."""
    try:
        info = await sub.consumer_info()
    except nats.js.errors.NotFoundError:
        return True
    except JETSTREAM_TRANSIENT:
        return True
    return bool(info.num_pending)


def _stream_seq(msg: Msg) -> int:
    """The stream sequence of a JetStream message (0 when it carries none)."""
    try:
        return int(msg.metadata.sequence.stream)
    except (ValueError, AttributeError, nats.errors.Error):
        return 0


def _stored_at(msg: Msg) -> float:
    """When the stream stored a message (server clock, epoch seconds; now when unknown)."""
    try:
        return float(msg.metadata.timestamp.timestamp())
    except (ValueError, AttributeError, nats.errors.Error):
        return time.time()
