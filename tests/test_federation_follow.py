"""An execution is followed where it runs (issue 14, finding 1): a flow served on bus B, found
and launched from bus A through `connect`, is followed, answered, cancelled and read on B."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from kodo_bus.client import Client
from kodo_bus.errors import ExecutionCancelled
from kodo_bus.server import NatsServer

from .conftest import Processes
from .invariants import check_bus
from .test_reliability_support import first_event, node_body, online_flow, service

pytestmark = [pytest.mark.slow, pytest.mark.ray]


async def test_a_flow_of_another_bus_is_followed_on_its_bus(
    procs: Processes,
    server_factory: Callable[[str], NatsServer],
    ray_address: str,
    tmp_path: Path,
) -> None:
    a, b = server_factory("a"), server_factory("b")
    service(procs, tmp_path, [b.url], ray_address, **node_body("far", role="hybrid"))
    service(procs, tmp_path, [a.url], id="near", role="registry", connect=[b.url])
    async with Client(a.url) as kb:
        echo = await online_flow(kb, "far/echo")
        assert echo.urls == [b.url]
        ex = await echo.launch({"said": "hello"})
        assert await asyncio.wait_for(ex.result(timeout=60), 70) == {"said": "hello"}
        assert await ex.status() == "finished"
        assert [e.kind for e in [e async for e in ex.events()]][-2:] == ["final", "status"]

        hold = await online_flow(kb, "far/hold")
        held = await hold.launch({"seconds": 120})
        await first_event(held, "result")  # running on B
        await held.cancel()
        with pytest.raises(ExecutionCancelled):
            await held.result(timeout=30)
        ids = {ex.id, held.id}
    (await check_bus(b.url, executions=ids)).assert_ok()
