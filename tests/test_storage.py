"""Storage with a policy: size limits on the events stream and the records bucket, brought to
existing deployments in place, overfilled on purpose; and retention per flow (`Nats-TTL`).

Real nats-server (each test its own, so the limits are the test's), real Ray for the flows."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import nats.js.errors
import pytest
from nats.js import JetStreamContext, api

from kodo_bus import Client, subjects
from kodo_bus.bus import connect, ensure_execution_storage, ensure_stream, request
from kodo_bus.config import DUPLICATE_WINDOW, ConnectSettings, FlowDecl, ServiceSettings
from kodo_bus.errors import ExecutionLost, ExecutionNotFound
from kodo_bus.flows import load_flows
from kodo_bus.models import LaunchReply, LaunchRequest
from kodo_bus.runner import Runner
from kodo_bus.server import NatsServer
from kodo_bus.snapshot import kv_keys

from .test_execution_support import handmade, read_events

EVENTS_LIMIT = 64 * 1024
RECORDS_LIMIT = 40 * 1024
"""Records outlive events, as with the defaults: ~300 bytes a record against ~2 KB of events."""
EXECUTIONS = 150
PAD = "x" * 300


def trail(n: int) -> list[tuple[str, Any]]:
    """The six events of a finished execution: meta, inputs, running, output, final, finished."""
    return [
        ("meta", {"flow": "f"}),
        ("inputs", {"n": n}),
        ("status", {"status": "running"}),
        ("markdown", PAD),
        ("final", f"result {n}"),
        ("status", {"status": "finished"}),
    ]


async def kept_per_execution(js: JetStreamContext) -> Counter[str]:
    """Messages the events stream holds, per execution."""
    info = await js.stream_info(subjects.STREAM_EVENTS, subjects_filter=subjects.EVENTS_ALL)
    held: Counter[str] = Counter()
    for subject, count in (info.state.subjects or {}).items():
        held[subject.split(".")[3]] += count
    return held


async def test_existing_storage_is_brought_to_its_limits_in_place(
    fresh_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A deployment made before the limits (no max_bytes, nats-py's `discard: new` bucket, no
    per-message TTL, a 120 s duplicate window that made nats-server's memory grow with the event
    rate) is updated in place at the next start, keeping what it holds."""
    nc = await connect(ConnectSettings(nats=[fresh_server.url], retry=0))
    try:
        js = nc.jetstream()
        await ensure_stream(js, subjects.STREAM_EVENTS, [subjects.EVENTS_ALL], max_age=3600)
        old_kv = await js.create_key_value(bucket=subjects.BUCKET_EXECUTIONS, ttl=3600)
        kv_window = (
            await js.stream_info(subjects.kv_stream(subjects.BUCKET_EXECUTIONS))
        ).config.duplicate_window
        await old_kv.put("local.x", b"kept")
        await js.publish(subjects.events("local", "x", "log"), b"{}")

        kv = await ensure_execution_storage(
            js, max_age=3600, max_bytes=EVENTS_LIMIT, records_max_bytes=RECORDS_LIMIT
        )
        events = (await js.stream_info(subjects.STREAM_EVENTS)).config
        records = (await js.stream_info(subjects.kv_stream(subjects.BUCKET_EXECUTIONS))).config
        assert (events.max_bytes, events.discard, events.allow_msg_ttl) == (
            EVENTS_LIMIT,
            api.DiscardPolicy.OLD,
            True,
        )
        assert (records.max_bytes, records.discard, records.allow_msg_ttl) == (
            RECORDS_LIMIT,
            api.DiscardPolicy.OLD,
            True,
        )
        assert events.duplicate_window == DUPLICATE_WINDOW < 120
        assert records.max_msgs_per_subject == 1  # the bucket's own settings are kept
        assert records.duplicate_window == kv_window
        assert records.max_age == 3600
        assert (await kv.get("local.x")).value == b"kept"
        assert (await js.stream_info(subjects.STREAM_EVENTS)).state.messages == 1

        # A start with unchanged settings writes nothing; -1 lifts the limits again.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="kodo_bus.bus"):
            await ensure_execution_storage(
                js, max_age=3600, max_bytes=EVENTS_LIMIT, records_max_bytes=RECORDS_LIMIT
            )
        assert not [r for r in caplog.records if "brought to" in r.getMessage()], caplog.text
        await ensure_execution_storage(js, max_age=3600, max_bytes=-1, records_max_bytes=-1)
        assert (await js.stream_info(subjects.STREAM_EVENTS)).config.max_bytes == -1
    finally:
        await nc.close()


