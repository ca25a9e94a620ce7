"""The NATS hand-over between a node's runner and its Ray workers, on the worker's side.

`ExecActor` is a plain class (Ray only hosts it), so these tests drive one in this process
against a real nats-server: a re-sent job batch must not run anything twice, and every outcome
must reach the runner's subject even when the runner acknowledges late.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from kodo_bus import subjects
from kodo_bus.bus import connect, deliver, ensure_execution_storage, respond
from kodo_bus.codec import decode_msg
from kodo_bus.config import ConnectSettings
from kodo_bus.executions import create_record, read_record
from kodo_bus.executor import ExecActor, Job, JobBatch, OutcomeBatch
from kodo_bus.models import Ack, ExecutionRecord
from kodo_bus.server import NatsServer

from .test_execution_support import check_well_formed, read_events

NOOP = "kodo_bus.bench.flows:noop"
pytestmark = pytest.mark.usefixtures("invariants")


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await connect(ConnectSettings(nats=[nats_server.url]))
    try:
        yield conn
    finally:
        await conn.drain()


@pytest.fixture
async def actor(nats_server: NatsServer, nc: NATS) -> AsyncIterator[tuple[ExecActor, str, str]]:
    """A started worker; a test may stop it itself (stopping twice is harmless)."""
    await ensure_execution_storage(nc.jetstream(), max_age=3600)
    node, pool = f"handover-{time.monotonic_ns()}", "p1"
    jobs, outcomes = subjects.work_jobs(node, pool, 1), subjects.work_outcomes(node, pool)
    settings = ConnectSettings(nats=[nats_server.url]).model_dump(mode="json")
    stdout, stderr = sys.stdout, sys.stderr  # the actor captures them, as in a Ray worker
    worker = ExecActor(settings, list(sys.path), jobs, outcomes)
    try:
        await worker.start()
        yield worker, jobs, outcomes
    finally:
        try:
            await worker.stop()
        finally:
            sys.stdout, sys.stderr = stdout, stderr


async def _jobs(nc: NATS, n: int) -> list[Job]:
    kv = await ensure_execution_storage(nc.jetstream(), max_age=3600)
    jobs = []
    for i in range(n):
        execution = f"{time.monotonic_ns():x}{i:04x}"
        now = time.time()
        record = ExecutionRecord(
            execution=execution,
            flow="bench-noop",
            node="handover",
            launcher="local",
            status="pending",
            created=now,
            updated=now,
            root=execution,
        )
        revision = await create_record(kv, record)
        jobs.append(Job(record=record, revision=revision, entry=NOOP, inputs={}, seq=0))
    return jobs


async def test_a_resent_batch_runs_each_execution_once(
    nc: NATS, actor: tuple[ExecActor, str, str]
) -> None:
    worker, jobs_subject, outcomes_subject = actor
    reported: list[tuple[str, str]] = []
    jobs = await _jobs(nc, 3)

    async def on_outcomes(msg: Msg) -> None:
        batch = decode_msg(msg, OutcomeBatch)
        reported.extend((execution, o.status) for execution, o in batch.outcomes.items())
        await respond(msg, Ack())

    await nc.subscribe(outcomes_subject, cb=on_outcomes)
    batch = JobBatch(jobs=jobs)
    await deliver(nc, jobs_subject, batch)
    await deliver(nc, jobs_subject, batch)  # as if the first acknowledgement had been lost
    js = nc.jetstream()
    for job in jobs:
        check_well_formed(await read_events(js, job.record.execution))
    await worker.stop()  # waits for whatever runs and reports it: a second run would show
    await nc.flush()
    assert sorted(reported) == sorted((job.record.execution, "finished") for job in jobs)

    kv = await js.key_value(subjects.BUCKET_EXECUTIONS)
    for job in jobs:
        stored = await read_record(kv, subjects.record_key("local", job.record.execution))
        assert stored is not None and stored[0].status == "finished"


async def test_outcomes_are_resent_until_the_runner_acknowledges(
    nc: NATS, actor: tuple[ExecActor, str, str]
) -> None:
    _, jobs_subject, outcomes_subject = actor
    copies: list[OutcomeBatch] = []
    acknowledged = asyncio.Event()

    async def on_outcomes(msg: Msg) -> None:
        copies.append(decode_msg(msg, OutcomeBatch))
        if len(copies) == 1:
            return  # the first copy is "lost": no acknowledgement
        await respond(msg, Ack())
        acknowledged.set()

    await nc.subscribe(outcomes_subject, cb=on_outcomes)
    (job,) = await _jobs(nc, 1)
    await deliver(nc, jobs_subject, JobBatch(jobs=[job]))
    await asyncio.wait_for(acknowledged.wait(), 30)
    assert len(copies) == 2
    assert copies[0] == copies[1]
    assert copies[0].outcomes[job.record.execution].status == "finished"
