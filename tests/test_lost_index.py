"""`mark_lost` costs in proportion to the dead node's executions, not to the bucket's."""

from __future__ import annotations

import asyncio
import os
import time

from kodo_bus import subjects
from kodo_bus.bus import connect, ensure_execution_storage, jetstream
from kodo_bus.config import ConnectSettings
from kodo_bus.executions import create_record, event_message, read_record
from kodo_bus.lifecycle import mark_lost, records_of
from kodo_bus.models import Event, ExecutionRecord
from kodo_bus.server import NatsServer

from .test_execution_support import read_events, status_of

OTHERS = 3000
"""Records of other nodes in the bucket."""
MOST = 60
"""Messages `mark_lost` may receive for a node of 3 executions (22 when written: a consumer's
create and info, 3 index entries, and per execution its record, its events and the acks of
its ending); the whole-bucket read took over 2 * OTHERS."""


def _record(node: str, status: str, user: str = "local") -> ExecutionRecord:
    now = time.time()
    return ExecutionRecord(
        execution=os.urandom(16).hex(),
        flow="f",
        node=node,
        launcher=user,
        status=status,
        created=now,
        updated=now,
    )


async def test_mark_lost_reads_the_dead_nodes_records_only(fresh_server: NatsServer) -> None:
    nc = await connect(ConnectSettings(nats=[fresh_server.url]))
    reader = await connect(ConnectSettings(nats=[fresh_server.url]))
    try:
        js = jetstream(nc)
        kv = await ensure_execution_storage(js, max_age=3600)
        others = [_record(f"other-{i % 300}", "running", f"u{i % 7}") for i in range(OTHERS)]
        for start in range(0, OTHERS, 250):
            await asyncio.gather(*(create_record(kv, r) for r in others[start : start + 250]))
        node = "dying"
        mine = [_record(node, status) for status in ("running", "pending", "finished")]
        for record in mine:
            await create_record(kv, record)
            ev = Event(
                seq=1, ts=time.time(), kind="status", data={"status": record.status},
                execution=record.execution, node=node, flow="f", launcher="local",
            )  # fmt: skip
            subject, body, headers = event_message(ev)
            await js.publish(subject, body, headers=headers)

        assert sorted(await records_of(jetstream(reader), node)) == sorted(
            subjects.record_key(r.launcher, r.execution) for r in mine
        )
        before = reader.stats["in_msgs"]
        assert await mark_lost(jetstream(reader), node) == 2
        received = reader.stats["in_msgs"] - before
        assert received <= MOST, f"mark_lost received {received} messages for 3 executions"

        for record in mine[:2]:
            events = await read_events(js, record.execution, timeout=10)
            assert status_of(events)[-1] == "lost"
        done = await read_record(kv, subjects.record_key("local", mine[2].execution))
        assert done is not None and done[0].status == "finished"
        untouched = await read_record(
            kv, subjects.record_key(others[0].launcher, others[0].execution)
        )
        assert untouched is not None and untouched[0].status == "running"
    finally:
        await reader.close()
        await nc.close()
