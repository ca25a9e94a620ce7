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
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from . import snapshot, subjects
from .bus import ensure_bucket, jetstream, request, respond, respond_error
from .codec import decode_msg, encode
from .config import ServiceSettings
from .errors import KodoError, WireError
from .models import (
    Ack,
    Bye,
    Catalog,
    Empty,
    Heartbeat,
    NodeEntry,
    RegistryView,
    SyncRequest,
)
from .peers import Peers
from .tasks import TaskSet
from .view import MAX_REPLICAS, View, catalog_problem
from .viewstream import VIEW_PENDING_BYTES

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
        self._subs: list[Subscription] = []
        self._dirty: set[str] = set()
        self._flush = asyncio.Event()
        self.changed = asyncio.Event()
        """Set whenever the view changes, so peers republish without waiting for their timer."""
        self._fetching: set[str] = set()
        self._refused: dict[str, int] = {}
        """Node → revision of the catalog this service would not take (another organization's,
        for a provider; or an invalid one): its heartbeats fetch nothing until it changes."""
        self.peers = Peers(self)
        self.joined = True

    async def __aenter__(self) -> Registry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        js = jetstream(self.nc)
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
        self._subs.append(await self.nc.subscribe(subjects.NODE_ALL, cb=self._on_node))
        self._subs.append(await self.nc.subscribe(subjects.ADMIN_FORGET_ALL, cb=self._on_forget))
        if self.settings.feeds:
            # on a connection of their own (`Peers.reader`), through the bus's `KODO_VIEWS`
            # stream at our pace (`viewstream.py`): a backlog of views holds back neither
            # heartbeats, KV writes and liveness on `nc`, nor is it cut by the server
            await self.peers.read_views(await self.peers.reader(), None)
        else:  # asks for a provider's view (of a 0.1 registry) arrive on its own bus
            self._subs.append(
                await self.nc.subscribe(
                    subjects.REGISTRY_VIEW_ALL,
                    cb=self.on_view_msg,
                    pending_bytes_limit=VIEW_PENDING_BYTES,
                )
            )
        self._subs.append(
            await self.nc.subscribe(subjects.registry_ask(self.settings.id), cb=self._on_ask)
        )
        self.tasks.spawn(self._flusher(), "view flusher")
        self.tasks.spawn(self._liveness(), "liveness")
        body, headers = encode(SyncRequest(registry=self.settings.id))
        await self.nc.publish(subjects.SYNC, body, headers=headers)
        await self.peers.start()

    async def stop(self) -> None:
        """Also after a start cut short (a signal while starting): what it made is undone."""
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
        stale: list[str] = []
        stream = subjects.kv_stream(bucket)
        async for msg in snapshot.current(
            jetstream(self.nc), stream, subjects.kv_subject(bucket, ">")
        ):
            if not msg.data:
                continue  # a node removed from the view
            try:
                entry = decode_msg(_KvMsg(msg.subject, msg.data), NodeEntry)
            except WireError as exc:
                log.warning("dropping unreadable view entry %s: %s", msg.subject, exc)
                continue
            problem = catalog_problem(entry.catalog)
            if problem is not None:  # stored by a version that did not check names
                log.warning("dropping view entry %s: %s", msg.subject, problem)
                if subjects.is_token(entry.catalog.node):
                    stale.append(entry.catalog.node)
                continue
            self.view.share(entry.catalog)
            entries.append(entry)
        self.view.load(entries, time.time())
        if stale:  # not in the view: the first flush deletes their keys
            self._dirty.update(stale)
            self._flush.set()
        log.info("view restored from %s: %d nodes", bucket, len(entries))

    def _mark(self, *nodes: str) -> None:
        self._dirty.update(nodes)
        self._flush.set()
        self.peers.changed(nodes)

    async def _flusher(self) -> None:
        while True:
            await self._flush.wait()
            self._flush.clear()
            await self._write_dirty()

    async def _write_dirty(self) -> None:
        """Store every changed entry; one that cannot be stored never holds back the others.

        An entry the KV can never take (a key it refuses, a value over the server's payload
        limit) is dropped from the queue with an error; any other failure keeps the entry for
        the next flush and goes on with the rest, unless the connection is down (then every
        write would fail the same way: they all wait for the next change or the reconnect).
        """
        if self.kv is None:
            return
        retry: set[str] = set()
        first: tuple[str, BaseException] | None = None
        while self._dirty:
            # a burst (a federation's full view) is thousands of writes: a batch at a time in
            # flight, not one round trip after the other
            batch = [self._dirty.pop() for _ in range(min(WRITE_BATCH, len(self._dirty)))]
            results = await asyncio.gather(*map(self._write, batch), return_exceptions=True)
            for node, result in zip(batch, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                key = KEY.format(node=node)
                if isinstance(result, nats.js.errors.InvalidKeyError | nats.errors.MaxPayloadError):
                    log.error("cannot persist %s, ever (it stays in memory only): %r", key, result)
                elif isinstance(result, nats.errors.Error | TimeoutError):
                    retry.add(node)
                    first = first or (key, result)
                elif isinstance(result, BaseException):
                    raise result
            if retry and not self.nc.is_connected:
                break
        if first is not None:
            log.warning(
                "cannot persist %s and %d other(s) (will retry on next change): %r",
                first[0],
                len(retry) - 1,
                first[1],
            )
        self._dirty |= retry

    async def _write(self, node: str) -> None:
        assert self.kv is not None
        key = KEY.format(node=node)
        entry = self.view.entries.get(node)
        if entry is None:
            await self.kv.delete(key)
        else:
            await self.kv.put(key, self.peers.pack(entry))

    # -- announcements ---------------------------------------------------------------------------
    async def _on_node(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        if len(parts) != 4:
            self.rejects.reject(msg.subject, "not an announcement subject")
            return
        node, kind = parts[2], parts[3]
        if not subjects.is_token(node):
            # one sender name for every bad id: made-up ids must not grow the log throttle
            self.rejects.reject(
                "an invalid node id", f"{msg.subject!r}: the node id is not a subject token"
            )
            return
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
                elif not bye.forget:
                    self._on_stop(node, bye)
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
        problem = catalog_problem(catalog)
        if problem is not None:
            self._refuse(node, catalog.revision)
            raise WireError(subjects.node_catalog(node), problem)
        if not self._admits(catalog):
            self._refuse(node, catalog.revision)
            if self.view.remove(node):
                self._mark(node)
            return
        self._refused.pop(node, None)
        if not self._room(node, catalog.instance):
            return
        rivals = self.view.rivals(node, catalog.instance, catalog.revision)
        if rivals:
            self._rival(node, catalog.instance, catalog.revision, rivals)
            if self.view.join(catalog, time.time()):
                self._mark(node)
            return
        old = self.view.entries.get(node)
        known = self.view.replica(node, catalog.instance) is not None
        if self.view.put_catalog(catalog, time.time()):
            entry = self.view.entries[node]
            if old is None or old.via or old.status != "online" or entry.catalog is not old.catalog:
                log.info(
                    "node %s: %d flows (revision %d)", node, len(catalog.flows), catalog.revision
                )
            self._mark(node)
        if not known:
            self._joined(node, catalog.instance)

    def _on_stop(self, node: str, bye: Bye) -> None:
        """A process stopped on purpose; the node goes offline with its last process."""
        was = self.view.entries.get(node)
        online = was is not None and was.status == "online"
        if not self.view.stopped(node, bye.instance or None):
            return
        self._mark(node)
        entry = self.view.entries.get(node)
        if online and entry is not None and entry.status == "offline":
            log.info("node %s stopped (%s)", node, bye.reason or "bye")
        elif bye.instance:
            log.info(
                "node %s: replica %s stopped (%s), %d left",
                node,
                bye.instance,
                bye.reason or "bye",
                entry.replicas if entry else 0,
            )

    def _refuse(self, node: str, revision: int) -> None:
        self._refused.pop(node, None)
        self._refused[node] = revision
        if len(self._refused) > MAX_REFUSED:
            del self._refused[next(iter(self._refused))]

    def _room(self, node: str, instance: str) -> bool:
        if self.view.has_room(node, instance):
            return True
        self.rejects.reject(node, f"more than {MAX_REPLICAS} processes claim node {node!r}")
        return False

    def _joined(self, node: str, instance: str) -> None:
        entry = self.view.entries.get(node)
        if entry is not None and entry.replicas > 1:
            log.info("node %s: replica %s joined (%d replicas)", node, instance, entry.replicas)

    def _rival(self, node: str, instance: str, revision: int, rivals: list[str]) -> None:
        """Log, once per process, that two different processes claim one node id."""
        if self.view.replica(node, instance) is not None:
            return  # logged when it was first heard
        held = self.view.entries[node].catalog.revision
        log.warning(
            "node %s: process %s serves another catalog (revision %d) than its live "
            "replica(s) %s (revision %d): two different processes claim one node id; the view "
            "keeps the first catalog while they live",
            node,
            instance or "?",
            revision,
            ", ".join(i or "?" for i in rivals),
            held,
        )

    def _admits(self, catalog: Catalog) -> bool:
        """A provider serves its own organization only."""
        return self.settings.feeds or catalog.organization == self.settings.organization

    def _on_heartbeat(self, node: str, hb: Heartbeat) -> None:
        if hb.node != node:
            raise WireError(
                subjects.node_heartbeat(node),
                f"announcement for node {hb.node!r} on node {node!r}'s subject",
            )
        if not self._room(node, hb.instance):
            return
        if self.view.needs_catalog(hb):
            if self._refused.get(node) == hb.revision:
                return  # a catalog we would not take: fetched again only once it changes
            rivals = self.view.rivals(node, hb.instance, hb.revision)
            if rivals:
                self._rival(node, hb.instance, hb.revision, rivals)
            else:
                if node not in self._fetching:
                    self._fetching.add(node)
                    self.tasks.spawn(self._repair(node), f"repair {node}")
                return
        entry = self.view.entries[node]
        was = self.view.replica(node, hb.instance)
        if was is not None and was.suspect:
            log.warning(
                "node %s: replica %s is heard again (it was slow, not dead)", node, hb.instance
            )
        offline = entry.status == "offline"
        if self.view.beat(hb, time.time()):
            if offline:
                log.info("node %s is back online", node)
            self._mark(node)
        if was is None:
            self._joined(node, hb.instance)

    async def _repair(self, node: str) -> None:
        """Fetch a catalog we missed (or that changed) from the node itself."""
        try:
            catalog = await request(
                self.nc, subjects.svc_catalog(node), Empty(), Catalog, timeout=2.0
            )
            self._on_catalog(node, catalog)
        except WireError as exc:
            self.rejects.reject(node, exc)
        except (KodoError, nats.errors.Error) as exc:
            log.debug("cannot fetch the catalog of %s: %s", node, exc)
        finally:
            self._fetching.discard(node)

    # -- admin: forget -----------------------------------------------------------------------------
    async def _on_forget(self, msg: Msg) -> None:
        """`kodo-bus forget`: every registry answers for its own view (see `forget`)."""
        try:
            decode_msg(msg, Empty)
        except WireError as exc:
            await respond_error(msg, exc.kind, exc.reason)
            return
        target = subjects.token(msg.subject, 3)
        if not subjects.is_token(target):
            await respond_error(msg, "invalid_request", f"{target!r} is not a node id")
            return
        await respond(msg, self.forget(target, time.time()))

    def forget(self, target: str, now: float) -> Ack:
        """Drop `target` from the view: a node no process serves any more, or a registry of
        another bus gone for good (with everything taken in from it).

        Refused (`ok` false) while this registry still has a reason to believe it lives: the
        node is online here, or its entry comes from a registry that still republishes (that
        registry's view is the authority: the entry would be back with its next view).
        """
        me, ttl = self.settings.id, self.settings.liveness_ttl
        local = self.view.local
        if target == me or (local is not None and target == local.node):
            return Ack(ok=False, message=f"{me}: {target} is this registry itself")
        entry = self.view.entries.get(target)
        source = target in self.view.source_seen
        if entry is None and not source:
            return Ack(message=f"{me}: {target} was not in its view")
        if entry is not None and entry.status == "online":
            return Ack(
                ok=False,
                message=f"{me}: node {target} is online; stop it first or use disconnect",
            )
        if entry is not None and entry.via and self.view.source_live(entry.via, now, ttl):
            urls = ", ".join(entry.catalog.urls) or "its bus"
            return Ack(
                ok=False,
                message=f"{me}: node {target} comes from the live registry {entry.via}: "
                f"forget it on {urls}",
            )
        if source and self.view.source_live(target, now, ttl):
            return Ack(ok=False, message=f"{me}: registry {target} is live (its view is fresh)")
        dropped = [target] if entry is not None and self.view.remove(target) else []
        if source:
            dropped += self.view.drop_source(target)
        self._mark(*dropped)
        log.info("forgot %s (admin request): %d entries dropped", target, len(dropped))
        what = f"{len(dropped)} entries dropped" if source else "dropped"
        return Ack(message=f"{me}: {target} forgotten ({what})")

    # -- views of other registries ---------------------------------------------------------------
    async def _on_ask(self, msg: Msg) -> None:
        await self.peers.on_ask(msg, None)

    async def on_view_msg(self, msg: Msg, urls: list[str] | None = None) -> None:
        """A republished view, from our own bus (`urls` None) or from a `connect` bus."""
        sender = subjects.token(msg.subject, 2)
        if sender == self.settings.id:
            return
        if not subjects.is_token(sender):
            self.rejects.reject(
                "an invalid registry id", f"{msg.subject!r}: the registry id is not a subject token"
            )
            return
        if not self.settings.feeds and not _maybe_ask(msg.data):
            return  # a provider takes nothing in: only asks matter, decode nothing else
        try:
            # entries: each catalog taken in is checked like one (and loops are left out)
            view, problems = self.peers.decode(msg, urls)
        except WireError as exc:
            self.rejects.reject(sender, exc)
            return
        if view.registry != sender:
            self.rejects.reject(sender, f"view of {view.registry!r} on {sender!r}'s subject")
            return
        if view.kind == "ask":
            self.peers.asked(view, urls)
            return
        if not self.settings.feeds:
            return
        for problem in problems:
            self.rejects.reject(sender, f"an entry of the view of {sender!r}: {problem}")
        changed = self.peers.receive(view, urls)
        if changed:
            self._mark(*changed)

    # -- liveness --------------------------------------------------------------------------------
    async def _liveness(self) -> None:
        """Judge nodes by their heartbeats, on a clock that stops while this registry is cut off.

        While the registry's own connection is down it hears nothing, which says nothing about
        the nodes; after it reconnects, every node and process gets a fresh ttl to be heard.
        """
        ttl = self.settings.liveness_ttl
        reconnects = self.nc.stats["reconnects"]
        outage = False
        behind = False
        prune_at = 0.0
        while True:
            await asyncio.sleep(min(self.settings.heartbeat, ttl) / 2)
            if not self.nc.is_connected:
                if not outage:
                    log.warning("cut off from NATS: no node is judged until it is back")
                outage = True
                continue
            if outage or self.nc.stats["reconnects"] != reconnects:
                outage = False
                reconnects = self.nc.stats["reconnects"]
                changed = self.view.refresh(time.time())
                log.info("back on NATS: every node has %g s to be heard from again", ttl)
                self._mark(*changed)
                if self._dirty:
                    self._flush.set()  # writes that failed during the outage
                continue
            if self.behind():
                # the silence is in our own queue, not on the wire: heartbeats of live nodes
                # wait there (judged now, they were turned offline, and their executions
                # would end lost); nodes are judged again once the backlog is read
                if not behind:
                    log.warning("behind on reading announcements: no node is judged meanwhile")
                behind = True
                continue
            if behind:
                # as after an outage: the last heartbeats of live nodes may be the very last
                # messages read, so every node gets a fresh ttl from now
                behind = False
                self._mark(*self.view.refresh(time.time()))
                log.info("caught up on reading: every node has %g s to be heard from again", ttl)
                continue
            now = time.time()
            expired = self.view.expire(now, ttl)
            if expired.changed:
                self._mark(*expired.changed)
            if now >= prune_at:
                prune_at = now + min(PRUNE_EVERY, self.settings.retention / 2)
                self._prune(now)
            for node in expired.died:
                log.warning("node %s is offline (silent for more than %g s)", node, ttl)
                if node not in self.view.replicas:  # no process of it was ever heard
                    self.tasks.spawn(self._confirm(node, None, 0), f"lost? {node}")
            for node, instance, suspicion in expired.silent:
                log.warning(
                    "node %s: replica %s silent for more than %g s", node, instance or "?", ttl
                )
                self.tasks.spawn(self._confirm(node, instance, suspicion), f"lost? {node}")

    def behind(self) -> bool:
        """Whether messages wait unread in a subscription, more than a moment's worth."""
        return any(s.pending_msgs > BEHIND_MSGS for s in (*self._subs, *self.peers.subs))

    def _prune(self, now: float) -> None:
        """Drop nodes offline for longer than `retention` (see `View.prune`)."""
        retention = self.settings.retention
        gone = self.view.prune(now, retention, self.settings.liveness_ttl)
        if gone:
            self._mark(*gone)
            shown = ", ".join(sorted(gone)[:10]) + (" ..." if len(gone) > 10 else "")
            log.info("pruned %d nodes offline for more than %g s: %s", len(gone), retention, shown)

    async def _confirm(self, node: str, instance: str | None, suspicion: int) -> None:
        """End the executions of a silent process (`instance` None: of a node whose processes
        were never heard) as `lost`, once it is surely dead.

        Silence alone is not death: a process whose event loop stalled (say, while Ray starts)
        beats again. So it gets `grace` more to be heard, and it is judged only if this
        registry was connected the whole time — proven by a round trip to the server and an
        unchanged reconnect count. A suspicion dropped for an outage is raised again after a
        fresh ttl (see `_liveness`).
        """
        reconnects = self.nc.stats["reconnects"]
        await asyncio.sleep(max(LOST_GRACE, self.settings.liveness_ttl))
        try:
            await self.nc.flush(timeout=int(LOST_GRACE))
        except (nats.errors.Error, TimeoutError):
            return
        if not self.nc.is_connected or self.nc.stats["reconnects"] != reconnects:
            return
        if instance is None:
            if not self.view.silent_node(node):
                return
        elif not self.view.forget(node, instance, suspicion):
            return
        who = f"node {node}" if instance is None else f"node {node} replica {instance or '?'}"
        await _mark_lost(self.nc, node, instance, who)


LOST_GRACE = 2.0
"""Seconds, at least, a silent process gets past the ttl before its executions end `lost`."""
BEHIND_MSGS = 1000
"""Messages waiting unread in one subscription past which the registry is behind on reading
(half a second of heartbeats at 10,000 nodes beating every 5 s): it judges no node meanwhile."""
WRITE_BATCH = 64
"""View entries written to the KV bucket at once (in flight together)."""
MAX_REFUSED = 100_000
"""Refused catalogs remembered (the oldest forgotten past it: then fetched once more)."""
PRUNE_EVERY = 60.0
"""Seconds, at most, between two looks for nodes offline past the retention."""


async def _mark_lost(nc: NATS, node: str, instance: str | None, who: str) -> None:
    """End the executions of a dead process (when the execution layer is installed)."""
    try:
        module: Any = importlib.import_module(".lifecycle", __package__)
    except ImportError:
        return
    try:
        count = await module.mark_lost(jetstream(nc), node, instance)
        if count:
            log.info("%d executions of %s marked lost", count, who)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # never let the execution layer crash the registry
        log.error("cannot mark executions of %s lost: %r", who, exc)


def _maybe_ask(data: bytes) -> bool:
    """Whether a view message may be an `ask` (a cheap look at its bytes: every ask holds the
    string; a message without it is a view a provider does not take in)."""
    return b"ask" in data


class _KvMsg:
    """Adapter so KV values decode through the same codec as messages."""

    def __init__(self, key: str, data: bytes) -> None:
        self.subject = key
        self.data = data
        self.headers: dict[str, str] | None = None
