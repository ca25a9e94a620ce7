"""Helpers of the execution tests: an in-process runner and an event reader (no tests here)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from kodo_bus import subjects
from kodo_bus.bus import connect, request
from kodo_bus.codec import decode_many
from kodo_bus.config import ConnectSettings, FlowDecl, ServiceSettings
from kodo_bus.executions import create_record, event_message
from kodo_bus.flows import load_flows
from kodo_bus.lifecycle import envelope
from kodo_bus.models import TERMINAL_STATUSES, Event, ExecutionRecord, LaunchReply, LaunchRequest
from kodo_bus.runner import Runner

FLOWS = "tests.test_execution_flows"

FIRST_EVENTS: list[tuple[str, Any]] = [
    ("meta", {}),
    ("inputs", {}),
    ("status", {"status": "running"}),
]
"""meta, inputs and a `running` status: what a node leaves of an execution its worker runs."""


async def handmade(
    js: JetStreamContext, kv: KeyValue, trail: Sequence[tuple[str, Any]], **fields: Any
) -> tuple[ExecutionRecord, int]:
    """An execution written by hand as a node would leave it: a `running` record (`fields`
    override any of it) and the events of `trail` as seqs 1..n; the record and its revision."""
    now = time.time()
    record = ExecutionRecord.model_validate(
        {
            "execution": os.urandom(16).hex(),
            "flow": "f",
            "node": f"n-{time.monotonic_ns()}",
            "launcher": "local",
            "status": "running",
            "created": now,
            "updated": now,
            **fields,
        }
    )
    revision = await create_record(kv, record)
    for seq, (kind, data) in enumerate(trail, 1):
        event = Event(seq=seq, ts=now, kind=kind, data=data, **envelope(record))
        subject, body, headers = event_message(event)
        await js.publish(subject, body, headers=headers)
    return record, revision


async def read_events(js: JetStreamContext, execution: str, timeout: float = 60.0) -> list[Event]:
    """Every event of an execution, from the stream, up to and including its terminal status."""
    sub = await js.subscribe(subjects.events_of_execution(execution), ordered_consumer=True)
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{execution} did not end; got {[e.kind for e in events]}")
            msg = await sub.next_msg(timeout=left)
            batch = decode_many(msg.subject, msg.data, msg.headers, Event)  # a burst: an array
            events.extend(batch)
            event = batch[-1]
            if event.kind == "status" and event.data["status"] in TERMINAL_STATUSES:
                return events
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def status_of(events: Sequence[Event]) -> list[str]:
    return [e.data["status"] for e in events if e.kind == "status"]


def check_well_formed(events: Sequence[Event]) -> None:
    """Seq 1..n without gaps, one terminal status, last, right after exactly one final/error."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    terminal = [s for s in status_of(events) if s in TERMINAL_STATUSES]
    assert len(terminal) == 1
    assert events[-1].kind == "status"
    endings = [e for e in events if e.kind in ("final", "error")]
    assert len(endings) == 1
    assert events[-2] is endings[0]


class Node:
    """A runner in this process, with its own NATS connection."""

    def __init__(self, nc: NATS, runner: Runner, node: str) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.runner = runner
        self.id = node

    async def launch(
        self, flow: str, inputs: dict[str, Any], user: str = "local", **extra: Any
    ) -> LaunchReply:
        return await request(
            self.nc,
            subjects.launch(user, self.id, flow),
            LaunchRequest(inputs=inputs, **extra),
            LaunchReply,
            timeout=10,
        )

    async def run(self, flow: str, inputs: dict[str, Any], **extra: Any) -> list[Event]:
        reply = await self.launch(flow, inputs, **extra)
        return await read_events(self.js, reply.execution)


NodeFactory = Callable[..., Any]


@pytest.fixture
async def make_node(nats_server: Any, ray_address: str) -> AsyncIterator[NodeFactory]:
    """Start in-process runners (flows of `tests.test_execution_flows`); stopped at test end."""
    started: list[Node] = []
    counter = iter(range(1000))

    async def make(url: str | None = None, **settings: Any) -> Node:
        url = url or nats_server.url
        node = settings.pop("id", None) or f"n{next(counter)}-{time.monotonic_ns() % 10**9}"
        s = ServiceSettings(id=node, nats=[url], grace=settings.pop("grace", 2), **settings)
        flows = load_flows([FlowDecl(module=FLOWS)])
        nc = await connect(ConnectSettings(nats=[url]))
        runner = Runner(nc, s, flows)
        await runner.start()
        n = Node(nc, runner, node)
        started.append(n)
        return n

    try:
        yield make
    finally:
        for n in started:
            await asyncio.wait_for(n.runner.stop(), 60)
            await n.nc.close()


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `condition()` holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
