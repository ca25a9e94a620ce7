"""EventPublisher: every event stored once, in seq order, each ack recognised on the first try;
a flow that emits faster than NATS takes is slowed, not let grow the queue; events that cannot
be stored are reported, never taken for stored."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import pytest
from nats.js import JetStreamContext

from kodo_bus import publisher as publisher_module
from kodo_bus import subjects
from kodo_bus.bus import connect, ensure_execution_storage
from kodo_bus.codec import decode_many
from kodo_bus.config import ACK_WAIT, RESEND_WITHIN, ConnectSettings
from kodo_bus.errors import EventsNotStored
from kodo_bus.models import Event
from kodo_bus.publisher import QUEUE_BYTES, QUEUE_HARD, EventPublisher
from kodo_bus.server import NatsServer
from kodo_bus.tracer import Emitter, Tracer

from .test_execution_support import check_well_formed, eventually, read_events


async def test_events_are_stored_in_order_and_acked_without_a_resend(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A publisher that misread a good ack would re-send every event (slowly, but correctly):
    only the absence of re-sends shows the ack check recognises what the stream stored."""
    caplog.set_level(logging.DEBUG, logger="kodo_bus.publisher")
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    try:
        js = nc.jetstream()
        await ensure_execution_storage(js, max_age=3600)
        publisher = EventPublisher(nc, asyncio.get_running_loop())
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
        emitter.emit("status", {"status": "running"})
        for i in range(300):  # bursts (markdown) and single events (progress) interleaved
            emitter.emit("markdown" if i % 3 else "progress", f"line {i}")
        emitter.emit("final", 1)
        emitter.emit("status", {"status": "finished"})
        await publisher.drain()
        await publisher.stop()

        events = await read_events(js, execution)
        check_well_formed(events)
        assert len(events) == 303
        assert [e.data for e in events if e.kind == "markdown"][:2] == ["line 1", "line 2"]
        resent = [r for r in caplog.records if "re-sending" in r.getMessage()]
        assert not resent
    finally:
        await nc.close()


# -- bounded buffers, back-pressure, re-sends and losses (issue 14, finding 9) ------------------


def _base(execution: str) -> dict[str, Any]:
    return {
        "execution": execution,
        "node": "n",
        "flow": "f",
        "launcher": "local",
        "parent": None,
        "root": execution,
    }


def _end(emitter: Emitter) -> None:
    emitter.flush_output()
    emitter.emit("final", None)
    emitter.emit("status", {"status": "finished"})
    emitter.close()


async def _check_stored_once(js: JetStreamContext, execution: str, count: int) -> None:
    """Every seq 1..count stored exactly once, and the execution well formed in seq order.

    Read to the end of the stream, not to the terminal status: a re-sent event may be stored
    after later ones (readers order by seq)."""
    sub = await js.subscribe(subjects.events_of_execution(execution), ordered_consumer=True)
    events: list[Event] = []
    try:
        async with asyncio.timeout(120):
            while len(events) < count:
                msg = await sub.next_msg(timeout=60)
                events.extend(decode_many(msg.subject, msg.data, msg.headers, Event))
        assert (await sub.consumer_info()).num_pending == 0  # nothing more: no duplicate
    finally:
        await sub.unsubscribe()
    assert sorted(e.seq for e in events) == list(range(1, count + 1))
    check_well_formed(sorted(events, key=lambda e: e.seq))


async def test_a_thread_flooding_through_an_outage_is_slowed_not_queued_without_bound(
    fresh_server: NatsServer,
) -> None:
    """A sync flow `print`s 200,000 lines as fast as it can while the nats-server goes away and
    comes back: the thread waits while the queue is full, the queue never holds much more than
    its bound, and every event is stored exactly once."""
    total = 200_000
    nc = await connect(ConnectSettings(nats=[fresh_server.url]))
    publisher = EventPublisher(nc, asyncio.get_running_loop())
    execution = os.urandom(16).hex()
    emitter = Emitter(_base(execution), 0, publisher.put)
    emitted = 0
    peak = 0

    def flood() -> None:
        nonlocal emitted, peak
        for i in range(total):
            emitter.write("stdout", f"line {i} of a flood\n")
            emitted += 1
            peak = max(peak, publisher.queued_bytes)

    try:
        js = nc.jetstream()
        await ensure_execution_storage(js, max_age=3600)
        thread = asyncio.create_task(asyncio.to_thread(flood))
        await eventually(lambda: emitted > 1000, timeout=30)
        fresh_server.stop()  # nothing is stored from now on: the queue fills
        await eventually(lambda: publisher.queued_bytes >= QUEUE_BYTES or thread.done(), 60)
        assert not thread.done(), f"the flood ran to its end ({emitted} events) unslowed"
        fresh_server.restart()
        async with asyncio.timeout(120):
            await thread
        _end(emitter)
        await publisher.drain()
        assert peak <= QUEUE_BYTES + 64 * 1024, f"{peak} bytes queued"
        await _check_stored_once(js, execution, total + 2)
    finally:
        emitter.close()  # a thread still waiting for room gives up
        await publisher.stop()
        await nc.close()


