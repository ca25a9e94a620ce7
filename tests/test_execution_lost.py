"""`mark_lost`, and a node killed with SIGKILL whose executions a registry ends `lost`."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from kodo_bus import subjects
from kodo_bus.bus import connect, ensure_execution_storage, request
from kodo_bus.config import ConnectSettings
from kodo_bus.executions import create_record, event_message, read_record
from kodo_bus.lifecycle import mark_lost
from kodo_bus.models import Event, ExecutionRecord, LaunchReply, LaunchRequest
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .invariants import Watch
from .test_execution_support import check_well_formed, read_events, status_of

pytestmark = pytest.mark.usefixtures("invariants")


async def test_mark_lost_ends_unfinished_records_once(
    nats_server: NatsServer, invariants: Watch
) -> None:
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    try:
        js = nc.jetstream()
        kv = await ensure_execution_storage(js, max_age=3600)
        node = f"ghost-{time.monotonic_ns()}"
        ids = []
        for status in ("running", "pending", "finished"):
            execution = os.urandom(16).hex()
            now = time.time()
            record = ExecutionRecord(
                execution=execution,
                flow="f",
                node=node,
                launcher="local",
                status=status,
                created=now,
                updated=now,
            )
            await create_record(kv, record)
            for seq, data in enumerate(({"status": "pending"}, {"status": status}), 1):
                if seq == 2 and status == "pending":
                    break
                ev = Event(
                    execution=execution,
                    seq=seq,
                    ts=now,
                    kind="status",
                    node=node,
                    flow="f",
                    launcher="local",
                    data=data,
                )
                subject, body, headers = event_message(ev)
                await js.publish(subject, body, headers=headers)
            ids.append(execution)
        invariants.ignore(ids[2], "hand-made: `finished` without a `final` event")
        # two registries racing: one set of events, each record ended once
        counts = await asyncio.gather(mark_lost(js, node), mark_lost(js, node))
        assert sum(counts) == 2
        for execution in ids[:2]:
            events = await read_events(js, execution, timeout=5)
            check_well_formed(events)
            assert status_of(events)[-1] == "lost"
            assert events[-2].data["type"] == "ExecutionLost"
            rec = await read_record(kv, subjects.record_key("local", execution))
            assert rec is not None and rec[0].status == "lost"
            assert rec[0].last_seq == events[-1].seq
        rec = await read_record(kv, subjects.record_key("local", ids[2]))
        assert rec is not None and rec[0].status == "finished"
        assert await mark_lost(js, node) == 0
    finally:
        await nc.close()


@pytest.mark.ray
@pytest.mark.slow
async def test_killed_node_ends_lost(
    nats_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path
) -> None:
    node = f"victim-{time.monotonic_ns() % 10**9}"
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "id": node,
                "nats": [nats_server.url],
                "heartbeat": 0.5,
                "max_running": 2,
                "flows": [{"module": "tests.test_execution_flows"}],
            }
        )
    )
    env = {
        "KODO_RAY_ADDRESS": ray_address,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    registry = procs.start(
        "run", "--role", "registry", "--id", f"reg-{node}", "--nats", nats_server.url,
        "--heartbeat", "0.5", env=env, cwd=str(tmp_path),
    )  # fmt: skip
    victim = procs.start("run", "--config", str(config), env=env, cwd=str(REPO))
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    try:
        subject = subjects.launch("local", node, "sleeper")
        deadline = time.monotonic() + 60
        while True:  # the node is up once it answers a launch
            try:
                reply = await request(
                    nc, subject, LaunchRequest(inputs={"seconds": 120}), LaunchReply, timeout=2
                )
                break
            except Exception:
                assert victim.poll() is None and registry.poll() is None
                assert time.monotonic() < deadline, "node did not come up"
                await asyncio.sleep(0.2)
        # from the stream, not a live subscription: `running` may be published before we look
        status_subject = subjects.events("local", reply.execution, "status")
        deadline = time.monotonic() + 60
        while True:
            last = await nc.jetstream().get_last_msg(subjects.STREAM_EVENTS, status_subject)
            if b'"running"' in (last.data or b""):
                break
            assert time.monotonic() < deadline, "the execution never started running"
            await asyncio.sleep(0.05)
        procs.stop(victim, signal.SIGKILL)
        events = await read_events(nc.jetstream(), reply.execution, timeout=60)
        check_well_formed(events)
        assert status_of(events)[-1] == "lost"
    finally:
        await nc.close()
