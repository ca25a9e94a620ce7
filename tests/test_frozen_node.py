"""A node frozen past its ttl (SIGSTOP) while its Ray actor goes on running a flow that emits:
the registry ends the execution `lost`, and the worker, alive, keeps publishing.

Real nats-server, `kodo-bus run` registry and node, real Ray. The promise attacked: every
execution ends exactly once, nothing stored after its terminal status, seqs each once, the
record equal to it (the `invariants` fixture checks every execution of the test) — here with a
worker that publishes after its execution was ended. A plain subscriber hears what the worker
publishes whether or not JetStream stores it, so the test waits until it heard an event the
stream refused: the fence (`lifecycle.fence`) met a live worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from kodo_bus import subjects
from kodo_bus.client import Client
from kodo_bus.codec import decode_events
from kodo_bus.errors import ExecutionLost
from kodo_bus.server import NatsServer

from .conftest import Processes
from .test_reliability_support import all_events, check_complete, node_body, online_flow, service

pytestmark = [pytest.mark.usefixtures("invariants"), pytest.mark.ray]


class _Heard:
    """The seqs of `text` events a plain subscriber heard, and conditions on them."""

    def __init__(self) -> None:
        self.seqs: set[int] = set()
        self.stored: set[int] | None = None
        self.emitting = asyncio.Event()
        self.refused = asyncio.Event()

    async def on_message(self, msg: Msg) -> None:
        self.seqs.update(e.seq for e in decode_events(msg.subject, msg.data, msg.headers))
        self.check()

    def check(self) -> None:
        if len(self.seqs) >= 200:
            self.emitting.set()
        if self.stored is not None and self.seqs - self.stored:
            self.refused.set()


async def test_a_frozen_node_s_execution_ends_once_while_its_worker_runs_on(
    nats_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path
) -> None:
    node = f"frozen-{time.monotonic_ns() % 10**9}"
    urls = [nats_server.url]
    service(procs, tmp_path, urls, id=f"reg-{node}", role="registry")
    victim = service(procs, tmp_path, urls, ray_address, **node_body(node))
    heard = _Heard()
    async with Client(nats_server.url, user="local") as kb:
        emit = await online_flow(kb, f"{node}/emit")
        execution_id = f"frozen-{os.urandom(8).hex()}"
        await kb.nc.subscribe(subjects.events("local", execution_id, "text"), cb=heard.on_message)
        inputs = {"n": 100_000, "batch": 10, "pause": 0.005}  # ~2,000 events/s for 50 s
        ex = await emit.launch(inputs, execution_id=execution_id)
        await asyncio.wait_for(heard.emitting.wait(), 30)
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            with pytest.raises(ExecutionLost):
                await ex.result(timeout=60)  # the registry ended it; the node is still frozen
            events = await all_events(ex)
            check_complete(events)
            heard.stored = {e.seq for e in events if e.kind == "text"}
            heard.check()
            # The worker ran on: it published an event the stream did not store.
            await asyncio.wait_for(heard.refused.wait(), 30)
        finally:
            os.kill(victim.pid, signal.SIGCONT)
