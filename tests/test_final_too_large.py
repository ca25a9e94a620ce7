"""A flow whose result does not fit in one NATS message ends `error`, saying so — not
`finished` behind a gap where its `final` should be (the `final` was given up, the claim and
the status went on; a follower waited `GAP_WAIT` for the missing seq, then read None as the
result).

`ExecActor` is driven in this process against the session's nats-server (no Ray), as in
tests/test_launch_path.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from kodo_bus.bus import deliver, ensure_execution_storage
from kodo_bus.client import Client
from kodo_bus.errors import ExecutionFailed
from kodo_bus.executions import read_record, record_key
from kodo_bus.executor import ExecActor, Job, JobBatch
from kodo_bus.server import NatsServer
from kodo_bus.tracer import Tracer

from . import test_launch_path as launch_path
from .test_execution_support import handmade
from .test_launch_path import STARTING, _outcomes

pytestmark = pytest.mark.usefixtures("invariants")

conn = launch_path.conn
worker = launch_path.worker


async def too_large(inputs: dict[str, Any], tracer: Tracer) -> str:
    return "x" * int(inputs["size"])


async def test_a_result_larger_than_max_payload_ends_error(
    nats_server: NatsServer, conn: NATS, worker: tuple[ExecActor, str, str]
) -> None:
    _, jobs_subject, outcomes_subject = worker
    js = conn.jetstream()
    kv = await ensure_execution_storage(js, max_age=3600)
    record, revision = await handmade(js, kv, STARTING, status="starting", flow="bench")
    reported = await _outcomes(conn, outcomes_subject)
    size = {"size": conn.max_payload + 1}
    job = Job(record=record, revision=revision, entry=f"{__name__}:too_large", inputs=size, seq=3)
    async with Client(nats_server.url, user="local") as kb:
        await deliver(conn, jobs_subject, JobBatch(jobs=[job]))
        _, outcome = await asyncio.wait_for(reported.get(), 30)
        assert (outcome.status, outcome.ended) == ("error", True)
        with pytest.raises(ExecutionFailed) as failed:
            await kb.execution(record.execution).result(timeout=8)
    assert failed.value.remote_type == "EventsNotStored"
    assert "max_payload" in str(failed.value)
    stored = await read_record(kv, record_key(record))
    assert stored is not None and (stored[0].status, stored[0].last_seq) == ("error", 6)