async def test_overfilled_storage_loses_the_oldest_executions_and_no_follower_hangs(
    fresh_server: NatsServer,
) -> None:
    """Far more executions than the limits hold: no write is refused, the store stays inside
    its limits, what goes is the oldest (events: at most one execution cut in two; records:
    they outlive their events), and a follower of any of them ends in bounded time — with the
    result, `ExecutionLost` (record kept, events gone) or `ExecutionNotFound` (both gone)."""
    async with Client(fresh_server.url) as client:
        js = client.js
        kv = await ensure_execution_storage(
            js, max_age=3600, max_bytes=EVENTS_LIMIT, records_max_bytes=RECORDS_LIMIT
        )
        order = []
        for n in range(EXECUTIONS):  # every write must be stored: none is refused
            record, _ = await handmade(
                js, kv, trail(n), status="finished", last_seq=6, flow=f"f{n}"
            )
            order.append(record.execution)

        events_info = await js.stream_info(subjects.STREAM_EVENTS)
        records_info = await js.stream_info(subjects.kv_stream(subjects.BUCKET_EXECUTIONS))
        assert events_info.state.bytes <= EVENTS_LIMIT
        assert records_info.state.bytes <= RECORDS_LIMIT

        held = await kept_per_execution(js)
        counts = [held.get(execution, 0) for execution in order]
        gone = [i for i, c in enumerate(counts) if c == 0]
        cut = [i for i, c in enumerate(counts) if 0 < c < 6]
        whole = [i for i, c in enumerate(counts) if c == 6]
        assert gone and whole, counts  # the limit was reached, and something is kept
        assert len(cut) <= 1, counts  # one execution at most is cut: the oldest kept
        assert max(gone) < min(cut + whole) and max(cut + gone) < min(whole), counts
        assert whole[-1] == EXECUTIONS - 1

        keys = set(await kv_keys(js, subjects.BUCKET_EXECUTIONS))
        has_record = [subjects.record_key("local", e) in keys for e in order]
        first_record = has_record.index(True)
        assert all(has_record[first_record:]), "records go oldest first"
        assert not any(has_record[:first_record])
        assert first_record <= min(cut + whole), "a record outlives its events"
        assert 0 < first_record < max(gone), "the test needs both kinds of gone execution"

        async def follow(index: int) -> Any:
            async with asyncio.timeout(30):  # a hang fails here
                return await client.execution(order[index]).result()

        assert await follow(EXECUTIONS - 1) == f"result {EXECUTIONS - 1}"
        started = time.monotonic()
        with pytest.raises(ExecutionNotFound):
            await follow(0)
        assert time.monotonic() - started < 5
        with pytest.raises(ExecutionLost, match="not in the stream"):
            await follow(max(gone))
        if cut:  # its first events went: the follow reads what is left, to its end
            started = time.monotonic()
            assert await follow(cut[0]) == f"result {cut[0]}"
            assert time.monotonic() - started < 5


async def _run(runner_nc: Any, node: str, flow: str) -> str:
    reply = await request(
        runner_nc,
        subjects.launch("local", node, flow),
        LaunchRequest(inputs={"text": flow}),
        LaunchReply,
        timeout=30,
    )
    return reply.execution


async def _gone(js: JetStreamContext, kv: Any, execution: str) -> bool:
    try:
        await js.get_last_msg(
            subjects.STREAM_EVENTS, subjects.events_of_execution(execution), direct=True
        )
        return False
    except nats.js.errors.NotFoundError:
        pass
    try:
        await kv.get(subjects.record_key("local", execution))
        return False
    except nats.js.errors.KeyNotFoundError:
        return True


async def test_a_flow_with_retention_is_gone_after_it_while_another_stays(
    fresh_server: NatsServer, ray_address: str
) -> None:
    """`@flow(retention=2)`: 2 s after its end, the execution's events and record are gone
    (each message carried `Nats-TTL: 2`); an execution of a flow without retention stays."""
    url = fresh_server.url
    settings = ServiceSettings(id="keeper", nats=[url], grace=2)
    nc = await connect(ConnectSettings(nats=[url]))
    runner = Runner(nc, settings, load_flows([FlowDecl(module="tests.storage_flows")]))
    await runner.start()
    try:
        js = nc.jetstream()
        kv = await js.key_value(subjects.BUCKET_EXECUTIONS)
        brief = await _run(nc, "keeper", "brief")
        kept = await _run(nc, "keeper", "kept")
        for execution in (brief, kept):
            events = await read_events(js, execution)
            assert events[-1].data == {"status": "finished"}
        ttls = {
            (msg.headers or {}).get("Nats-TTL")
            for msg in [
                await js.get_last_msg(
                    subjects.STREAM_EVENTS, subjects.events_of_execution(brief), direct=True
                )
            ]
        }
        assert ttls == {"2"}
        ended = time.monotonic()
        deadline = ended + 20
        while not await _gone(js, kv, brief):
            assert time.monotonic() < deadline, "the brief execution outlived its retention"
            await asyncio.sleep(0.2)
        assert time.monotonic() - ended >= 1.0  # not gone at once: it expired
        assert not await _gone(js, kv, kept)
        entry = await kv.get(subjects.record_key("local", kept))
        assert entry.value
        assert len(await read_events(js, kept)) >= 5
    finally:
        await asyncio.wait_for(runner.stop(), 60)
        await nc.close()


def test_a_node_config_declares_retention_as_the_decorator_does() -> None:
    """`flows: [{entry: ..., retention: 60}]` in a node's config overrides the flow's own (was
    refused as an unknown key); less than 1 s is refused at load, as by `@flow`."""
    from pydantic import ValidationError

    specs = {
        s.name: s
        for s in load_flows(
            [
                FlowDecl(entry="tests.storage_flows:kept", retention=60),
                FlowDecl(entry="tests.storage_flows:brief", name="brief-default"),
            ]
        )
    }
    assert specs["kept"].retention == 60
    assert specs["brief-default"].retention == 2  # the decorator's, when the config says none
    with pytest.raises(ValidationError):
        FlowDecl(entry="tests.storage_flows:kept", retention=0.5)
