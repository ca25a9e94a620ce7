"""Plain NATS tools see kodo-bus as it is: a raw nats-py client that knows nothing of kodo-bus."""

from __future__ import annotations

import asyncio
import json
import time

import nats
import pytest

from .test_cli_exec import NODE, REGISTRY, Bus, bus

__all__ = ["bus"]
pytestmark = pytest.mark.ray


async def _launch(b: Bus, flow: str) -> str:
    code, out, err = await asyncio.to_thread(b.cli, "launch", flow, "--no-follow")
    assert code == 0, err
    return out.strip()


async def test_nats_sub_prints_one_readable_json_line_per_event(bus: Bus) -> None:
    nc = await nats.connect(bus.url)
    try:
        everything = await nc.subscribe("kodo.events.>")
        statuses = await nc.subscribe("kodo.events.*.status")  # deliberately too short
        status_only = await nc.subscribe("kodo.events.*.*.status")
        execution = await _launch(bus, "quick")
        lines: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        while not lines or lines[-1].get("data") != {"status": "finished"}:
            msg = await everything.next_msg(timeout=max(0.1, deadline - time.monotonic()))
            assert b"\n" not in msg.data, "one event, one line"
            assert msg.headers and msg.headers.get("Content-Type") == "application/json"
            event = json.loads(msg.data)
            if event["execution"] == execution:
                lines.append(event)
        assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
        assert {"execution", "seq", "ts", "kind", "node", "flow", "launcher", "data"} <= set(
            lines[0]
        )
        assert lines[-2]["kind"] == "final" and lines[-2]["data"] == 1

        seen: list[str] = []
        while len(seen) < 3:
            msg = await status_only.next_msg(timeout=10)
            event = json.loads(msg.data)
            if event["execution"] == execution:
                seen.append(event["data"]["status"])
        assert seen == ["starting", "running", "finished"]
        assert statuses.pending_msgs == 0  # `kodo.events.*.status` is not the status subject
    finally:
        await nc.close()


async def test_nats_micro_lists_every_service(bus: Bus) -> None:
    """What `nats micro list` / `nats micro ping kodo-bus` show: one reply per live service."""
    nc = await nats.connect(bus.url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.INFO.kodo-bus", b"", reply=inbox)
        ids: set[str] = set()
        deadline = time.monotonic() + 5
        while {NODE, REGISTRY} - ids and time.monotonic() < deadline:
            msg = await sub.next_msg(timeout=max(0.1, deadline - time.monotonic()))
            info = json.loads(msg.data)
            assert info["name"] == "kodo-bus"
            ids.add(info["metadata"]["id"])
        assert {NODE, REGISTRY} <= ids
    finally:
        await nc.close()
