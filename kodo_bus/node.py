"""The node role: announce the catalog, beat the heart, answer `kodo.sync`, say bye.

A node never waits for a registry: it announces into the void at start, and any registry that
comes later asks for a re-announcement with `kodo.sync`. Each node answers a sync after a random
delay so a thousand nodes do not hit the registry in the same millisecond. Heartbeats carry the
catalog revision, so a registry that missed a catalog notices and fetches it.

Several processes may serve one node id (replicas). Each has its own instance id, in its
heartbeats and catalog, so registries judge each by its own heartbeats; the catalog revision is
a hash of what the catalog offers, so replicas with the same flows agree on it. Heartbeats go on
through outages: a failed one is logged once per outage, and soon after a reconnect the node
announces its catalog and beats, since registries may have missed both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import logging
import random
import secrets
import time
from typing import TYPE_CHECKING, Any, Protocol

import nats.errors
import psutil
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from . import subjects
from .codec import decode_msg, encode
from .config import ServiceSettings
from .discovery import live_services
from .errors import ConfigError, WireError
from .flows import FlowSpec
from .models import Bye, Catalog, FlowItem, FlowsPage, FlowsQuery, Heartbeat, SyncRequest
from .tasks import TaskSet
from .view import query_flows

if TYPE_CHECKING:
    from .service import Rejects

log = logging.getLogger("kodo_bus.node")

CLAIM_WINDOW = 0.5
"""Seconds a starting node listens for other processes claiming its id."""
BYE_FLUSH = 1
"""Seconds the bye's flush may take: with the server gone it would wait 10 s for nothing."""
SYNC_SPREAD = 1.0
"""Longest random delay (seconds, capped at one heartbeat) before answering `kodo.sync`."""


