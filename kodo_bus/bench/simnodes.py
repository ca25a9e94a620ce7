"""Simulated nodes: many lightweight announcers in one process, speaking the node wire protocol.

A real node is a process with a runner; the registry cannot tell the difference from these,
which publish the same `Catalog` and `Heartbeat` messages on the same subjects and answer
`kodo.sync` after a random delay of up to one second, as `node.py` does. Catalog bodies are
encoded once, so the simulator stays cheap next to the registry it measures.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import msgpack
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .. import subjects
from ..codec import encode
from ..models import Catalog, FlowInfo, Heartbeat
from ..node import SYNC_SPREAD
from ..tasks import TaskSet

log = logging.getLogger("kodo_bus.bench.simnodes")


def catalog(node: str, flows: int) -> Catalog:
    """A node's catalog with `flows` flows that look like real ones (summary, tags, schema)."""
    return Catalog(
        node=node,
        organization="bench",
        revision=1,
        started=time.time(),
        flows=[
            FlowInfo(
                name=f"flow{j}",
                summary=f"flow number {j} of {node}",
                description=f"A simulated flow ({j}) for the registry benchmark.",
                tags=["bench", f"group{j % 5}"],
                version="1.0",
                input_schema={
                    "type": "object",
                    "properties": {"text": {"type": "string", "title": "Text"}},
                },
            )
            for j in range(flows)
        ],
    )


class SimNodes:
    """`count` nodes times `flows` flows on one connection."""

    def __init__(self, nc: NATS, prefix: str, count: int, flows: int) -> None:
        self.nc = nc
        self.ids = [f"{prefix}-{i:05d}" for i in range(count)]
        self.flows = flows
        self._bodies = {n: encode(catalog(n, flows)) for n in self.ids}
        self._sync: Subscription | None = None
        self._tasks = TaskSet(log)
        self.syncs = 0

    @property
    def catalog_size(self) -> int:
        return len(next(iter(self._bodies.values()))[0])

    async def start(self) -> None:
        """Answer `kodo.sync` from now on (as every real node does)."""
        self._sync = await self.nc.subscribe(subjects.SYNC, cb=self._on_sync)
        await self.nc.flush()

    async def stop(self) -> None:
        if self._sync is not None:
            await self._sync.unsubscribe()
            self._sync = None
        await self._tasks.close()

    async def answered(self) -> None:
        """Until every `kodo.sync` heard so far is answered (each node re-announced)."""
        while self._tasks.tasks:
            await asyncio.wait(list(self._tasks.tasks))

    async def announce_all(self) -> None:
        """Every node announces at once (a fleet starting together)."""
        for node, (body, headers) in self._bodies.items():
            await self.nc.publish(subjects.node_catalog(node), body, headers=headers)
        await self.nc.flush()

    async def _on_sync(self, msg: Msg) -> None:
        self.syncs += 1
        self._tasks.spawn(self._answer_sync(), "answer sync")

    async def _answer_sync(self) -> None:
        """Each node re-announces after its own random delay, like `Node._answer_sync`."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        plan = sorted((random.uniform(0, SYNC_SPREAD), n) for n in self.ids)
        for delay, node in plan:
            wait = start + delay - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # pacing to a planned instant, not polling
            body, headers = self._bodies[node]
            await self.nc.publish(subjects.node_catalog(node), body, headers=headers)
        await self.nc.flush()

    async def heartbeats(self, period: float, seconds: float) -> int:
        """Each node beats once per `period`, spread evenly, for `seconds`; beats sent."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        step = period / len(self.ids)
        sent = 0
        # a Heartbeat's fields, dumped once: only `ts` changes (thousands of beats a second
        # must cost the simulator little next to the registry it measures)
        fields = [
            (n, Heartbeat(node=n, revision=1).model_dump(mode="json", exclude_none=True))
            for n in self.ids
        ]
        headers = encode(Heartbeat(node="x"))[1]
        while (elapsed := loop.time() - start) < seconds:
            due = int(elapsed / step) + 1
            while sent < due:
                node, beat = fields[sent % len(fields)]
                beat["ts"] = time.time()
                body = msgpack.packb(beat)
                await self.nc.publish(subjects.node_heartbeat(node), body, headers=headers)
                sent += 1
            await asyncio.sleep(max(0.0, start + sent * step - loop.time()))
        await self.nc.flush()
        return sent
