"""EventPublisher: an event a thread queues (a sync flow's `print`) goes out at once, whatever
the publisher's task was doing at that moment — never left queued until some other event or
ack happens to wake the task.

The interleaving is forced, not waited for by luck: the publisher's queue is replaced by one
that, the moment the task finds it empty on its way to sleep, has another thread queue an event
(what a thread switch right after that check does by chance).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import nats.js.errors

from kodo_bus import subjects
from kodo_bus.bus import connect, ensure_execution_storage
from kodo_bus.config import ConnectSettings
from kodo_bus.publisher import EventPublisher
from kodo_bus.server import NatsServer
from kodo_bus.tracer import Emitter

from .test_execution_support import eventually


class _PutWhenFoundEmpty(deque[Any]):
    """A queue that, once `arm`ed, has another thread put an event right after the publisher's
    idle wait found it empty (and reports it empty, as the check saw it)."""

    def __init__(self, loop_thread: int) -> None:
        super().__init__()
        self._loop_thread = loop_thread
        self._put: Callable[[], object] | None = None
        self.fired = 0

    def arm(self, put: Callable[[], object]) -> None:
        self._put = put

    def __len__(self) -> int:
        length = super().__len__()
        put = self._put
        if (
            put is not None
            and length == 0
            and threading.get_ident() == self._loop_thread
            and sys._getframe(1).f_code.co_name == "_quiet"
        ):
            self._put = None
            self.fired += 1
            thread = threading.Thread(target=put)
            thread.start()
            thread.join()
        return length


async def test_an_event_a_thread_queues_as_the_publisher_goes_idle_goes_out(
    nats_server: NatsServer,
) -> None:
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    try:
        js = nc.jetstream()
        await ensure_execution_storage(js, max_age=3600)
        publisher = EventPublisher(nc, asyncio.get_running_loop())
        queue = _PutWhenFoundEmpty(threading.get_ident())
        publisher._queue = queue
        execution = os.urandom(16).hex()
        base = {
            "execution": execution,
            "node": "n",
            "flow": "f",
            "launcher": "local",
            "parent": None,
            "root": execution,
        }
        emitter = Emitter(base, 0, publisher.put)
        emitter.emit("progress", "before")
        await publisher.drain()  # all acked: the task goes idle right after this
        # A drain with nothing queued (the runner's before an outside ending, a `written`
        # with nothing before it): the task wakes, finds nothing sent and nothing to ack, and
        # goes back to sleep — that is when the thread's event comes.
        queue.arm(lambda: emitter.emit("progress", "from a thread"))
        await publisher.drain()
        await eventually(lambda: queue.fired == 1, timeout=5)

        subject = subjects.events("local", execution, "progress")

        async def stored_last() -> int:
            try:
                msg = await js.get_last_msg(subjects.STREAM_EVENTS, subject, direct=True)
            except nats.js.errors.NotFoundError:
                return 0
            return int(msg.headers["Nats-Msg-Id"].rpartition(":")[2]) if msg.headers else 0

        deadline = asyncio.get_running_loop().time() + 5.0  # > ACK_WAIT: no timer saves it
        while (last := await stored_last()) < 2:
            assert asyncio.get_running_loop().time() < deadline, (
                f"the thread's event (seq 2) was not stored within 5 s: last stored seq {last}, "
                f"{len(publisher._queue)} queued"
            )
            await asyncio.sleep(0.05)
        await publisher.stop()
    finally:
        await nc.drain()
