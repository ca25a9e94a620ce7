"""An execution id deleted, then launched again within the events stream's duplicate window
(`config.DUPLICATE_WINDOW`).

`Execution.delete()` purges the events, but JetStream keeps their `Nats-Msg-Id`s
(`<execution>:<seq>`, `<execution>:<seq>:end`) for the window. Were the id free again, its node
would number the new events 1..n as before and every one after the conditional first ones
would be taken for a duplicate and not stored, the terminal status too: an execution that
never ends (it did so before `files.forget` held the id). Clients choose execution ids, so a
delete-then-rerun of the same id is a plausible use: it is refused, saying why, and leaves
no trail; the held id expires by itself (`Nats-TTL`).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from kodo_bus import subjects
from kodo_bus.bus import connect, jetstream
from kodo_bus.client import Client
from kodo_bus.config import DUPLICATE_WINDOW, ServiceSettings
from kodo_bus.errors import ExecutionNotFound, RemoteError
from kodo_bus.flow_ref import Flow
from kodo_bus.flows import flows_in_module
from kodo_bus.local_pool import LocalPool
from kodo_bus.models import FlowItem
from kodo_bus.runner import Runner
from kodo_bus.server import NatsServer

NODE = "n1"


@pytest.fixture
async def node(fresh_server: NatsServer) -> AsyncIterator[FlowItem]:
    settings = ServiceSettings(id=NODE, nats=[fresh_server.url], max_running=2, actors=1)
    nc: NATS = await connect(settings.connect_settings())
    (spec,) = [s for s in flows_in_module("tests.flowpkg.file_flows") if s.name == "make_files"]
    runner = Runner(nc, settings, [spec], pool=LocalPool(nc, NODE, settings.connect_settings(), 1))
    try:
        await runner.start()
        yield FlowItem(**spec.info().model_dump(), node=NODE)
    finally:
        await runner.stop()
        await nc.close()


async def test_an_id_deleted_is_refused_while_its_events_ids_are_remembered(
    fresh_server: NatsServer, node: FlowItem
) -> None:
    execution_id = "rerun-" + "0" * 16
    async with Client(fresh_server.url) as kb:
        first = await Flow(kb, node).launch({"text": "one"}, execution_id=execution_id)
        assert await first.result(timeout=60) == "made"
        js = jetstream(await kb._bus_for(kb.urls))
        await first.delete()
        assert await stored(js, execution_id) == 0
        with pytest.raises(RemoteError, match="deleted less than") as refused:
            await Flow(kb, node).launch({"text": "two"}, execution_id=execution_id)
        assert refused.value.kind == "invalid_request"
        assert await stored(js, execution_id) == 0  # no trail under the held id
        key = subjects.record_key(subjects.DEFAULT_USER, execution_id)
        held = await js.get_last_msg(
            subjects.kv_stream(subjects.BUCKET_EXECUTIONS),
            subjects.kv_subject(subjects.BUCKET_EXECUTIONS, key),
        )
        assert held.data in (b"", None)
        assert held.headers is not None
        assert int(held.headers["Nats-TTL"]) == math.ceil(DUPLICATE_WINDOW)
        with pytest.raises(ExecutionNotFound):
            await first.delete()
        other = await Flow(kb, node).launch({"text": "three"})
        assert await other.result(timeout=60) == "made"


async def stored(js: JetStreamContext, execution: str) -> int:
    subject = subjects.events(subjects.DEFAULT_USER, execution, "*")
    info = await js.stream_info(subjects.STREAM_EVENTS, subjects_filter=subject)
    return int(info.state.messages)
