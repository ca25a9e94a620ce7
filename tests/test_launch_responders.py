"""A flow is listed online from its node's catalog, which can be heard a moment before the node
takes launches (it is starting, or a replica restarts): a launch that meets no responders is
sent again, with the same execution id, for `LAUNCH_RESPONDERS_WITHIN` seconds (CI: two tests
got `NoResponders` launching a flow they had just seen online)."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.msg import Msg

from kodo_bus import flow_ref, subjects
from kodo_bus.bus import respond
from kodo_bus.client import Client
from kodo_bus.codec import decode_msg
from kodo_bus.errors import NoResponders
from kodo_bus.flow_ref import Flow
from kodo_bus.models import FlowItem, LaunchReply, LaunchRequest
from kodo_bus.server import NatsServer

ITEM = FlowItem(name="late", node="starting-node")


async def test_a_launch_waits_for_a_node_that_takes_launches_a_moment_late(
    nats_server: NatsServer,
) -> None:
    async with Client(nats_server.url) as client:
        seen: list[str] = []

        async def take(msg: Msg) -> None:
            request = decode_msg(msg, LaunchRequest)
            seen.append(str(request.execution))
            reply = LaunchReply(
                execution=str(request.execution), node=ITEM.node, flow=ITEM.name,
                launcher=client.user, subject="kodo.events.local.x.*",
            )  # fmt: skip
            await respond(msg, reply)

        async def start_late() -> None:
            await asyncio.sleep(1.0)  # the node subscribes after its catalog was heard
            subject = subjects.launch(client.user, ITEM.node, ITEM.name)
            await client.nc.subscribe(subject, cb=take)

        late = asyncio.create_task(start_late())
        try:
            ex = await Flow(client, ITEM).launch({}, execution_id="a" * 32)
        finally:
            await late
        assert ex.id == "a" * 32 and seen == ["a" * 32]


async def test_a_launch_nobody_takes_fails_within_the_bound(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flow_ref, "LAUNCH_RESPONDERS_WITHIN", 1.0)
    async with Client(nats_server.url) as client:
        started = time.monotonic()
        with pytest.raises(NoResponders):
            await Flow(client, ITEM).launch({})
        assert 0.5 < time.monotonic() - started < 3.0