class _Runner(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def load(self) -> tuple[int, int, int]: ...


class Node:
    """Announcer of one node's flows; `joined` turns False after `disconnect`."""

    def __init__(
        self,
        nc: NATS,
        settings: ServiceSettings,
        flows: list[FlowSpec],
        rejects: Rejects,
        instance: str = "",
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.flows = flows
        self.rejects = rejects
        self.instance = instance or secrets.token_hex(4)
        """This process among the replicas of the node id."""
        self.started = time.time()
        catalog = Catalog(
            node=settings.id,
            organization=settings.organization,
            role=settings.role,
            started=self.started,
            flows=[f.info() for f in flows],
            instance=self.instance,
        )
        self.catalog = catalog.model_copy(update={"revision": content_revision(catalog)})
        self.joined = False
        self.tasks = TaskSet(log)
        self.runner: _Runner | None = None
        self._sync_sub: Subscription | None = None
        self._sync_pending = False
        self._wake = asyncio.Event()
        """Set on a reconnect: the heartbeat loop announces and beats at once."""
        self._process = psutil.Process()
        self._process.cpu_percent(None)

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self._check_claim()
        await self._start_runner()
        self._sync_sub = await self.nc.subscribe(subjects.SYNC, cb=self._on_sync)
        self.joined = True
        await self.announce()
        self.tasks.spawn(self._heartbeats(), "heartbeats")

    async def _check_claim(self) -> None:
        """Refuse a node id that a live process serves with another catalog (or another role).

        Same catalog (revision) is a replica, welcome; another one would make registries keep
        whichever catalog they heard first while launches reach both processes by turns, so
        half of them would fail. Every kodo-bus process answers `$SRV.PING.kodo-bus` with its
        id, role, instance and (a node's) catalog revision in the micro metadata; this one's
        own answer is told apart by its instance. Raised before Ray starts, so a refused
        process stops at once.
        """
        me, mine = self.settings.id, str(self.catalog.revision)
        for meta in await live_services(self.nc, CLAIM_WINDOW):
            if meta.get("id") != me or meta.get("instance") == self.instance:
                continue
            other = meta.get("instance", "?")
            if meta.get("role") != self.settings.role:
                raise ConfigError(
                    f"id {me!r} is taken: a live {meta.get('role', '?')} (instance {other}) "
                    f"uses it; stop it first, or give this {self.settings.role} another id"
                )
            revision = meta.get("revision")
            if revision is not None and revision != mine:
                raise ConfigError(
                    f"node id {me!r} is taken: a live process (instance {other}) serves it with "
                    f"another catalog (revision {revision}, this one's is {mine}); replicas of "
                    f"one id must offer the same flows: stop it first, or give this node "
                    f"another id"
                )

    async def _start_runner(self) -> None:
        try:
            # Looked up by name: the execution layer is optional (a catalog-only node works).
            module: Any = importlib.import_module(".runner", __package__)
        except ImportError:
            return
        runner: _Runner = module.Runner(self.nc, self.settings, self.flows, instance=self.instance)
        await runner.start()
        self.runner = runner

    async def stop(self) -> None:
        """Stop announcing, let the runner finish (bounded by `grace`), then say bye.

        Heartbeats go on while the runner finishes: a node silent for `ttl` during its grace
        period would have its still-running executions declared lost by registries.
        """
        if self._sync_sub is not None:  # None: stopped while starting
            with contextlib.suppress(nats.errors.Error):  # a closed connection has none
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
        """Say bye if NATS can hear it; registries see an unreachable node go silent anyway."""
        self.joined = False
        bye = Bye(node=self.settings.id, reason=reason, forget=forget, instance=self.instance)
        body, headers = encode(bye)
        try:
            await self.nc.publish(subjects.node_bye(self.settings.id), body, headers=headers)
            await self.nc.flush(timeout=BYE_FLUSH)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not say bye (NATS unreachable: %r)", exc)

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
            instance=self.instance,
        )

    def reconnected(self) -> None:
        """The connection came back (the service's reconnect callback)."""
        self._wake.set()

    async def _heartbeats(self) -> None:
        """Beat for the life of the process, whatever one beat meets.

        A beat that fails (no connection, a full reconnect buffer, a runner that cannot say
        its load) is logged once per outage and the next one is tried on time: a node that
        stopped beating would have its live executions declared lost. After a reconnect —
        seen by the callback or by the connection's reconnect count — the catalog is
        announced again and a beat goes out, after a random delay of at most a heartbeat (a
        whole federation reconnects at once), for registries that missed them.
        """
        subject = subjects.node_heartbeat(self.settings.id)
        reconnects = self.nc.stats["reconnects"]
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.heartbeat)
            self._wake.clear()
            try:
                if self.nc.stats["reconnects"] != reconnects:
                    reconnects = self.nc.stats["reconnects"]
                    # spread like a sync answer: a whole federation reconnects at once
                    await asyncio.sleep(
                        random.uniform(0, min(SYNC_SPREAD, self.settings.heartbeat))
                    )
                    if self.joined:
                        await self.announce()
                body, headers = encode(self.heartbeat())
                await self.nc.publish(subject, body, headers=headers)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                if not failing:
                    log.warning("cannot send heartbeats (%r); retrying every beat", exc)
                failing = True
                continue
            except Exception:  # a bug must not silence the node: it would be declared dead
                if not failing:
                    log.exception("cannot send heartbeats; retrying every beat")
                failing = True
                continue
            if failing:
                log.info("heartbeats are going out again")
                failing = False

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


def content_revision(catalog: Catalog) -> int:
    """The catalog's revision: a hash of what it offers, the same for every replica serving the
    same flows (so heartbeats of replicas agree), a new one when a restart changes them.

    48 bits: exact in every JSON reader (JavaScript's numbers stop at 53).
    """
    offer = catalog.model_dump(mode="json", exclude={"revision", "started", "instance", "v"})
    digest = hashlib.blake2b(json.dumps(offer, sort_keys=True).encode(), digest_size=6).digest()
    return int.from_bytes(digest, "big")
