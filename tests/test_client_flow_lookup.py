"""`Client.flow(name)` resolves a name with one request, whatever the size of the federation.

It used to download every flow the registry lists (pages of 10,000) to pick one: at 20,000
flows that is two requests and megabytes for one name. A tap subscription on the registry's
flows subject counts the requests a resolution makes.
"""

from __future__ import annotations

import time

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from kodo_bus import Client, subjects
from kodo_bus.codec import decode_msg, encode
from kodo_bus.errors import FlowNotFound
from kodo_bus.models import Catalog, FlowInfo, FlowsQuery, Heartbeat
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .test_federation import EXAMPLES, eventually, info, nc

__all__ = ["nc"]

NODES = 1000
FLOWS = 20
"""20,000 flows: more than one page of `Client.flows` (10,000)."""


async def test_a_flow_is_resolved_with_one_request(
    procs: Processes, fresh_server: NatsServer, nc: NATS
) -> None:
    procs.start(
        "run", "--config", str(EXAMPLES / "registry.yaml"), "--nats", fresh_server.url,
        "--log-level", "WARNING", cwd=REPO,
    )  # fmt: skip
    await eventually(lambda: info(nc, "registry"), lambda i: True)
    flows = [FlowInfo(name=f"flow{j}", summary=f"flow number {j}") for j in range(FLOWS - 1)]
    for i in range(NODES):
        node = f"n{i:04d}"
        unique = FlowInfo(name="needle" if i == 500 else f"only{i}", summary="one of a kind")
        body, headers = encode(Catalog(node=node, revision=1, flows=[*flows, unique]))
        await nc.publish(subjects.node_catalog(node), body, headers=headers)
        body, headers = encode(Heartbeat(node=node, revision=1, ts=time.time()))
        await nc.publish(subjects.node_heartbeat(node), body, headers=headers)
    await eventually(lambda: info(nc, "registry"), lambda i: i.flows == NODES * FLOWS, timeout=30)

    queries: list[FlowsQuery] = []

    async def tap(msg: Msg) -> None:
        queries.append(decode_msg(msg, FlowsQuery))

    sub = await nc.subscribe(subjects.svc_flows("registry"), cb=tap)
    await nc.flush()
    try:
        async with Client(fresh_server.url) as client:
            found = await client.flow("needle")
            assert (found.node, found.name) == ("n0500", "needle")
            await nc.flush()
            assert [(q.name, q.node) for q in queries] == [("needle", None)]

            queries.clear()
            found = await client.flow("n0007/flow3")
            assert (found.node, found.name) == ("n0007", "flow3")
            await nc.flush()
            assert [(q.name, q.node) for q in queries] == [("flow3", "n0007")]

            # nothing of that name: then (only then) the candidates the error names are fetched
            queries.clear()
            with pytest.raises(FlowNotFound, match="needle"):
                await client.flow("needel")
            await nc.flush()
            assert queries[0].name == "needel"
            assert len(queries) > 1 and all(q.name is None for q in queries[1:])
    finally:
        await sub.unsubscribe()
