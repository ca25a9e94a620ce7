"""Parts of the worker and the runner that break only at the edges (issue 14, finding 11),
each driven directly: no Ray, the actor class used as a plain object."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from typing import Any

from kodo_bus import executor
from kodo_bus.executor import ExecActor
from kodo_bus.server import NatsServer


def _actor(url: str = "nats://127.0.0.1:1") -> ExecActor:
    return ExecActor({"nats": [url]}, list(sys.path), "jobs", "outcomes")


def test_cancels_for_jobs_that_never_come_are_bounded(monkeypatch: Any) -> None:
    """A cancel that arrives before its job is kept for it — but not for ever, nor without
    bound (it grew by one entry per such cancel for the life of the actor)."""
    monkeypatch.setattr(executor, "KNOWN_JOBS", 100)
    actor = _actor()
    for i in range(1000):
        actor._cancel(f"never-{i}")
    assert len(actor._cancelled) <= 100
    assert "never-999" in actor._cancelled  # the newest are kept


async def test_a_late_cancel_never_reaches_the_next_job_of_the_thread() -> None:
    """A sync flow's cancel raises an exception in its thread — which, once the flow returned,
    runs the next job: the cancel must not land there."""
    actor = _actor()
    actor._threads._max_workers = 1  # one thread: the next job is sure to run on it
    finished = threading.Event()

    def quick(inputs: Any, tracer: Any) -> str:
        time.sleep(0.1)
        return "quick"

    def next_job() -> str:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # pure Python: an async exception lands here
            pass
        finished.set()
        return "next"

    task = asyncio.create_task(actor._in_thread(quick, None, None))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)  # `quick` runs in the thread
    # The loop busy on purpose: `quick` returns meanwhile, its result not yet seen by the task.
    time.sleep(0.2)  # noqa: ASYNC251
    second = actor._threads.submit(next_job)
    time.sleep(0.1)  # noqa: ASYNC251
    task.cancel()  # the late cancel of the first job
    await asyncio.gather(task, return_exceptions=True)
    assert await asyncio.wrap_future(second) == "next"
    assert finished.is_set()
    actor._threads.shutdown()


async def test_a_retried_create_that_had_succeeded_is_ours(nats_server: NatsServer) -> None:
    """A record create whose reply was lost is retried; finding the record it made itself, the
    runner must take it as created (it left an orphan record and refused the launch)."""
    import time as clock

    from kodo_bus.bus import connect, ensure_execution_storage
    from kodo_bus.config import ConnectSettings, ServiceSettings
    from kodo_bus.executions import create_record
    from kodo_bus.models import ExecutionRecord
    from kodo_bus.runner import Runner

    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    try:
        kv = await ensure_execution_storage(nc.jetstream(), max_age=3600)
        runner = Runner(nc, ServiceSettings(id="parts", nats=[nats_server.url]), [])
        now = clock.time()
        record = ExecutionRecord(
            execution=os.urandom(16).hex(),
            flow="f",
            node="parts",
            launcher="local",
            status="starting",
            created=now,
            updated=now,
        )
        revision = await create_record(kv, record)  # the first try, whose reply was lost
        assert await runner._create(kv, record) == revision
        other = record.model_copy(update={"created": now + 1})  # somebody else's launch
        found = await runner._create(kv, other)
        assert isinstance(found, tuple) and found[0] == record
    finally:
        await nc.close()
