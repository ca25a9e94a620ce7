"""The node role: announce the catalog, beat the heart, answer `kodo.sync`, say bye.

A node never waits for a registry: it announces into the void at start, and any registry that
comes later asks for a re-announcement with `kodo.sync`. Each node answers a sync after a random
delay so a thousand nodes do not hit the registry in the same millisecond. Heartbeats carry the
catalog revision, so a registry that missed a catalog notices and fetches it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Protocol

import psutil
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from . import subjects
from .codec import decode_msg, encode
from .config import ServiceSettings
from .errors import WireError
from .flows import FlowSpec
from .models import Bye, Catalog, FlowItem, FlowsPage, FlowsQuery, Heartbeat, SyncRequest
from .tasks import TaskSet
from .view import query_flows

if TYPE_CHECKING:
    from .service import Rejects

log = logging.getLogger("kodo_bus.node")

SYNC_SPREAD = 1.0
"""Longest random delay (seconds, capped at one heartbeat) before answering `kodo.sync`."""


class _Runner(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def load(self) -> tuple[int, int, int]: ...


class Node:
    """Announcer of one node's flows; `joined` turns False after `disconnect`."""

    def __init__(
        self, nc: NATS, settings: ServiceSettings, flows: list[FlowSpec], rejects: Rejects
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.flows = flows
        self.rejects = rejects
        self.started = time.time()
        self.catalog = Catalog(
            node=settings.id,
            organization=settings.organization,
            role=settings.role,
            # A restart may change flows or organization: a fresh revision makes registries
            # that kept the old catalog fetch the new one at the first heartbeat.
            revision=time.time_ns() // 1_000_000,
            started=self.started,
            flows=[f.info() for f in flows],
        )
        self.joined = False
        self.tasks = TaskSet(log)
        self.runner: _Runner | None = None
        self._sync_pending = False
        self._process = psutil.Process()
        self._process.cpu_percent(None)

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self._start_runner()
        self._sync_sub = await self.nc.subscribe(subjects.SYNC, cb=self._on_sync)
        self.joined = True
        await self.announce()
        self.tasks.spawn(self._heartbeats(), "heartbeats")

    async def _start_runner(self) -> None:
        try:
            # Looked up by name: the execution layer is optional (a catalog-only node works).
            module: Any = importlib.import_module(".runner", __package__)
        except ImportError:
            return
        runner: _Runner = module.Runner(self.nc, self.settings, self.flows)
        await runner.start()
        self.runner = runner

    async def stop(self) -> None:
        """Stop announcing, let the runner finish (bounded by `grace`), then say bye.

        Heartbeats go on while the runner finishes: a node silent for `ttl` during its grace
        period would have its still-running executions declared lost by registries.
        """
        await self._sync_sub.unsubscribe()
        if self.runner is not None:
            await self.runner.stop()
        await self.tasks.close()
        if self.joined:
            await self._bye("stop", forget=False)

    async def disconnect(self) -> None:
        """Leave the federation but keep serving: registries drop this node's entries."""
        if not self.joined:
            return
        self.joined = False
        await self.tasks.close()
        await self._bye("disconnect", forget=True)

    async def _bye(self, reason: str, *, forget: bool) -> None:
        self.joined = False
        body, headers = encode(Bye(node=self.settings.id, reason=reason, forget=forget))
        await self.nc.publish(subjects.node_bye(self.settings.id), body, headers=headers)
        await self.nc.flush()

    async def announce(self) -> None:
        body, headers = encode(self.catalog)
        await self.nc.publish(subjects.node_catalog(self.settings.id), body, headers=headers)

    def heartbeat(self) -> Heartbeat:
        running, queued, capacity = self.runner.load() if self.runner else (0, 0, 0)
        return Heartbeat(
            node=self.settings.id,
            revision=self.catalog.revision,
            ts=time.time(),
            running=running,
            queued=queued,
            capacity=capacity,
            cpu=self._process.cpu_percent(None),
            memory=self._process.memory_info().rss,
        )

    async def _heartbeats(self) -> None:
        subject = subjects.node_heartbeat(self.settings.id)
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            body, headers = encode(self.heartbeat())
            await self.nc.publish(subject, body, headers=headers)

    async def _on_sync(self, msg: Msg) -> None:
        try:
            decode_msg(msg, SyncRequest)
        except WireError as exc:
            self.rejects.reject(msg.subject, exc)
            return
        if self.joined and not self._sync_pending:
            self._sync_pending = True
            self.tasks.spawn(self._answer_sync(), "sync answer")

    async def _answer_sync(self) -> None:
        try:
            await asyncio.sleep(random.uniform(0, min(SYNC_SPREAD, self.settings.heartbeat)))
            if self.joined:
                await self.announce()
        finally:
            self._sync_pending = False

    def flows_page(self, query: FlowsQuery) -> FlowsPage:
        items = [
            FlowItem(
                **info.model_dump(), node=self.settings.id, organization=self.catalog.organization
            )
            for info in self.catalog.flows
        ]
        return query_flows(items, query)