async def test_awaiting_tracer_calls_wait_for_room(nats_server: NatsServer) -> None:
    """`await tracer.markdown(...)` in a loop never yields while there is room; past the bound
    it waits for the publisher instead of queueing everything first."""
    total = 100_000
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    loop = asyncio.get_running_loop()
    publisher = EventPublisher(nc, loop)
    execution = os.urandom(16).hex()
    emitter = Emitter(_base(execution), 0, publisher.put)

    async def on_status(status: str) -> None:
        pass

    tracer = Tracer(emitter, nc, loop, on_status)
    try:
        js = nc.jetstream()
        await ensure_execution_storage(js, max_age=3600)
        peak = 0
        for i in range(total):
            await tracer.markdown(f"paragraph {i} " + "x" * 200)
            peak = max(peak, publisher.queued_bytes)
        _end(emitter)
        await publisher.drain()
        assert peak <= QUEUE_BYTES + 64 * 1024, f"{peak} bytes queued"
        await _check_stored_once(js, execution, total + 2)
    finally:
        await publisher.stop()
        await nc.close()


async def test_printing_on_the_event_loop_is_refused_past_the_hard_cap(
    nats_server: NatsServer,
) -> None:
    """A `print` loop in an async flow that never awaits cannot be slowed (it runs on the
    loop the publisher needs): past the hard cap it raises `EventsNotStored` in the flow, the
    queue stays bounded, the execution's drain reports the loss, and what was taken is stored
    without a gap."""
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    publisher = EventPublisher(nc, asyncio.get_running_loop())
    execution = os.urandom(16).hex()
    emitter = Emitter(_base(execution), 0, publisher.put)
    try:
        js = nc.jetstream()
        await ensure_execution_storage(js, max_age=3600)
        line = "y" * 1000 + "\n"
        with pytest.raises(EventsNotStored) as refused:
            for _ in range(2 * QUEUE_HARD // len(line)):  # never yields to the loop
                emitter.write("stdout", line)
        assert refused.value.executions == {execution}
        assert publisher.queued_bytes <= QUEUE_HARD + 2 * len(line)
        taken = emitter.seq
        _end(emitter)  # statuses and the ending are never refused
        with pytest.raises(EventsNotStored) as lost:
            await publisher.drain(execution)
        assert lost.value.executions == {execution}
        assert "refused" in str(lost.value)
        await _check_stored_once(js, execution, taken + 2)
        await publisher.drain(execution)  # each loss is reported once
    finally:
        await publisher.stop()
        await nc.close()


async def test_drain_raises_when_the_server_is_gone(
    fresh_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server is stopped with events of two executions queued: `drain()` raises
    `EventsNotStored` naming both within one re-send bound, instead of reporting success after
    re-sending each event for a bound of its own."""
    monkeypatch.setattr(publisher_module, "RESEND_WITHIN", 3.0)
    nc = await connect(ConnectSettings(nats=[fresh_server.url]))
    publisher = EventPublisher(nc, asyncio.get_running_loop())
    a, b = os.urandom(16).hex(), os.urandom(16).hex()
    try:
        await ensure_execution_storage(nc.jetstream(), max_age=3600)
        first = Emitter(_base(a), 0, publisher.put)
        second = Emitter(_base(b), 0, publisher.put)
        first.emit("status", {"status": "running"})
        await publisher.drain()  # stored: not part of the loss
        fresh_server.stop()
        for i in range(100):
            first.emit("progress", {"done": i})
            second.emit("markdown", f"line {i}")
        started = time.monotonic()
        with pytest.raises(EventsNotStored) as lost:
            async with asyncio.timeout(30):
                await publisher.drain()
        assert time.monotonic() - started < 3.0 + 2 * ACK_WAIT + 2
        assert lost.value.executions == {a, b}
        await publisher.drain()  # reported once
    finally:
        await publisher.stop()
        await nc.close()


async def test_drain_of_one_execution_reports_its_losses_only(
    fresh_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One publisher serves every execution of an actor: `drain(execution)` raises for that
    execution's lost events and leaves another's loss for its own drain."""
    monkeypatch.setattr(publisher_module, "RESEND_WITHIN", 1.0)
    nc = await connect(ConnectSettings(nats=[fresh_server.url]))
    publisher = EventPublisher(nc, asyncio.get_running_loop())
    a, b, c = (os.urandom(16).hex() for _ in range(3))
    try:
        await ensure_execution_storage(nc.jetstream(), max_age=3600)
        fresh_server.stop()
        Emitter(_base(a), 0, publisher.put).emit("status", {"status": "running"})
        Emitter(_base(b), 0, publisher.put).emit("status", {"status": "running"})
        async with asyncio.timeout(30):
            await publisher.drain(c)  # c lost nothing
            with pytest.raises(EventsNotStored) as lost_a:
                await publisher.drain(a)
            assert lost_a.value.executions == {a}
            assert f"{a}:1" in str(lost_a.value)
            with pytest.raises(EventsNotStored) as lost_b:
                await publisher.drain(b)
            assert lost_b.value.executions == {b}
    finally:
        await publisher.stop()
        await nc.close()


async def test_unstored_events_of_a_burst_are_resent_together(
    fresh_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No stream captures the events (every publish answered 503): the burst's re-sends take
    one bound in all and end in `EventsNotStored`, not one bound per event and success."""
    monkeypatch.setattr(publisher_module, "RESEND_WITHIN", 2.0)
    nc = await connect(ConnectSettings(nats=[fresh_server.url]))
    publisher = EventPublisher(nc, asyncio.get_running_loop())
    execution = os.urandom(16).hex()
    emitter = Emitter(_base(execution), 0, publisher.put)
    try:
        for i in range(50):
            emitter.emit("progress", {"done": i})
        started = time.monotonic()
        with pytest.raises(EventsNotStored) as lost:
            async with asyncio.timeout(30):
                await publisher.drain()
        assert time.monotonic() - started < 2.0 + 2 * ACK_WAIT + 2
        assert lost.value.executions == {execution}
        assert "50 events" in str(lost.value)
    finally:
        await publisher.stop()
        await nc.close()


async def test_a_burst_resent_once_the_stream_exists_is_stored_once(
    fresh_server: NatsServer,
) -> None:
    """The stream appears while a burst is being re-sent: every event is stored exactly once
    (re-sent together with their ids, so a copy stored twice is de-duplicated), and drain
    succeeds well within the bound."""
    nc = await connect(ConnectSettings(nats=[fresh_server.url]))
    publisher = EventPublisher(nc, asyncio.get_running_loop())
    execution = os.urandom(16).hex()
    emitter = Emitter(_base(execution), 0, publisher.put)
    try:
        emitter.emit("status", {"status": "running"})
        for i in range(500):
            emitter.emit("markdown" if i % 3 else "progress", f"line {i}")
        _end(emitter)
        drained = asyncio.create_task(publisher.drain())
        js = nc.jetstream()
        await asyncio.sleep(0)  # the burst goes out before the stream exists
        await eventually(lambda: publisher.queued_bytes == 0, timeout=10)
        await ensure_execution_storage(js, max_age=3600)
        async with asyncio.timeout(RESEND_WITHIN):
            await drained
        await _check_stored_once(js, execution, 503)
    finally:
        await publisher.stop()
        await nc.close()


async def test_an_event_larger_than_max_payload_is_given_up_at_once(
    nats_server: NatsServer,
) -> None:
    """No re-send can store an event larger than the server takes: it is reported lost at
    once, not re-tried for the whole bound, nor dropped with a log line and drain succeeding."""
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    publisher = EventPublisher(nc, asyncio.get_running_loop())
    execution = os.urandom(16).hex()
    emitter = Emitter(_base(execution), 0, publisher.put)
    try:
        await ensure_execution_storage(nc.jetstream(), max_age=3600)
        emitter.emit("text", "z" * (nc.max_payload + 1))
        with pytest.raises(EventsNotStored) as lost:
            async with asyncio.timeout(2 * ACK_WAIT + 2):
                await publisher.drain()
        assert lost.value.executions == {execution}
    finally:
        await publisher.stop()
        await nc.close()
