"""Pipelined, acknowledged JetStream publishing of events, in order, on one connection.

Why not one `js.publish` per event: that waits a round trip per event. Why not core publishes:
they were silently dropped while a server restarted or a stream elected a new leader. So events
go out back to back, each with a reply subject on one wildcard inbox of the publisher, and
every ack is checked after each burst; an event the stream did not confirm is re-sent with the
same `Nats-Msg-Id`, which JetStream de-duplicates. A re-sent event may be stored after later
ones; readers order by `seq` (`Execution.events`). Why not nats-py's `publish_async`: per event
it draws a random token, a future with a done-callback and a semaphore slot, and parses the ack
into a `PubAck` — together more CPU than the rest of publishing the event; here an ack is a
numbered reply subject and a prefix check of its body.

A burst of output events (`BATCH_KINDS`) of one execution and kind — consecutive in the queue,
because the flow emits faster than they go out — travels as one message holding a JSON array
of events, with the id `<execution>:<first>-<last>`: per message, nats-py costs the publisher
and every reader tens of microseconds, far more than an event's bytes. A flow that emits slowly
sends one event per message, as before (there is no timer: a batch is what is already waiting).
Status, final, error, log and progress events always travel alone, so tools that watch those
subjects, and `last_event`, see single events.

**Back-pressure.** One publisher serves every execution of a Ray actor, and a flow can emit far
faster than NATS takes events (a `print` loop, or any flow while the server is away). So the
queue is bounded in bytes (each event counts its body plus `EVENT_OVERHEAD`), and a flow that
outruns the publisher is slowed, never let grow the queue without end:

- a *thread* (a sync flow, its `print`s, its `*_sync` tracer calls) that emits while the queue
  holds more than `QUEUE_BYTES` waits until the publisher has brought it down to `QUEUE_RESUME`
  (`wait_room_sync`, in slices of `ROOM_SLICE` so a cancel raised in the thread lands);
- a *coroutine* (`await tracer.markdown(...)` and the other async tracer calls) awaits the same
  room (`wait_room`);
- the *event loop's own thread* cannot wait: blocking it would stop the publisher itself and
  every execution of the actor. What it emits is taken up to `QUEUE_HARD`; beyond that, an output
  event (a `print` or a `*_sync` call from an async flow, see `tracer.OUTPUT_KINDS`) is refused:
  `Emitter.emit` raises `EventsNotStored` in the flow and the loss is recorded, so the execution
  ends `error` with that reason instead of taking the actor's memory. Statuses, `final`,
  `error` and the other events the worker and the node emit themselves are never refused (a
  handful per execution).

**Re-sends and losses.** After each burst (`ACK_WINDOW` events, or a `drain`), the events the
stream did not confirm are re-sent *together*, pipelined in their original order with the same
ids, then their acks awaited; that repeats until all are stored or `RESEND_WITHIN` has passed
since the publisher first found an event unstored (one bound for the whole outage, not one per
event or per burst). What is still unstored then is given up: the loss is recorded per
execution (an event's id is `<execution>:<seq>` or `<execution>:<first>-<last>`), and the next
`drain` that covers it raises `EventsNotStored` naming the executions (`drain(execution)` asks
about one), so no execution ends as if its events were stored. Nothing is handed to nats-py
while it is disconnected (its reconnect buffer would store those ahead of the events lost with
the connection); one it held when the connection dropped may still be stored after it was given
up: the error is then a stored event reported lost, never the other way round.

**Retention per flow.** An execution of a flow declared with `@flow(retention=...)` is
`retain`ed: each of its messages carries the header `Nats-TTL`, so the stream (`allow_msg_ttl`)
removes it that many seconds after storing it, before the bus's `events_max_age`.

Used by the Ray actors (every event of a running flow) and by the node's runner (the events
before the hand-over), so both number and deliver events the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

from .codec import MSG_ID, MSG_TTL, ttl_seconds
from .config import ACK_WAIT, RESEND_WITHIN
from .errors import EventsNotStored
from .execution_id import WRONG_LAST_SEQUENCE_ACK

log = logging.getLogger("kodo_bus.publisher")

ACK_WINDOW = 1000
"""Events in flight before the publisher waits for their acks."""
STORED = b'{"stream"'
"""How a JetStream ack that stored the message begins (an error is `{"error":...}`, no
responders an empty 503 status)."""
RESEND_PAUSE = 0.1
"""Seconds between two rounds of re-sends that stored nothing (doubling up to 1 s)."""

QUEUE_BYTES = 8 * 1024 * 1024
"""Queued bytes above which emitting threads and awaiting tracer calls wait. Why 8 MiB: the
publisher stores small events at tens of MB/s here, so a full queue is a fraction of a second
of work — a waiting flow resumes long before the publisher runs dry — and it is small beside a
Ray worker's memory, even with every actor of a node full."""
QUEUE_RESUME = QUEUE_BYTES // 2
"""Queued bytes at which waiting flows resume: half a queue, so they wake once per half queue
drained, not once per event."""
QUEUE_HARD = 4 * QUEUE_BYTES
"""Queued bytes beyond which an output event emitted on the event loop's thread (which cannot
wait) is refused: room for the bursts an async flow prints between two awaits, while a
`print` loop that never yields is stopped at 32 MiB, not at the actor's death."""
EVENT_OVERHEAD = 400
"""Bytes an event costs in the queue besides its body (its tuple, headers dict, Msg-Id string
and bytes header, measured with `sys.getsizeof`): what bounds a flood of tiny events."""
ROOM_SLICE = 0.05
"""Seconds a waiting thread sleeps between checks: how late a cancel raised in it lands."""
LOST_KEPT = 10_000
"""Executions whose lost events are remembered until a `drain` reports them."""
LOST_IDS_SHOWN = 5
"""Ids of lost messages named in an error, per execution."""

