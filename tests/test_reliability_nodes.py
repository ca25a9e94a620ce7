"""Reliability of nodes: killed nodes, killed Ray workers, graceful stop, back-pressure.

Every test runs real `kodo-bus run` processes on the session's Ray and states what is lost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from kodo_bus import subjects
from kodo_bus.client import Client
from kodo_bus.errors import Busy, ExecutionCancelled, ExecutionFailed, ExecutionLost
from kodo_bus.execution_ref import Execution
from kodo_bus.executions import read_record
from kodo_bus.models import TERMINAL_STATUSES
from kodo_bus.server import NatsServer

from .conftest import Processes
from .test_reliability_support import (
    all_events,
    check_complete,
    eventually,
    first_event,
    node_body,
    online_flow,
    service,
)

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("invariants")]
TTL = 1.5


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns() % 10**10}"


@pytest.fixture
async def kb(nats_server: NatsServer) -> AsyncIterator[Client]:
    async with Client(nats_server.url) as client:
        yield client


async def check_record(kb: Client, ex: Execution, status: str) -> None:
    """The record ends with the same status and last seq as the events: nothing half-written."""
    events = await all_events(ex)
    check_complete(events)
    assert events[-1].data["status"] == status
    kv = await kb.js.key_value(subjects.BUCKET_EXECUTIONS)

    async def record() -> tuple[str, int | None]:
        got = await read_record(kv, subjects.record_key(kb.user, ex.id))
        assert got is not None
        return got[0].status, got[0].last_seq

    await eventually(record, lambda r: r == (status, events[-1].seq), timeout=10)


@pytest.mark.slow
async def test_killed_node_result_raises_lost(
    nats_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path, kb: Client
) -> None:
    """What is lost: the running execution's outcome only (it ends `lost`, nothing hangs)."""
    node = unique("rel-victim")
    registry = unique("rel-reg")
    urls = [nats_server.url]
    service(procs, tmp_path, urls, id=registry, role="registry", ttl=TTL)
    victim = service(procs, tmp_path, urls, ray_address, **node_body(node, ttl=TTL))
    flow = await online_flow(kb, f"{node}/hold")
    ex = await flow.launch({"seconds": 120})
    waiter = asyncio.create_task(ex.result(timeout=TTL + 30))
    await first_event(ex, "result")  # the worker is running the flow
    killed = time.monotonic()
    procs.stop(victim, signal.SIGKILL)
    with pytest.raises(ExecutionLost):
        await waiter
    took = time.monotonic() - killed
    # ttl, the registry's liveness tick, then a direct info request (max(2, ttl)) before lost
    assert took < TTL + 6, f"lost after {took:.1f} s"
    await check_record(kb, ex, "lost")


async def test_killed_ray_worker_ends_error_and_node_keeps_serving(
    nats_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path, kb: Client
) -> None:
    """What is lost: the killed execution's outcome (it ends `error`, WorkerDied); nothing else."""
    node = unique("rel-ray")
    urls = [nats_server.url]
    service(procs, tmp_path, urls, id=unique("rel-reg"), role="registry")
    service(procs, tmp_path, urls, ray_address, **node_body(node, actors=1, max_running=2))
    flow = await online_flow(kb, f"{node}/hold")
    ex = await flow.launch({"seconds": 120})
    pid = (await first_event(ex, "result")).data["pid"]
    assert pid != os.getpid()
    psutil.Process(pid).kill()  # the Ray actor's worker process, found from inside the flow
    with pytest.raises(ExecutionFailed) as failed:
        await ex.result(timeout=60)
    assert failed.value.remote_type == "WorkerDied"
    await check_record(kb, ex, "error")
    after = await (await kb.flow(f"{node}/echo")).launch({"still": "here"})
    assert await after.result(timeout=60) == {"still": "here"}


