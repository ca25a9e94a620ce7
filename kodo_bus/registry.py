"""The registry role (feed on) and the provider role (feed off).

A registry listens to every node announcing on its bus and keeps its view in a KV bucket of its
own, so a restart serves the same view at once. Liveness stays in memory (heartbeat age), and the
bucket is written only when something a reader cares about changes — a heartbeat costs no write.
A provider is the same machine with two filters: only nodes of its own organization, and nothing
taken in from other registries. Republishing to other buses lives in `peers.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from . import snapshot, subjects
from .bus import ensure_bucket, request
from .codec import decode_msg, encode
from .config import ServiceSettings
from .errors import KodoError, WireError
from .models import (
    Bye,
    Catalog,
    Empty,
    Heartbeat,
    NodeEntry,
    RegistryView,
    ServiceInfo,
    SyncRequest,
)
from .peers import Peers
from .tasks import TaskSet
from .view import View

if TYPE_CHECKING:
    from .service import Rejects

log = logging.getLogger("kodo_bus.registry")

KEY = "node.{node}"


class Registry:
    """The view of one registry or provider, fed by its bus and (feed on) by peer registries."""

    def __init__(
        self, nc: NATS, settings: ServiceSettings, rejects: Rejects, local: Catalog | None
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.rejects = rejects
        self.view = View(settings.id, local)
        self.tasks = TaskSet(log)
        self.kv: KeyValue | None = None
        self._dirty: set[str] = set()
        self._flush = asyncio.Event()
        self.changed = asyncio.Event()
        """Set whenever the view changes, so peers republish without waiting for their timer."""
        self._fetching: set[str] = set()
        self.peers = Peers(self)
        self.joined = True

    async def __aenter__(self) -> Registry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        js = self.nc.jetstream()
        bucket = subjects.bucket_view(self.settings.id)
        if self.settings.cache_reset:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_key_value(bucket)
        self.kv = await ensure_bucket(
            js,
            bucket,
            description="kodo-bus: view of one registry",
            replicas=self.settings.replicas,
        )
        await self._load()
        self._subs = [await self.nc.subscribe(subjects.NODE_ALL, cb=self._on_node)]
        if self.settings.feeds:
            self._subs.append(
                await self.nc.subscribe(subjects.REGISTRY_VIEW_ALL, cb=self.on_view_msg)
            )
        self.tasks.spawn(self._flusher(), "view flusher")
        self.tasks.spawn(self._liveness(), "liveness")
        body, headers = encode(SyncRequest(registry=self.settings.id))
        await self.nc.publish(subjects.SYNC, body, headers=headers)
        await self.peers.start()

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        await self.peers.stop()
        await self.tasks.close()
        await self._write_dirty()

    async def disconnect(self) -> None:
        """Withdraw this view from every bus it is republished to (peers drop our entries)."""
        self.joined = False
        await self.peers.withdraw()

    def republished(self) -> RegistryView:
        """The view as this service republishes it (a provider's holds no taken-in entries)."""
        return RegistryView(
            registry=self.settings.id,
            organization=self.settings.organization,
            feed=self.settings.feeds,
            urls=list(self.settings.nats),
            nodes=self.view.all_entries() if self.joined else [],
        )

    # -- persistence -----------------------------------------------------------------------------
    async def _load(self) -> None:
        """The stored view, read in one pass (one consumer, not a `get` per node)."""
        assert self.kv is not None
        bucket = subjects.bucket_view(self.settings.id)
        entries: list[NodeEntry] = []
        stream = subjects.kv_stream(bucket)
        async for msg in snapshot.current(
            self.nc.jetstream(), stream, subjects.kv_subject(bucket, ">")
        ):
            if not msg.data:
                continue  # a node removed from the view
            try:
                entries.append(decode_msg(_KvMsg(msg.subject, msg.data), NodeEntry))
            except WireError as exc:
                log.warning("dropping unreadable view entry %s: %s", msg.subject, exc)
        self.view.load(entries, time.time())
        log.info("view restored from %s: %d nodes", bucket, len(entries))

    def _mark(self, *nodes: str) -> None:
        self._dirty.update(nodes)
        self._flush.set()
        self.changed.set()

    async def _flusher(self) -> None:
        while True:
            await self._flush.wait()
            self._flush.clear()
            await self._write_dirty()

    async def _write_dirty(self) -> None:
        if self.kv is None:
            return
        while self._dirty:
            node = self._dirty.pop()
            key = KEY.format(node=node)
            entry = self.view.entries.get(node)
            try:
                if entry is None:
                    await self.kv.delete(key)
                else:
                    await self.kv.put(key, encode(entry)[0])
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("cannot persist %s (will retry on next change): %r", key, exc)
                self._dirty.add(node)
                return

    # -- announcements ---------------------------------------------------------------------------
    async def _on_node(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        if len(parts) != 4:
            self.rejects.reject(msg.subject, "not an announcement subject")
            return
        node, kind = parts[2], parts[3]
        if node == self.settings.id:
            return  # a hybrid's own node is kept in the view as `local`
        try:
            if kind == "catalog":
                self._on_catalog(node, decode_msg(msg, Catalog))
            elif kind == "heartbeat":
                self._on_heartbeat(node, decode_msg(msg, Heartbeat))
            elif kind == "bye":
                bye = decode_msg(msg, Bye)
                self._check_owner(msg, node, bye.node)
                if bye.forget and self.view.remove(node):
                    log.info("node %s left the federation (%s)", node, bye.reason or "bye")
                    self._mark(node)
                elif not bye.forget and self.view.stopped(node):
                    log.info("node %s stopped (%s)", node, bye.reason or "bye")
                    self._mark(node)
            else:
                self.rejects.reject(msg.subject, f"unknown announcement kind {kind!r}")
        except WireError as exc:
            self.rejects.reject(node, exc)

    def _check_owner(self, msg: Msg, subject_node: str, claimed: str) -> None:
        if claimed != subject_node:
            raise WireError(
                msg.subject, f"announcement for node {claimed!r} on node {subject_node!r}'s subject"
            )

    def _on_catalog(self, node: str, catalog: Catalog) -> None:
        if catalog.node != node:
            raise WireError(
                subjects.node_catalog(node),
                f"announcement for node {catalog.node!r} on node {node!r}'s subject",
            )
        if not self._admits(catalog):
            if self.view.remove(node):
                self._mark(node)
            return
        if self.view.put_catalog(catalog, time.time()):
            log.info("node %s: %d flows (revision %d)", node, len(catalog.flows), catalog.revision)
            self._mark(node)

    def _admits(self, catalog: Catalog) -> bool:
        """A provider serves its own organization only."""
        return self.settings.feeds or catalog.organization == self.settings.organization

    def _on_heartbeat(self, node: str, hb: Heartbeat) -> None:
        if hb.node != node:
            raise WireError(
                subjects.node_heartbeat(node),
                f"announcement for node {hb.node!r} on node {node!r}'s subject",
            )
        if self.view.needs_catalog(hb):
            if node not in self._fetching:
                self._fetching.add(node)
                self.tasks.spawn(self._repair(node), f"repair {node}")
            return
        if self.view.beat(hb, time.time()):
            log.info("node %s is back online", node)
            self._mark(node)

    async def _repair(self, node: str) -> None:
        """Fetch a catalog we missed (or that changed) from the node itself."""
        try:
            catalog = await request(
                self.nc, subjects.svc_catalog(node), Empty(), Catalog, timeout=2.0
            )
            self._on_catalog(node, catalog)
        except (KodoError, nats.errors.Error) as exc:
            log.debug("cannot fetch the catalog of %s: %s", node, exc)
        finally:
            self._fetching.discard(node)

    # -- views of other registries ---------------------------------------------------------------
    async def on_view_msg(self, msg: Msg, urls: list[str] | None = None) -> None:
        """A republished view, from our own bus (`urls` None) or from a `connect` bus."""
        sender = subjects.token(msg.subject, 2)
        if sender == self.settings.id:
            return
        try:
            view = decode_msg(msg, RegistryView)
        except WireError as exc:
            self.rejects.reject(sender, exc)
            return
        if view.registry != sender:
            self.rejects.reject(sender, f"view of {view.registry!r} on {sender!r}'s subject")
            return
        changed = self.view.take_in(view, urls or [], time.time())
        if changed:
            self._mark(*changed)

    # -- liveness --------------------------------------------------------------------------------
    async def _liveness(self) -> None:
        ttl = self.settings.liveness_ttl
        while True:
            await asyncio.sleep(min(self.settings.heartbeat, ttl) / 2)
            died, flipped = self.view.expire(time.time(), ttl)
            if flipped:
                self._mark(*flipped)
            for node in died:
                log.warning("node %s is offline (silent for more than %g s)", node, ttl)
                self.tasks.spawn(_mark_lost(self.nc, node, ttl), f"mark lost {node}")


async def _mark_lost(nc: NATS, node: str, ttl: float) -> None:
    """End the executions of a dead node as `lost` (when the execution layer is installed).

    Silence alone is not death: a node whose event loop stalled (say, while Ray starts) still
    answers a direct request, and its executions go on. Only a node that also fails that
    request has its executions ended.
    """
    with contextlib.suppress(KodoError):
        await request(nc, subjects.svc_info(node), Empty(), ServiceInfo, timeout=max(2.0, ttl))
        log.warning("node %s is slow but answers: its executions are not marked lost", node)
        return
    try:
        module: Any = importlib.import_module(".executions", __package__)
    except ImportError:
        return
    try:
        count = await module.mark_lost(nc.jetstream(), node)
        if count:
            log.info("%d executions of %s marked lost", count, node)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # never let the execution layer crash the registry
        log.error("cannot mark executions of %s lost: %r", node, exc)


class _KvMsg:
    """Adapter so KV values decode through the same codec as messages."""

    def __init__(self, key: str, data: bytes) -> None:
        self.subject = key
        self.data = data
        self.headers: dict[str, str] | None = None
