"""EventPublisher: every event stored once, in seq order, each ack recognised on the first try."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from kodo_bus.bus import connect, ensure_execution_storage
from kodo_bus.config import ConnectSettings
from kodo_bus.publisher import EventPublisher
from kodo_bus.server import NatsServer
from kodo_bus.tracer import Emitter

from .test_execution_support import check_well_formed, read_events


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