RETAINED = 20_000
"""Executions whose TTL a publisher remembers (the most recently retained): past that, an old
execution's further events are kept for `events_max_age`, the safe side."""

BATCH_KINDS = frozenset({"markdown", "text", "html", "stdout", "stderr"})
"""Event kinds whose bursts travel as one message (a JSON array of events)."""
BATCH_MAX = 50
"""Events in one message at most."""
BATCH_BYTES = 64 * 1024
"""Bytes of one message at most (well under NATS' max_payload)."""

_Message = tuple[str, bytes, dict[str, str]]
_Unstored = tuple[_Message, str]
"""A message not (yet) stored, and why."""


class _Mark:
    """A position in the queue: resolved once everything before it is stored or given up
    (`settle`), or only handed to NATS (`written`)."""

    def __init__(self, future: asyncio.Future[None], settle: bool = True) -> None:
        self.future = future
        self.settle = settle


@dataclass
class _Loss:
    """What one execution lost, for the error its `drain` raises."""

    events: int = 0
    ids: list[str] = field(default_factory=list)
    reason: str = ""


class EventPublisher:
    """Queue events from any thread; they are published in queue order and all acknowledged."""

    def __init__(self, nc: NATS, loop: asyncio.AbstractEventLoop) -> None:
        self._nc = nc
        self._loop = loop
        self._queue: deque[_Message | _Mark] = deque()
        self._count = threading.Lock()
        """Guards `_bytes`, `full` and `_room` together (producers are any threads)."""
        self._bytes = 0
        self.full = False
        """Over `QUEUE_BYTES` and not yet back to `QUEUE_RESUME`: emitters wait for room (a
        plain attribute: every emit reads it)."""
        self._room = threading.Event()
        self._room.set()
        self._room_waiters: list[asyncio.Future[None]] = []
        self._inbox = nc.new_inbox() + "."
        self._acks: Subscription | None = None
        self._sent = 0
        """Events sent so far: the last one's number is its reply subject's last token."""
        self._unacked: dict[int, _Message] = {}
        self._failed: dict[int, _Unstored] = {}
        self._refused: list[_Unstored] = []
        """Messages no re-send can store (larger than the server's max_payload)."""
        self._failing_since: float | None = None
        """When an event was first found unstored, in an unbroken run of failing bursts."""
        self._lost: OrderedDict[str, _Loss] = OrderedDict()
        self._preceded: OrderedDict[str, None] = OrderedDict()
        """Msg-Ids of conditional publishes refused because a message was on their subject
        already (`execution_id`: someone holds the id); read and cleared by `preceded`."""
        self._confirming: dict[str, asyncio.Future[bool]] = {}
        """Msg-Ids of conditional publishes a sender awaits (`confirm`), one per execution
        that is starting at most."""
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._acks_due = 0.0
        """When what is in flight counts as unacknowledged: `ACK_WAIT` after the first send
        into an empty window, or after the last ack (loop time)."""
        self._wake = asyncio.Event()
        self._idle = False
        """The task waits for work: a put from another thread must wake it (else it need not:
        a wake per event, across threads, cost more than the event)."""
        self._ttl: OrderedDict[str, str] = OrderedDict()
        """`Nats-TTL` of the executions `retain`ed (bounded by `RETAINED`)."""
        self._guarded: dict[str, tuple[dict[str, str], Callable[[], None]]] = {}
        """Conditions every message of an execution carries while it is `guard`ed (one entry
        per execution starting in this worker: each is `unguard`ed by the end of its run)."""
        self._thread = threading.get_ident()
        self.task = loop.create_task(self._run(), name="kodo-event-publisher")
        self.task.add_done_callback(self._ended)

    def retain(self, execution: str, seconds: float | None) -> None:
        """Store the events of `execution` queued from now on with a TTL of `seconds` (whole
        seconds, at least 1: JetStream's unit); None keeps them for the stream's `max_age`.
        Called on the loop's thread, before the execution's first event."""
        if seconds is None:
            self._ttl.pop(execution, None)
            return
        self._ttl[execution] = str(ttl_seconds(seconds))
        self._ttl.move_to_end(execution)
        if len(self._ttl) > RETAINED:
            self._ttl.popitem(last=False)

    def guard(self, execution: str, condition: dict[str, str], refused: Callable[[], None]) -> None:
        """Send every message of `execution` queued from now on with the headers `condition`
        (a JetStream condition: a message it fails is refused, not re-sent), until `unguard`;
        call `refused` (on the loop) for each one the stream refuses. Called on the loop's
        thread.

        Why: a worker's events are stored only while nobody else ended its execution
        (`lifecycle.not_ended`, `executor._Start`)."""
        self._guarded[execution] = (condition, refused)

    def unguard(self, execution: str) -> None:
        """Messages of `execution` queued from now on go without the `guard`'s condition."""
        self._guarded.pop(execution, None)

    # -- producers (any thread) ----------------------------------------------------------------
    def put(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        """Queue one message; never waits (see `wait_room_sync` and `wait_room` for that)."""
        if self._ttl or self._guarded:
            execution = headers.get(MSG_ID, "").partition(":")[0]
            ttl = self._ttl.get(execution)
            if ttl is not None:
                headers[MSG_TTL] = ttl
            guard = self._guarded.get(execution)
            if guard is not None:
                headers.update(guard[0])
        self._queue.append((subject, body, headers))
        with self._count:
            self._bytes += len(body) + EVENT_OVERHEAD
            if self._bytes > QUEUE_BYTES and not self.full:
                self.full = True
                self._room.clear()
        if threading.get_ident() == self._thread:
            self._wake.set()
        elif self._idle:
            self._idle = False
            self._loop.call_soon_threadsafe(self._wake.set)

    @property
    def queued_bytes(self) -> int:
        """Bytes of events waiting to be sent (bodies plus `EVENT_OVERHEAD` each)."""
        return self._bytes

    @property
    def overflowing(self) -> bool:
        """Past `QUEUE_HARD`: an output event from the loop's thread is refused."""
        return self._bytes > QUEUE_HARD

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread

    def wait_room_sync(self, ended: Callable[[], bool]) -> None:
        """Block this thread (never the loop's) while the queue is full, or until `ended()`."""
        while self.full and not ended() and not self.task.done():
            self._room.wait(ROOM_SLICE)

    async def wait_room(self) -> None:
        """Wait (on the loop) while the queue is full."""
        while self.full and not self.task.done():
            waiter = self._loop.create_future()
            self._room_waiters.append(waiter)
            await waiter

    def refused(self, execution: str, reason: str) -> None:
        """Record an event an emitter refused to queue: the execution's `drain` raises.
        Called on the loop's thread (the only one whose events are refused)."""
        self._record_loss(execution, None, 1, reason)

    # -- the owner (the loop) ------------------------------------------------------------------
    def preceded(self, msg_id: str) -> bool:
        """Whether the conditional publish of `msg_id` (drained since) found a message on its
        subject already; asking forgets it."""
        return self._preceded.pop(msg_id, False) is None

    def confirm(self, message: _Message) -> asyncio.Future[bool]:
        """Queue a conditional publish; the future says whether it was stored (True) or
        refused because its condition failed (False), or raises `EventsNotStored`.

        Unlike `store`, it waits for this one ack only: the queue behind it goes on being
        sent, so an execution starting does not stall every other execution's events."""
        msg_id = message[2][MSG_ID]
        future: asyncio.Future[bool] = self._loop.create_future()
        self._confirming[msg_id] = future
        self.put(*message)
        return future

    def send(self, messages: list[_Message]) -> None:
        """Queue `messages` (stored in order, re-sent as needed) without waiting for them."""
        for message in messages:
            self.put(*message)

    async def store(self, messages: list[_Message], execution: str | None = None) -> None:
        """Queue `messages` behind everything queued before, and return once all is stored
        (`drain`: `EventsNotStored` if any of `execution`'s events were given up on)."""
        self.send(messages)
        await self.drain(execution)

    async def drain(self, execution: str | None = None) -> None:
        """Return once everything queued before this call is stored.

        Raises `EventsNotStored` if events were given up on: with `execution`, only that
        execution's (the publisher is shared, so the worker asks about the one it ends);
        without, every execution's not yet reported. Each loss is reported once.
        """
        if not self.task.done():
            mark = _Mark(self._loop.create_future())
            self._queue.append(mark)
            self._wake.set()
            await mark.future
        else:
            self._abandon("the event publisher is not running")
        self.raise_lost(execution)

    async def written(self) -> None:
        """Return once everything queued before this call is handed to NATS (not stored: its
        acks may still be due).

        Why: what goes out through nats-py directly after it, such as an ending's claim of
        the record, must follow it on the wire; a message only queued here is written after
        whatever the caller sends before it next yields."""
        if self.task.done():
            return
        mark = _Mark(self._loop.create_future(), settle=False)
        self._queue.append(mark)
        self._wake.set()
        await mark.future

    def raise_lost(self, execution: str | None = None) -> None:
        """Raise `EventsNotStored` for events given up on so far (of `execution` only, when
        named) — without waiting for what is still on its way (`drain` waits)."""
        if execution is None:
            lost, self._lost = self._lost, OrderedDict()
        else:
            loss = self._lost.pop(execution, None)
            lost = OrderedDict() if loss is None else OrderedDict({execution: loss})
        if lost:
            raise EventsNotStored(_describe(lost), lost)

    async def stop(self) -> None:
        """Store what is queued, then end the publishing task."""
        if not self.task.done():
            try:
                await self.drain()
            except EventsNotStored as exc:  # nobody is left to end those executions `error`
                log.error("stopping with events not stored: %s", exc)
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            if not self.task.cancelled():
                raise
        if self._acks is not None:
            with contextlib.suppress(Exception):  # a closed connection has no subscriptions
                await self._acks.unsubscribe()
            self._acks = None

    async def _on_ack(self, msg: Msg) -> None:
        try:
            number = int(msg.subject[len(self._inbox) :])
        except ValueError:
            return
        message = self._unacked.pop(number, None)
        if message is None:
            return  # acked after its burst gave up on it: it is being re-sent
        if not msg.data.startswith(STORED):
            if WRONG_LAST_SEQUENCE_ACK in msg.data:
                # A conditional publish refused: settled, not re-sent. Its sender awaits it
                # (`confirm`), is told (`guard`), or asks `preceded` (`execution_id`).
                if not self._confirmed(message, False):
                    msg_id = message[2][MSG_ID]
                    guard = self._guarded.get(msg_id.partition(":")[0])
                    if guard is not None:
                        guard[1]()
                    else:
                        self._preceded[msg_id] = None
                        if len(self._preceded) > LOST_KEPT:
                            self._preceded.popitem(last=False)
            else:
                self._failed[number] = (message, _refusal(msg))
        elif self._confirming:
            self._confirmed(message, True)
        if self._unacked:
            # Acks come back in the order sent: while they come, the rest is on its way. Timed
            # from the oldest send instead, a steady flow whose acks never all came in at once
            # re-sent its latest events every ACK_WAIT (de-duplicated, but sent twice).
            self._acks_due = self._loop.time() + ACK_WAIT
        else:
            self._all_acked.set()
            self._wake.set()  # `_quiet` settles the burst

    def _confirmed(self, message: _Message, stored: bool) -> bool:
        """Tell the sender awaiting `message` (if one does) how it went."""
        future = self._confirming.pop(message[2].get(MSG_ID, ""), None)
        if future is None:
            return False
        if not future.done():
            future.set_result(stored)
        return True

    async def _send(self, message: _Message) -> bool:
        """Publish one message; False if the connection did not take it (later ones would
        not be taken either), True if sent or refused for good (too large for any re-send)."""
        self._sent += 1
        number = self._sent
        subject, body, headers = message
        if not self._nc.is_connected:
            # Not into nats-py's reconnect buffer: flushed on reconnect, it would be stored
            # ahead of the events lost with the connection, out of order, maybe after it was
            # given up on. Re-sent in order once the connection is back.
            self._failed[number] = (message, "not sent (NATS disconnected)")
            return False
        try:
            await self._nc.publish(subject, body, reply=f"{self._inbox}{number}", headers=headers)
        except nats.errors.MaxPayloadError:
            self._refused.append((message, f"larger ({len(body)} bytes) than NATS' max_payload"))
            return True
        except Exception as exc:  # not even sent (reconnecting, closed): re-sent at settle
            self._failed[number] = (message, f"not sent ({type(exc).__name__})")
            return False
        if not self._unacked:
            self._acks_due = self._loop.time() + ACK_WAIT
        self._unacked[number] = message
        self._all_acked.clear()
        return True

    async def _run(self) -> None:
        self._acks = await self._nc.subscribe(self._inbox + "*", cb=self._on_ack)
        while True:
            if not self._queue:
                await self._quiet()
            self._idle = False
            self._wake.clear()
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, _Mark):
                    if item.settle:
                        await self._settle()
                    if not item.future.done():
                        item.future.set_result(None)
                    continue
                if item[0].rpartition(".")[2] in BATCH_KINDS:
                    item, size = self._batch(item)
                else:
                    size = len(item[1]) + EVENT_OVERHEAD
                self._took(size)
                await self._send(item)
                # Unsent ones count too: while the connection is down they must not pile up
                # outside the queue's bound.
                if len(self._unacked) + len(self._failed) + len(self._refused) >= ACK_WINDOW:
                    await self._settle()

    async def _quiet(self) -> None:
        """Nothing queued: wait for work — and, while acks are due, settle once they are all
        in or `ACK_WAIT` has passed since the oldest was sent, whichever comes first.

        Events queued meanwhile go out at once, without waiting for the acks of the last
        burst: a worker's `final` used to wait here for the ack of its `running`, a round trip
        on every execution's path (issue 18). What a burst leaves unstored is still re-sent,
        in order, by `_settle`; a re-sent event may be stored after later ones, as before (readers
        order by seq).

        `_idle` is set before each look at the queue: a thread that queues after the look sees
        it and wakes the task (set after the look, a thread's event queued in between stayed
        queued until some other event or ack came)."""
        while True:
            self._idle = True
            if self._queue:
                return
            if self._failed or self._refused:
                await self._settle()  # refused or unsent: re-sent now, as before
                continue
            if not self._unacked:
                await self._wake.wait()
                self._wake.clear()
                return
            due = self._acks_due - self._loop.time()
            if due <= 0:
                await self._settle()
                continue
            timer = self._loop.call_later(due, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
            self._wake.clear()
            if not self._unacked:
                await self._settle()  # all stored: ends the run of failures, if any

    def _took(self, size: int) -> None:
        """`size` bytes left the queue: wake the waiting emitters once it is half empty."""
        with self._count:
            self._bytes -= size
            if not (self.full and self._bytes <= QUEUE_RESUME):
                return
            self.full = False
            self._room.set()
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _batch(self, first: _Message) -> tuple[_Message, int]:
        """`first` and the events queued right behind it on the same subject, as one message
        (and the queued bytes they stood for)."""
        subject, body, headers = first
        bodies, size, last = [body], len(body), headers
        queue = self._queue
        while queue and len(bodies) < BATCH_MAX:
            head = queue[0]
            if isinstance(head, _Mark) or head[0] != subject or size + len(head[1]) > BATCH_BYTES:
                break
            queue.popleft()
            bodies.append(head[1])
            size += len(head[1])
            last = head[2]
        queued = size + EVENT_OVERHEAD * len(bodies)
        if len(bodies) == 1:
            return first, queued
        last_seq = last[MSG_ID].rpartition(":")[2]
        message = (
            subject,
            b"[" + b",".join(bodies) + b"]",
            {**headers, MSG_ID: f"{headers[MSG_ID]}-{last_seq}"},
        )
        return message, queued

    async def _acked(self, within: float) -> None:
        if self._unacked:  # one wait for the lot: a wait per ack cost more than the publish
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_acked.wait(), max(within, 0.0))

    def _unstored(self) -> list[_Unstored]:
        """What the last burst did not store, in send order (given up at once: the refused)."""
        refused, self._refused = self._refused, []
        for message, why in refused:
            self._give_up(message, why)
        unstored = {n: (m, "no acknowledgement") for n, m in self._unacked.items()}
        unstored.update(self._failed)
        self._failed, self._unacked = {}, {}
        self._all_acked.set()
        return [unstored[n] for n in sorted(unstored)]

    async def _settle(self) -> None:
        """Wait for the acks of what is in flight; re-send together, in order, what was not
        stored, until it is or `RESEND_WITHIN` has passed since the failures began."""
        await self._acked(self._acks_due - self._loop.time())
        unstored = self._unstored()
        if not unstored:
            self._failing_since = None
            return
        clock = self._loop.time
        if self._failing_since is None:
            self._failing_since = clock()
        within = RESEND_WITHIN
        deadline = self._failing_since + within
        pause = RESEND_PAUSE
        while unstored:
            if clock() >= deadline:
                for message, why in unstored:
                    self._give_up(message, f"{why}, still after {within:g} s of re-sends")
                return
            log.debug("%d events not acknowledged: re-sending them", len(unstored))
            await self._resend(unstored)
            await self._acked(min(ACK_WAIT, deadline - clock()))
            unstored = self._unstored()
            if unstored:  # refused at once (no stream, connection down): not in a busy loop
                await asyncio.sleep(max(0.0, min(pause, deadline - clock())))
                pause = min(pause * 2, 1.0)
        self._failing_since = None

    async def _resend(self, unstored: list[_Unstored]) -> None:
        """Send again, in order; stop at the first that cannot be sent (so none overtakes it)."""
        for index, (message, _) in enumerate(unstored):
            if not await self._send(message):
                for rest in unstored[index + 1 :]:  # numbered after it, so they keep their order
                    self._sent += 1
                    self._failed[self._sent] = rest
                return

    def _give_up(self, message: _Message, reason: str) -> None:
        subject, _, headers = message
        msg_id = headers.get(MSG_ID, subject)
        execution, _, seqs = msg_id.partition(":")
        first, _, last = seqs.partition(":")[0].partition("-")
        try:
            events = int(last) - int(first) + 1 if last else 1
        except ValueError:
            events = 1
        log.error("event %s on %s not stored: %s", msg_id, subject, reason)
        self._record_loss(execution, msg_id, events, reason)
        future = self._confirming.pop(msg_id, None)
        if future is not None and not future.done():
            future.set_exception(
                EventsNotStored(f"event {msg_id} not stored: {reason}", [execution])
            )

    def _record_loss(self, execution: str, msg_id: str | None, events: int, reason: str) -> None:
        loss = self._lost.get(execution)
        if loss is None:
            loss = self._lost[execution] = _Loss()
            if len(self._lost) > LOST_KEPT:
                forgotten, _ = self._lost.popitem(last=False)
                log.error("forgetting the lost events of %s (nobody drained it)", forgotten)
        loss.events += events
        loss.reason = reason
        if msg_id is not None and len(loss.ids) < LOST_IDS_SHOWN:
            loss.ids.append(msg_id)

    def _abandon(self, reason: str) -> None:
        """The task is gone: give up on everything it held and free whoever waits on it."""
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Mark):
                if not item.future.done():
                    item.future.set_result(None)
            else:
                self._give_up(item, reason)
        for message, _ in self._unstored():
            self._give_up(message, reason)
        with self._count:
            self._bytes = 0
            self.full = True  # so _took below wakes every waiter
        self._took(0)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("the event publisher stopped: %r", exc, exc_info=exc)
            self._abandon(f"the event publisher stopped: {exc!r}")
        else:
            self._abandon("the event publisher stopped")


def _refusal(msg: Msg) -> str:
    """Why an ack says the message was not stored (by JetStream's error code, not its text)."""
    status = (msg.headers or {}).get(Header.STATUS)
    if not msg.data and status:
        return f"no stream took it (status {status})"
    try:
        error = json.loads(msg.data)["error"]
        return f"refused by JetStream (err_code {error.get('err_code')})"
    except (ValueError, KeyError, TypeError, AttributeError):
        return "an ack that is not JetStream's"


def _describe(lost: OrderedDict[str, _Loss]) -> str:
    parts = []
    for execution, loss in lost.items():
        ids = f" ({', '.join(loss.ids)})" if loss.ids else ""
        parts.append(f"{loss.events} events of {execution}{ids}: {loss.reason}")
    return "events not stored: " + "; ".join(parts)
