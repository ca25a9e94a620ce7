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

Used by the Ray actors (every event of a running flow) and by the node's runner (the events
before the hand-over), so both number and deliver events the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections import deque

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .bus import js_retry
from .codec import MSG_ID

log = logging.getLogger("kodo_bus.publisher")

ACK_WINDOW = 1000
"""Events in flight before the publisher waits for their acks."""
ACK_WAIT = 2.0
"""Seconds to wait for the acks of a burst before re-sending the events that have none."""
STORED = b'{"stream"'
"""How a JetStream ack that stored the message begins (an error is `{"error":...}`, no
responders an empty 503 status)."""
RESEND_WITHIN = 60.0
"""Seconds a re-send is retried (a server restart, a stream leader election) before giving up."""

BATCH_KINDS = frozenset({"markdown", "text", "html", "stdout", "stderr"})
"""Event kinds whose bursts travel as one message (a JSON array of events)."""
BATCH_MAX = 50
"""Events in one message at most."""
BATCH_BYTES = 64 * 1024
"""Bytes of one message at most (well under NATS' max_payload)."""

_Message = tuple[str, bytes, dict[str, str]]


class _Mark:
    """A position in the queue: resolved once everything before it is stored."""

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future


class EventPublisher:
    """Queue events from any thread; they are published in queue order and all acknowledged."""

    def __init__(self, nc: NATS, loop: asyncio.AbstractEventLoop) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._loop = loop
        self._queue: deque[_Message | _Mark] = deque()
        self._inbox = nc.new_inbox() + "."
        self._acks: Subscription | None = None
        self._sent = 0
        """Events sent so far: the last one's number is its reply subject's last token."""
        self._unacked: dict[int, _Message] = {}
        self._failed: dict[int, _Message] = {}
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._wake = asyncio.Event()
        self._idle = False
        """The task waits for work: a put from another thread must wake it (else it need not:
        a wake per event, across threads, cost more than the event)."""
        self._thread = threading.get_ident()
        self.task = loop.create_task(self._run(), name="kodo-event-publisher")
        self.task.add_done_callback(_report)

    def put(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        self._queue.append((subject, body, headers))
        if threading.get_ident() == self._thread:
            self._wake.set()
        elif self._idle:
            self._idle = False
            self._loop.call_soon_threadsafe(self._wake.set)

    async def drain(self) -> None:
        """Return once everything queued before this call is stored (acknowledged)."""
        mark = _Mark(self._loop.create_future())
        self._queue.append(mark)
        self._wake.set()
        await mark.future

    async def stop(self) -> None:
        """Store what is queued, then end the publishing task."""
        if not self.task.done():
            await self.drain()
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
            self._failed[number] = message
        if not self._unacked:
            self._all_acked.set()

    async def _send(self, message: _Message) -> None:
        self._sent += 1
        number = self._sent
        self._unacked[number] = message
        self._all_acked.clear()
        subject, body, headers = message
        try:
            await self._nc.publish(subject, body, reply=f"{self._inbox}{number}", headers=headers)
        except Exception:  # not even sent (reconnecting): re-sent at settle
            self._failed[number] = self._unacked.pop(number)
            if not self._unacked:
                self._all_acked.set()

    async def _run(self) -> None:
        self._acks = await self._nc.subscribe(self._inbox + "*", cb=self._on_ack)
        while True:
            self._idle = True
            if not self._queue:
                await self._wake.wait()
            self._idle = False
            self._wake.clear()
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, _Mark):
                    await self._settle()
                    if not item.future.done():
                        item.future.set_result(None)
                    continue
                if item[0].rpartition(".")[2] in BATCH_KINDS:
                    item = self._batch(item)
                await self._send(item)
                if len(self._unacked) >= ACK_WINDOW:
                    await self._settle()
            await self._settle()

    def _batch(self, first: _Message) -> _Message:
        """`first` and the events queued right behind it on the same subject, as one message."""
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
        if len(bodies) == 1:
            return first
        last_seq = last[MSG_ID].rpartition(":")[2]
        return (
            subject,
            b"[" + b",".join(bodies) + b"]",
            {**headers, MSG_ID: f"{headers[MSG_ID]}-{last_seq}"},
        )

    async def _settle(self) -> None:
        """Wait for the acks of what is in flight; re-send, in order, what was not stored."""
        if self._unacked:  # one wait for the lot: a wait per ack cost more than the publish
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_acked.wait(), ACK_WAIT)
        lost = {**self._failed, **self._unacked}
        self._failed, self._unacked = {}, {}
        self._all_acked.set()
        for number in sorted(lost):
            subject, body, headers = lost[number]
            log.debug("event on %s not acknowledged: re-sending", subject)
            try:
                await js_retry(
                    functools.partial(self._js.publish, subject, body, headers=headers),
                    f"publish on {subject}",
                    RESEND_WITHIN,
                )
            except Exception:
                log.exception("cannot publish event on %s", subject)


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the event publisher stopped: %r", exc, exc_info=exc)
