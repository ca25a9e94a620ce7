"""`snapshot.current` waits for the count it took at its start: bounded, with a typed outcome."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from nats.js.api import StreamConfig

from kodo_bus import snapshot
from kodo_bus.bus import connect, jetstream
from kodo_bus.config import ConnectSettings
from kodo_bus.errors import KodoError, SnapshotStalled
from kodo_bus.server import NatsServer

MESSAGES = 4000
BODY = b"x" * 8192
IDLE = 1.0


async def test_a_stalled_server_ends_the_pass_with_a_typed_timeout(
    fresh_server: NatsServer,
) -> None:
    """A server that stops answering mid-pass (SIGSTOP: the connection stays up, nothing comes)
    used to leave the reader waiting forever for the messages it had counted."""
    nc = await connect(ConnectSettings(nats=[fresh_server.url]))
    pid = fresh_server.pid
    assert pid is not None
    stopped = False
    try:
        js = jetstream(nc)
        await js.add_stream(StreamConfig(name="SNAP", subjects=["snap.>"]))
        for start in range(0, MESSAGES, 500):
            await asyncio.gather(
                *(js.publish(f"snap.{i}", BODY) for i in range(start, start + 500))
            )
        messages = snapshot.current(js, "SNAP", "snap.>", last_per_subject=False, idle=IDLE)
        seen = 0
        started = 0.0
        try:
            async with asyncio.timeout(60):  # the old code hangs here: a bare TimeoutError
                async for _ in messages:
                    seen += 1
                    if seen == 1:
                        os.kill(pid, signal.SIGSTOP)  # stops delivering, keeps the socket
                        stopped = True
                        started = time.monotonic()
        except SnapshotStalled as exc:
            waited = time.monotonic() - started
            assert isinstance(exc, KodoError) and isinstance(exc, TimeoutError)
            assert seen < MESSAGES, "every message came before the server stopped"
            assert waited < 2 * IDLE + 5, f"typed error only after {waited:.1f} s"
        else:
            raise AssertionError(f"the pass ended with {seen} of {MESSAGES} messages")
        finally:
            await messages.aclose()
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        with contextlib.suppress(Exception):
            await nc.close()
