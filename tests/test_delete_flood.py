"""Deletes never hold up the other requests on a node's public control subject.

`Runner._on_delete` used to wait for one of `DELETES_AT_ONCE` slots inside the callback of the
one subscription that also carries the public cancels and answers (`kodo.exec.*.*.*`, queue
group `kodo-exec`). A delete lists the launcher's whole bucket and purges each of the
execution's objects, and the launcher owns its bucket (on the secure profile it has its stream's
whole API: it may publish metadata messages at will). So a client with one ended execution and a
bucket of many (tiny) objects sends a few deletes of it (each reads the record as ended until
the first one purges it, last), and every cancel or answer that any user sends on a public
subject waited behind them. Now a delete past the bound is answered `busy` at once (the SDK
retries), and a delete lists the bucket as it purges, keeping nothing of it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time

import pytest
from nats.aio.client import Client as NATS

from kodo_bus import files, subjects
from kodo_bus.bus import ensure_execution_storage, jetstream, request
from kodo_bus.config import ServiceSettings
from kodo_bus.errors import KodoError, RemoteError
from kodo_bus.executions import create_record
from kodo_bus.models import Ack, Empty, ExecutionRecord
from kodo_bus.runner import DELETES_AT_ONCE, Runner
from kodo_bus.server import NatsServer

USER = subjects.DEFAULT_USER
OBJECTS = 3000
"""Metadata messages the launcher puts in its own bucket (about 150 B each)."""


async def _cancel_latency(nc: NATS) -> float:
    """Seconds a public cancel of an unknown execution takes to be answered (`not_found`)."""
    start = time.monotonic()
    with pytest.raises(RemoteError):
        await request(nc, subjects.exec_cancel(USER, "nosuch"), Empty(), Ack, timeout=120)
    return time.monotonic() - start


async def test_deletes_do_not_hold_up_public_cancels(fresh_server: NatsServer, nc: NATS) -> None:
    js = jetstream(nc)
    kv = await ensure_execution_storage(js, max_age=ServiceSettings().events_max_age)
    execution = os.urandom(16).hex()
    now = time.time()
    await create_record(
        kv,
        ExecutionRecord(
            execution=execution, flow="f", node="n1", launcher=USER, status="finished",
            created=now, updated=now,
        ),
    )  # fmt: skip
    await files.bucket(js, USER)
    bucket = subjects.bucket_files(USER)
    for i in range(OBJECTS):  # what the launcher may publish on its own bucket
        name = f"{execution}/in/f{i}"
        meta = subjects.obj_subject(bucket, "M." + base64.urlsafe_b64encode(name.encode()).decode())
        body = {"name": name, "bucket": bucket, "nuid": f"N{i}", "size": 0, "chunks": 0}
        await nc.publish(meta, json.dumps(body).encode())
    await nc.flush()
    deadline = time.monotonic() + 30
    while (await js.stream_info(subjects.obj_stream(bucket))).state.messages < OBJECTS:
        assert time.monotonic() < deadline, "the metadata was not stored"
        await asyncio.sleep(0.05)

    node = Runner(nc, ServiceSettings(id="n1", nats=[fresh_server.url]), [])
    await node.start()
    deletes: list[asyncio.Task[Ack]] = []
    try:
        quiet = await _cancel_latency(nc)
        assert quiet < 1.0
        subject = subjects.exec_delete(USER, execution)
        deletes = [
            asyncio.create_task(request(nc, subject, Empty(), Ack, timeout=300))
            for _ in range(DELETES_AT_ONCE + 2)
        ]
        await nc.flush()  # the deletes reach the node's subscription before the cancel
        busy = await _cancel_latency(nc)
        print(f"public cancel answered in {quiet:.3f} s quiet, {busy:.3f} s behind deletes")
        assert busy < 1.0, f"a public cancel waited {busy:.1f} s behind {len(deletes)} deletes"
    finally:
        for task in deletes:
            task.cancel()
        for task in deletes:
            with contextlib.suppress(asyncio.CancelledError, KodoError):
                await task  # cancelled by us
        await node.stop()