@pytest.mark.slow
async def test_sigterm_grace_finishes_then_cancels(
    nats_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path, kb: Client
) -> None:
    """SIGTERM: within `grace` an execution finishes; past it, it is cancelled with a final
    status. What is lost: the work of the execution that outlived the grace period (cancelled),
    no half-written record or stream."""
    grace = 3.0
    node = unique("rel-grace")
    urls = [nats_server.url]
    service(procs, tmp_path, urls, id=unique("rel-reg"), role="registry")
    proc = service(
        procs, tmp_path, urls, ray_address, **node_body(node, grace=grace, max_running=4)
    )
    short = await (await online_flow(kb, f"{node}/ticker")).launch({"seconds": 1.5})
    long = await (await kb.flow(f"{node}/hold")).launch({"seconds": 120})
    await asyncio.gather(first_event(short, "progress"), first_event(long, "result"))
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert await short.result(timeout=30) == 15
    with pytest.raises(ExecutionCancelled):
        await long.result(timeout=30)
    cancelled_after = time.monotonic() - sent
    assert grace - 0.5 < cancelled_after < grace + 10, cancelled_after
    code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0
    await check_record(kb, short, "finished")
    await check_record(kb, long, "cancelled")


async def test_launches_faster_than_the_node_runs_get_busy(
    nats_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path, kb: Client
) -> None:
    """What is lost: nothing accepted; a launch beyond max_running + max_queue is refused
    `busy` (the client knows to retry), and the node's queue never exceeds max_queue."""
    node = unique("rel-busy")
    urls = [nats_server.url]
    service(procs, tmp_path, urls, id=unique("rel-reg"), role="registry")
    service(procs, tmp_path, urls, ray_address, **node_body(node, max_running=1, max_queue=3))
    flow = await online_flow(kb, f"{node}/hold")
    warm = await flow.launch({"seconds": 0, "tag": "warm"})  # Ray and actors up first
    assert await warm.result(timeout=60) == "warm"
    outcomes = await asyncio.gather(
        *(flow.launch({"seconds": 0.3, "tag": str(i)}) for i in range(20)), return_exceptions=True
    )
    accepted = [o for o in outcomes if isinstance(o, Execution)]
    refused = [o for o in outcomes if isinstance(o, Busy)]
    assert len(accepted) + len(refused) == 20, outcomes
    assert 1 <= len(accepted) <= 4 and refused
    results = await asyncio.gather(*(ex.result(timeout=60) for ex in accepted))
    tags = [str(i) for i, o in enumerate(outcomes) if isinstance(o, Execution)]
    assert sorted(results) == sorted(tags)
    # after the burst, launches are accepted again
    again = await flow.launch({"seconds": 0, "tag": "again"})
    assert await again.result(timeout=30) == "again"


@pytest.mark.slow
async def test_slow_reader_does_not_slow_the_flow(
    nats_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path, kb: Client
) -> None:
    """A reader that takes 1 ms per event falls behind; the flow ends regardless, and the
    reader still gets every event in order. What is lost: nothing."""
    node = unique("rel-slowread")
    urls = [nats_server.url]
    service(procs, tmp_path, urls, id=unique("rel-reg"), role="registry")
    service(procs, tmp_path, urls, ray_address, **node_body(node))
    flow = await online_flow(kb, f"{node}/emit")
    ex = await flow.launch({"n": 3000, "batch": 1000, "pause": 0})
    seen: list[int] = []
    ended_while_reading: list[int] = []
    async with asyncio.timeout(60):
        async for event in ex.events():
            if event.kind == "text":
                seen.append(int(event.data))
                if len(seen) % 500 == 0:
                    record = await ex.record()
                    if record.status in TERMINAL_STATUSES:
                        ended_while_reading.append(len(seen))
            await asyncio.sleep(0.001)
    assert seen == list(range(3000))
    assert ended_while_reading, "the flow waited for its slow reader"
    assert await ex.result(timeout=10) == 3000
