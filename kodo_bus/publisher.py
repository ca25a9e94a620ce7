"""Pipelined, acknowledged JetStream publishing of events, in order, on one connection.

Why not one `js.publish` per event: that waits a round trip per event. Why not core publishes:
they were silently dropped while a server restarted or a stream elected a new leader. So events
go out back to back (`publish_async`), and every ack is checked after each burst; an event the
stream did not confirm is re-sent with the same `Nats-Msg-Id`, which JetStream de-duplicates.
A re-sent event may be stored after later ones; readers order by `seq` (`Execution.events`).

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
import functools
import logging
import threading
from collections import deque
from typing import Any

from .bus import js_retry
from .codec import MSG_ID

log = logging.getLogger("kodo_bus.publisher")

ACK_WINDOW = 1000
"""Events in flight before the publisher waits for their acks."""
ACK_WAIT = 2.0
"""Seconds to wait for one event's ack before re-sending it."""
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

    def __init__(self, js: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._js = js
        self._loop = loop
        self._queue: deque[_Message | _Mark] = deque()
        self._inflight: list[tuple[_Message, asyncio.Future[Any]]] = []
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

    async def _run(self) -> None:
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
                try:
                    ack = await self._js.publish_async(item[0], item[1], headers=item[2])
                except Exception as exc:  # not even sent (reconnecting): re-sent at settle
                    ack = self._loop.create_future()
                    ack.set_exception(exc)
                self._inflight.append((item, ack))
                if len(self._inflight) >= ACK_WINDOW:
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
        inflight, self._inflight = self._inflight, []
        waiting = [ack for _, ack in inflight if not ack.done()]
        if waiting:  # one wait for the lot: a wait_for per ack cost more than the publish
            await asyncio.wait(waiting, timeout=ACK_WAIT)
        for (subject, body, headers), ack in inflight:
            if ack.done() and not ack.cancelled() and ack.exception() is None:
                continue
            if not ack.done():
                ack.cancel()
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
