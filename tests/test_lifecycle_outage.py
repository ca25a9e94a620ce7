"""An outside ender (or a repair by `mark_lost`) stores ending events with retries. While the
connection is down nats-py would keep every attempt in its reconnect buffer and write them all
once back, however late: past the events stream's duplicate window, a copy whose first store
lost its ack is a second ending event, stored after the terminal status (found by review).
`lifecycle.publish` hands nothing to nats-py while disconnected. Real nats-server, stopped and
started again; the window is made short so the outage outlasts it in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from kodo_bus import bus, lifecycle, subjects
from kodo_bus.bus import ensure_execution_storage, jetstream
from kodo_bus.config import DUPLICATE_WINDOW
from kodo_bus.models import ExecutionRecord
from kodo_bus.server import NatsServer

WINDOW = 2.0


async def until(check: object, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


def test_an_enders_retries_end_within_the_duplicate_window() -> None:
    assert lifecycle.PUBLISH_WITHIN < DUPLICATE_WINDOW


async def test_no_ending_event_is_stored_twice_after_a_long_outage(
    fresh_server: NatsServer, nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bus, "DUPLICATE_WINDOW", WINDOW)
    monkeypatch.setattr(lifecycle, "PUBLISH_WITHIN", WINDOW / 2)
    js = jetstream(nc)
    await ensure_execution_storage(js, max_age=3600)
    now = time.time()
    record = ExecutionRecord(
        execution="late-dup-0000", flow="f", node="n1", launcher="local",
        status="lost", created=now, updated=now, last_seq=5,
    )  # fmt: skip
    messages = lifecycle.ending_messages(record, 3, "lost", lifecycle.error_of("E", "gone"))
    await lifecycle.publish(js, messages)  # stored; say its ack was lost with the connection
    stored_at = time.monotonic()
    fresh_server.stop()
    await until(lambda: nc.is_reconnecting, 15)
    retry = asyncio.create_task(lifecycle.publish(js, messages))  # the ender's retries
    try:
        await until(lambda: time.monotonic() > stored_at + WINDOW + 1, 30)
        fresh_server.restart()
        await until(lambda: nc.is_connected, 30)
        with pytest.raises(nats.errors.ConnectionReconnectingError):
            await asyncio.wait_for(retry, 10)  # given up while disconnected: nothing sent
    finally:
        retry.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await retry
    await nc.flush()
    ids = await stored_ids(js, subjects.events("local", record.execution, "*"))
    assert len(ids) == len(messages)
    assert len(ids) == len(set(ids)), f"an ending event stored twice: {ids}"


async def stored_ids(js: JetStreamContext, subject: str) -> list[str]:
    ids: list[str] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(subjects.STREAM_EVENTS, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return ids
        ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))
        seq = int(msg.seq or seq) + 1
