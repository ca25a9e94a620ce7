"""Republishing a registry's view to other buses, and (feed on) taking in theirs, incrementally.

Buses joined at the NATS level are one bus; `connect` names independent buses. For each one the
registry keeps a second NATS connection (retried forever in the background, so a missing peer
never blocks start). On it the registry publishes its view on `kodo.registry.<id>.view`; with
feed on, it reads the views other registries publish there (and on its own bus) through that
bus's `KODO_VIEWS` stream, on a connection of their own (`viewstream.py`, `reader`). A provider
also republishes on its own bus, where registries with feed on take it in; it never takes
anything in.

What goes on the wire is a numbered stream per bus (see `RegistryView` and ARCHITECTURE.md,
"Federation"): the whole view once (`full`, cut into parts under `CHUNK_BYTES`), then only the
entries that changed (`changes`), and a small `beat` in a quiet heartbeat interval so receivers
know the sender lives. A receiver that misses a message (a gap in `seq`, a new `epoch`) asks for
a `full` on the bus it heard the stream on; nothing else ever resends the whole view.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from . import subjects
from .bus import connect
from .codec import CONTENT_TYPE, MSGPACK, content_type_of, decode_msg, encode
from .config import ConnectSettings
from .errors import ConnectError, WireError
from .models import SCHEMA_VERSION, Catalog, FlowInfo, NodeEntry, RegistryView
from .tasks import TaskSet
from .view import catalog_problem
from .viewstream import VIEW_PENDING_BYTES, ViewReader

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger("kodo_bus.peers")

CHUNK_BYTES = 256 * 1024
"""Largest view message a registry publishes (smaller still if the server's max_payload is):
a protocol bound, not a setting, so one whole view never becomes one multi-megabyte message."""
COALESCE = 0.02
"""Seconds a change waits for others before it is sent: a burst of announcements goes out as a
few messages, and a change still crosses one bus in well under a second."""
MAX_STREAMS = 1024
"""Streams of other registries a receiver tracks; the oldest is dropped past it (then asked
for afresh when heard again), so made-up registry ids cannot grow memory."""
ASK_BACKOFF_BEATS = 6
"""Longest wait between two asks of one stream, in heartbeats."""
CACHED_PER_NODE = 4
"""Catalogs remembered per node by the bytes they arrived as (a node's catalog reaches a
registry from several streams, with or without `urls` filled in)."""
PACE_PARTS = 16
"""Parts of a view sent between two round trips to the server: a whole view goes out in steps
the server and the receivers keep up with, not as one burst of tens of MB."""
ENCODE_SLICE = 100
"""Entries encoded between two turns of the event loop when a view goes out."""
_FLOWS_KEY = msgpack.packb("flows")
_UNPACK_ERRORS = (
    ValueError,
    TypeError,
    msgpack.ExtraData,
    msgpack.FormatError,
    msgpack.StackError,
    msgpack.OutOfData,
)


@dataclass(slots=True)
class WireEntry:
    """One entry of a view message as it arrived: its catalog not decoded (only where its bytes
    are, and its small fields), everything else plain data."""

    span: tuple[int, int]
    """Where the catalog's bytes are in the message."""
    flows: tuple[int, int]
    """Where its flows are (the bulk of it)."""
    head: dict[str, Any]
    """The catalog's fields but `flows` (node, revision, urls...)."""
    fields: dict[str, Any]
    """The entry's fields but `catalog` (status, path...)."""


def parse_view(subject: str, data: bytes) -> tuple[dict[str, Any], list[WireEntry]]:
    """A msgpack `RegistryView` cut apart without building its catalogs.

    Decoding every flow of every entry (and validating it) was most of a registry's time in a
    federation: each node's catalog reaches it from several streams, and again with each change
    of the node's status. The flows are skipped here (C speed, nothing allocated) and decoded
    later only for catalogs whose bytes the registry has not seen yet.
    """
    up = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1))
    up.feed(data)
    head: dict[str, Any] = {}
    entries: list[WireEntry] = []
    try:
        for _ in range(up.read_map_header()):
            key = up.unpack()
            if key != "nodes":
                head[key] = up.unpack()
                continue
            for _ in range(up.read_array_header()):
                fields: dict[str, Any] = {}
                span = flows = (0, 0)
                small: dict[str, Any] = {}
                for _ in range(up.read_map_header()):
                    name = up.unpack()
                    if name != "catalog":
                        fields[name] = up.unpack()
                        continue
                    start = up.tell()
                    for _ in range(up.read_map_header()):
                        field = up.unpack()
                        if field == "flows":
                            at = up.tell()
                            up.skip()
                            flows = (at, up.tell())
                        else:
                            small[field] = up.unpack()
                    span = (start, up.tell())
                entries.append(WireEntry(span, flows, small, fields))
        if up.tell() != len(data):
            raise msgpack.ExtraData(None, None)
    except _UNPACK_ERRORS as exc:
        raise WireError(subject, f"undecodable view ({exc!r})") from None
    return head, entries


@dataclass(slots=True)
class _Outbound:
    """This registry's stream on one bus."""

    nc: NATS
    epoch: str = field(default_factory=lambda: secrets.token_hex(6))
    seq: int = 0
    full: bool = True
    """A `full` is due (first message, or someone asked)."""
    last: float = 0.0
    """When the last message went out (monotonic)."""


@dataclass(slots=True)
class _Inbound:
    """What a receiver knows of one sender's stream on one bus."""

    epoch: str = ""
    seq: int = 0
    synced: bool = False
    """A `full` was taken in and every message since, in order."""
    got: set[str] | None = None
    """Nodes of the `full` being taken in, its parts so far all in order (None: not taking
    one in); the sender's other copies are dropped when its last part arrives."""
    asked: float = 0.0
    backoff: float = 0.0
    """Seconds before asking again (0: the first wait); doubles with each ask until a `full`
    arrives whole."""


class Peers:
    """The `connect` buses of one registry or provider, and its view streams on them."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.settings = registry.settings
        self.links: dict[str, NATS] = {}
        self._readers: dict[str, NATS] = {}
        """Connections for reading views only (see `reader`): '' for our own bus, else the
        link's url."""
        self.tasks = TaskSet(log)
        self._publisher: asyncio.Task[None] | None = None
        self.pending: set[str] = set()
        """Nodes whose entry changed since the last `changes` went out."""
        self._out: dict[str, _Outbound] = {}
        """Our stream on each bus we publish on: '' for our own bus (a provider), else the url."""
        self._in: dict[tuple[str, str], _Inbound] = {}
        """Streams heard, by (sender, bus: '' for our own, else the url of the link)."""
        self.sent_messages = 0
        self.sent_bytes = 0
        self.readers: list[ViewReader] = []
        """The views of each bus this registry reads (feed on): its own, and each link's."""
        self._asks_subs: list[Subscription] = []
        """View subscriptions on links with feed off (only asks of a 0.1 registry matter)."""
        self._catalogs: dict[str, dict[bytes, Catalog]] = {}
        """Node → catalogs taken in, by a digest of the bytes they arrived as (and of the urls
        filled in when they had none): the same bytes again are not decoded again."""
        self._packed: dict[str, tuple[Catalog, bytes, int, int]] = {}
        """Node → its catalog (the object), that catalog in msgpack, and where its flows (the
        bulk) are in those bytes: encoded once, not at every change of the node's status, on
        every stream, in every `full`; the flows of an incoming copy are compared with them
        before decoding it. (One copy of the bytes: a second one of the flows cost a registry
        holding 10,000 nodes some 45 MB.)"""

    @property
    def subs(self) -> list[Subscription]:
        """Every view subscription: its backlog says whether this registry is behind on reading
        (see `Registry.behind`)."""
        return [*(r.sub for r in self.readers if r.sub is not None), *self._asks_subs]

    async def read_views(self, nc: NATS, url: str | None, core: NATS | None = None) -> ViewReader:
        """Read the views of one bus (`url` None: our own), through its `KODO_VIEWS` stream
        where it can be (`viewstream.py`; else by a core subscription on `core`, or `nc`), and
        take them in (`Registry.on_view_msg`)."""
        urls = None if url is None else [url]

        async def on_view(msg: Msg) -> None:
            await self.registry.on_view_msg(msg, urls)

        where = "our own bus" if url is None else url
        reader = ViewReader(nc, self.settings, on_view, where, core, conform=url is None)
        self.readers.append(reader)
        await reader.start()
        return reader

    def _targets(self) -> Iterator[tuple[str, _Outbound]]:
        if not self.settings.feeds and "" not in self._out:
            self._out[""] = _Outbound(self.registry.nc)
        for url, nc in self.links.items():
            if url not in self._out:
                self._out[url] = _Outbound(nc)
        for key, out in self._out.items():
            if out.nc.is_connected:
                yield key, out

    async def start(self) -> None:
        for url in self.settings.connect:
            self.tasks.spawn(self._link(url), f"link {url}")
        if not self.settings.feeds or self.settings.connect:
            self._publisher = self.tasks.spawn(self._republish(), "republish")

    async def reader(self, url: str | None = None) -> NATS:
        """A connection of its own to our bus (`url` None) or a link's, on which the registry
        reads the views there.

        Read on the registry's own connection, the views of a 5-bus chain at 2,000 nodes per
        bus (tens of MB in a burst) queued at the server ahead of the nodes' heartbeats, which
        arrived late: a middle registry turned hundreds of its own live nodes offline and back
        (each flip one more entry down the chain), and nats-server cut the connection as a
        slow consumer 2-8 times per server and run. Here a backlog or a cut holds back only
        views; heartbeats, KV writes and requests keep the registry's connection. On a link,
        likewise, a cut of the connection our stream goes out on (read through the views
        stream, which hands our own messages back as well) lost what we were publishing and
        restarted our stream with a whole view: the 5-bus chain's link connections were the
        ones nats-server cut. A reader cut here resumes from the stream (`viewstream.py`).
        """
        key = url or ""
        if key not in self._readers:
            name = f"{self.settings.id}-views"
            if url is None:
                settings = self.settings.connect_settings().model_copy(update={"name": name})
            else:
                settings = self._link_settings(url, name)
            self._readers[key] = await connect(settings)
        return self._readers[key]

    def _link_settings(self, url: str, name: str) -> ConnectSettings:
        """A connection to a link's bus: retried forever, with our own inboxes (on a secure
        bus JetStream answers there, or nowhere)."""
        return ConnectSettings(
            nats=[url],
            retry=-1,
            credentials=self.settings.credentials,
            name=name,
            inbox_prefix=subjects.inbox(self.settings.id),
        )

    async def stop(self) -> None:
        await self.tasks.close()
        for reader in self.readers:
            await reader.stop()
        self.readers.clear()
        for nc in [*self.links.values(), *self._readers.values()]:
            with contextlib.suppress(nats.errors.Error):
                await nc.drain()
        self.links.clear()
        self._readers.clear()

    async def withdraw(self) -> None:
        """Stop republishing and publish an empty view, so every taker drops our entries."""
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
        for _, out in self._targets():
            out.full = True
        await self._publish()

    def changed(self, nodes: Iterable[str]) -> None:
        self.pending.update(nodes)
        self.registry.changed.set()

    async def _link(self, url: str) -> None:
        settings = self._link_settings(url, f"{self.settings.id}-peer")
        try:
            # no_echo: the server does not hand our own stream back to us on this connection
            # (a whole view is tens of MB at 10,000 nodes; read back for nothing, it made the
            # server cut the link as a slow consumer)
            nc = await connect(settings, no_echo=True)
        except ConnectError as exc:
            log.error("cannot reach peer bus %s: %s", url, exc)
            return
        self.links[url] = nc
        log.info("linked to peer bus %s", url)

        if self.settings.feeds:
            try:
                await self.read_views(await self.reader(url), url, core=nc)
            except ConnectError as exc:
                log.error("cannot read views on peer bus %s: %s", url, exc)
        else:

            async def on_view(msg: Msg) -> None:
                await self.registry.on_view_msg(msg, [url])

            # feed off too: asks of a 0.1 registry arrive there
            sub = await nc.subscribe(
                subjects.REGISTRY_VIEW_ALL,
                cb=on_view,
                pending_bytes_limit=VIEW_PENDING_BYTES,
            )
            self._asks_subs.append(sub)

        async def on_ask(msg: Msg) -> None:
            await self.on_ask(msg, [url])

        await nc.subscribe(subjects.registry_ask(self.settings.id), cb=on_ask)
        self.registry.changed.set()

    # -- receiving ---------------------------------------------------------------------------------
    def decode(self, msg: Msg, urls: list[str] | None) -> tuple[RegistryView, list[str]]:
        """One view message as a `RegistryView`, and what was wrong with entries left out.

        Entries whose path holds this registry came back around a loop: never taken in, they
        are not decoded either; in `changes` they count as removed (the sender's earlier copy,
        if any, must not be chosen any more).
        """
        if content_type_of(msg.data, msg.headers) != MSGPACK or not msg.data:
            return self._checked(decode_msg(msg, RegistryView))
        head, raw = parse_view(msg.subject, msg.data)
        try:
            view = RegistryView.model_validate({**head, "nodes": []})
        except ValidationError as exc:
            raise WireError(msg.subject, f"not a valid RegistryView: {exc}") from None
        if view.kind == "ask":
            return view, []
        fill = view.urls or urls or []
        me = self.settings.id
        problems: list[str] = []
        looped: list[str] = []
        data = memoryview(msg.data)
        for item in raw:
            node = item.head.get("node")
            path = item.fields.get("path")
            if isinstance(path, list) and me in path and isinstance(node, str):
                looped.append(node)
                continue
            try:
                catalog = self._catalog(node, item, data, fill)
                problem = catalog_problem(catalog)
                if problem is not None:
                    problems.append(problem)
                    continue
                view.nodes.append(NodeEntry.model_validate({**item.fields, "catalog": catalog}))
            except ValidationError as exc:
                problems.append(f"not a valid NodeEntry: {exc.errors(include_url=False)[:1]}")
            except _UNPACK_ERRORS as exc:
                problems.append(f"undecodable catalog ({exc!r})")
        if looped and view.kind == "changes":
            view.removed.extend(looped)
        return view, problems

    def _checked(self, view: RegistryView) -> tuple[RegistryView, list[str]]:
        """`decode`'s rules for a view decoded whole (JSON, from a foreign publisher): the same
        entries left out, the same problems named."""
        me = self.settings.id
        problems: list[str] = []
        kept: list[NodeEntry] = []
        looped: list[str] = []
        for entry in view.nodes:
            if me in entry.path:
                looped.append(entry.catalog.node)
            elif (problem := catalog_problem(entry.catalog)) is not None:
                problems.append(problem)
            else:
                kept.append(entry)
        view.nodes = kept
        if looped and view.kind == "changes":
            view.removed.extend(looped)
        return view, problems

    def _catalog(self, node: object, item: WireEntry, data: memoryview, fill: list[str]) -> Catalog:
        """The entry's catalog: the one decoded before from the same bytes, else decoded now."""
        raw = data[item.span[0] : item.span[1]]
        digest = hashlib.blake2b(raw, digest_size=16)
        if not item.head.get("urls"):
            digest.update("\n".join(fill).encode())
        key = digest.digest()
        known = self._catalogs.get(node) if isinstance(node, str) else None
        if known is not None and (catalog := known.get(key)) is not None:
            return catalog
        current = self.registry.view.entries.get(node) if isinstance(node, str) else None
        flows = data[item.flows[0] : item.flows[1]]
        if current is not None and item.flows[1] and flows == self._flows_of(current.catalog):
            # the same flows (the bulk) with other small fields (urls filled in, or not yet;
            # a new start): validate those, share the flows already validated
            catalog = Catalog.model_validate({**item.head, "flows": current.catalog.flows})
        else:
            catalog = Catalog.model_validate(msgpack.unpackb(raw, raw=False))
        if not catalog.urls:
            catalog = catalog.model_copy(update={"urls": list(fill)})
        if current is not None and current.catalog == catalog:
            catalog = current.catalog  # one object for every copy: memory, and `is` checks
        if len(self._catalogs) > 2 * len(self.registry.view.entries) + 1024:
            entries = self.registry.view.entries
            self._catalogs = {n: c for n, c in self._catalogs.items() if n in entries}
        known = self._catalogs.setdefault(catalog.node, {})
        known[key] = catalog
        if len(known) > CACHED_PER_NODE:
            del known[next(iter(known))]
        return catalog

    def receive(self, view: RegistryView, urls: list[str] | None) -> set[str]:
        """Take in one message of another registry's stream; returns nodes whose entry changed.

        Out of order (a gap, a new epoch, a `full` whose parts do not follow), the stream is
        asked for a `full` again; `changes` are applied all the same (they are newer than what
        we hold for those nodes) and the `full` puts the rest right.
        """
        sender, bus = view.registry, (urls or [""])[0]
        view_ = self.registry.view
        now = time.time()
        if not view.epoch:  # a 0.1 registry: the whole view in one message
            return view_.take_full(sender, view.nodes, view.urls or urls or [], now)
        key = (sender, bus)
        state = self._in.pop(key, None) or _Inbound()
        self._in[key] = state  # most recently heard last: the first is the one to drop
        if len(self._in) > MAX_STREAMS:
            del self._in[next(iter(self._in))]
        in_order = state.epoch == view.epoch and view.seq == state.seq + 1
        state.epoch, state.seq = view.epoch, view.seq
        changed: set[str] = set()
        fill = view.urls or urls or []
        if view.kind == "full":
            # each part is taken in as it comes (as changes: its entries are the sender's
            # newest), so a `full` missing a part still brings what arrived; only the
            # removal of what the sender no longer holds waits for a whole one
            if view.part == 0:
                state.got = set()
            elif state.got is None or not in_order:
                state.got = None
                state.synced = False
                self._ask(state, sender, bus)
            removed: list[str] = []
            if state.got is not None:
                state.got.update(e.catalog.node for e in view.nodes)
                if view.part + 1 >= view.parts:
                    got, state.got = state.got, None
                    removed = [n for n in view_.heard.get(sender, {}) if n not in got]
                    state.synced = True
                    state.backoff = 0.0
            return view_.take_changes(sender, view.nodes, removed, fill, now)
        if view.kind == "changes":
            changed = view_.take_changes(sender, view.nodes, view.removed, fill, now)
        else:
            changed = view_.heard_from(sender, now)
        if not (in_order and state.synced):
            state.synced = False
            self._ask(state, sender, bus)
        return changed

    def _ask(self, state: _Inbound, sender: str, bus: str) -> None:
        """Ask `sender` for its whole view on `bus`; again only after a wait that doubles until
        a whole `full` arrives.

        A receiver too busy to read loses parts of the `full` it asked for; asking again each
        second (as before) brought one more whole view (tens of MB at 10,000 nodes) on top of
        the one still arriving, and the registry fell further behind with each.
        """
        now = time.monotonic()
        beat = self.settings.heartbeat
        wait = state.backoff or min(1.0, beat)
        if now - state.asked < wait:
            return
        state.asked = now
        state.backoff = min(2 * wait, ASK_BACKOFF_BEATS * beat)
        nc = self.registry.nc if bus == "" else self.links.get(bus)
        if nc is None or not nc.is_connected:
            return
        ask = RegistryView(
            registry=self.settings.id,
            organization=self.settings.organization,
            feed=self.settings.feeds,
            kind="ask",
            epoch=state.epoch,
            want=[sender],
        )
        self.tasks.spawn(self._send(nc, ask, sender), f"ask {sender}")

    async def _send(self, nc: NATS, message: RegistryView, sender: str) -> None:
        body, headers = encode(message)
        try:
            await nc.publish(subjects.registry_ask(sender), body, headers=headers)
        except nats.errors.Error as exc:
            log.warning("cannot ask for a view: %r", exc)

    async def on_ask(self, msg: Msg, urls: list[str] | None) -> None:
        """An ask on `kodo.registry.<our id>.ask`, on our own bus (`urls` None) or a link's.

        (Asks used to travel on the asker's view subject, which a one-way link such as
        deploy/leaf's cannot let in without letting in every view of the other side.)
        """
        rejects = self.registry.rejects
        try:
            view = decode_msg(msg, RegistryView)
        except WireError as exc:
            rejects.reject("an ask", exc)
            return
        if view.kind != "ask":
            rejects.reject(view.registry, f"a {view.kind!r} view on the ask subject {msg.subject}")
            return
        self.asked(view, urls)

    def asked(self, view: RegistryView, urls: list[str] | None) -> None:
        """Someone missed part of our stream on the bus the ask came on: a `full` is due."""
        if self.settings.id not in view.want:
            return
        out = self._out.get((urls or [""])[0])
        if out is not None and not out.full:
            log.debug("registry %s asks for our whole view", view.registry)
            out.full = True
            self.registry.changed.set()

    # -- sending -----------------------------------------------------------------------------------
    async def _republish(self) -> None:
        """Send changes soon after they happen, and a beat in each quiet heartbeat interval."""
        beat = self.settings.heartbeat
        changed = self.registry.changed
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), beat / 2)
            changed.clear()
            await asyncio.sleep(COALESCE)
            await self._publish()

    async def _publish(self) -> None:
        pending, self.pending = self.pending, set()
        view = self.registry.view
        if pending and self.registry.joined:
            entries = [e for n in pending if (e := view.entries.get(n)) is not None]
            if view.local is not None and view.local.node in pending:
                entries.append(NodeEntry(catalog=view.local, status="online"))
            present = {e.catalog.node for e in entries}
            removed = sorted(pending - present)
        else:
            entries, removed = [], []
        now = time.monotonic()
        body: list[bytes] | None = None
        whole: tuple[list[NodeEntry], list[bytes]] | None = None
        for key, out in list(self._targets()):
            if out.full:
                if whole is None:
                    nodes = self.registry.republished().nodes
                    whole = nodes, await self._encoded(nodes)
                kept, _ = _split_horizon(key, *whole, self._heard_on(key))
                await self._send_stream(out, "full", kept, [])
                out.full = False
            elif entries or removed:
                if body is None:
                    body = await self._encoded(entries)
                kept, skipped = _split_horizon(key, entries, body, self._heard_on(key))
                await self._send_stream(out, "changes", kept, removed + skipped)
            elif now - out.last >= self.settings.heartbeat * 0.9:
                await self._send_stream(out, "beat", [], [])

    def _heard_on(self, bus: str) -> set[str]:
        """Registries whose stream we hear on `bus` (see `_split_horizon`)."""
        return {sender for sender, heard_on in self._in if heard_on == bus} if bus else set()

    async def _encoded(self, entries: list[NodeEntry]) -> list[bytes]:
        """Each entry as it goes out: with this registry at the end of its path.

        A whole view is thousands of entries, each catalog encoded the first time it goes out:
        seconds of CPU on a loaded machine. The loop gets a turn every `ENCODE_SLICE` entries,
        so the connection is still read meanwhile (a registry that reads nothing for the
        server's write deadline is cut as a slow consumer, and every stream it hears has a gap).
        """
        me = self.settings.id
        out: list[bytes] = []
        for i in range(0, len(entries), ENCODE_SLICE):
            out.extend(self.pack(e, [*e.path, me]) for e in entries[i : i + ENCODE_SLICE])
            if i + ENCODE_SLICE < len(entries):
                await asyncio.sleep(0)  # a turn for the other tasks, not a wait
        return out

    def _flows_of(self, catalog: Catalog) -> memoryview:
        """The flows of `catalog` in msgpack, as `pack` writes them."""
        _, body, start, end = self._packed_catalog(catalog)
        return memoryview(body)[start:end]

    def _packed_catalog(self, catalog: Catalog) -> tuple[Catalog, bytes, int, int]:
        """`catalog` in msgpack (cached while the catalog object stays the same; its flows'
        bytes reused when a new catalog object shares the flows already validated)."""
        node = catalog.node
        cached = self._packed.get(node)
        if cached is not None and cached[0] is catalog:
            return cached
        if cached is not None and _same_items(cached[0].flows, catalog.flows):
            flows = cached[1][cached[2] : cached[3]]
        else:
            dumped = [f.model_dump(mode="json", exclude_none=True) for f in catalog.flows]
            flows = msgpack.packb(dumped)
        if len(self._packed) > 2 * len(self.registry.view.entries) + 1024:
            entries = self.registry.view.entries
            self._packed = {n: c for n, c in self._packed.items() if n in entries}
        head = catalog.model_dump(mode="json", exclude_none=True, exclude={"flows"})
        body = _pack(head, flows, "flows")
        start = len(_FLOWS_KEY) + len(msgpack.Packer().pack_map_header(len(head) + 1))
        packed = self._packed[node] = (catalog, body, start, start + len(flows))
        return packed

    def pack(self, entry: NodeEntry, path: list[str] | None = None) -> bytes:
        """`entry` in msgpack (as `codec.encode` writes it; `path` in place of its own), its
        catalog's bytes reused while the catalog object stays the same."""
        body = self._packed_catalog(entry.catalog)[1]
        fields = entry.model_dump(mode="json", exclude_none=True, exclude={"catalog"})
        if path is not None:
            fields["path"] = path
        return _pack(fields, body, "catalog")

    async def _send_stream(
        self, out: _Outbound, kind: str, entries: list[bytes], removed: list[str]
    ) -> None:
        cap = min(CHUNK_BYTES, out.nc.max_payload or CHUNK_BYTES) - 1024
        head: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "registry": self.settings.id,
            "organization": self.settings.organization,
            "feed": self.settings.feeds,
            "urls": list(self.settings.nats),
            "kind": kind,
            "epoch": out.epoch,
        }
        parts = list(_chunks(entries, removed, cap - len(msgpack.packb(head)) - 64))
        subject = subjects.registry_view(self.settings.id)
        for i, (chunk, gone) in enumerate(parts):
            out.seq += 1
            fields = {**head, "seq": out.seq}
            if kind == "full":
                fields |= {"part": i, "parts": len(parts)}
            fields["removed"] = gone
            body = _pack(fields, chunk, "nodes")
            if len(body) > out.nc.max_payload:
                log.error("a view entry is larger than the server's max_payload: not sent")
                continue
            try:
                await out.nc.publish(subject, body, headers={CONTENT_TYPE: MSGPACK})
            except nats.errors.Error as exc:
                log.warning("cannot republish the view: %r", exc)
                out.full = True  # the stream has a hole now: start it again
                return
            self.sent_messages += 1
            self.sent_bytes += len(body)
            if i % PACE_PARTS == PACE_PARTS - 1 and i + 1 < len(parts):
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await out.nc.flush(timeout=5)
        out.last = time.monotonic()
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await out.nc.flush(timeout=2)


def _split_horizon(
    bus: str, entries: list[NodeEntry], encoded: list[bytes], heard_here: set[str]
) -> tuple[list[bytes], list[str]]:
    """What goes out on `bus` ('' for our own, else the link's url): every entry but those of
    nodes living on that bus (their `urls` name it) and those whose chosen copy came from a
    registry heard on that bus (`heard_here`), and the ids of those left out.

    The registries of a bus hear its nodes directly, and a copy sent back came around a loop:
    in a ring or a chain that was a fifth of each whole view at 5 buses, sent for nothing.
    Likewise every registry listening on a bus hears the streams sent there: a copy taken from
    one of them and sent back is one hop longer than the one they hold (in a 5-bus chain the
    middle registries sent back half of every view they published). A node is offered nowhere
    else by these rules: only back where it is heard already. (Cycles of such omissions cannot
    form: each would be a copy whose path holds the registry that chose it, a loop left out.)
    """
    if not bus:
        return encoded, []
    kept: list[bytes] = []
    skipped: list[str] = []
    for entry, body in zip(entries, encoded, strict=True):
        if bus in entry.catalog.urls or (entry.via and entry.via in heard_here):
            skipped.append(entry.catalog.node)
        else:
            kept.append(body)
    return kept, skipped


def _same_items(a: list[FlowInfo], b: list[FlowInfo]) -> bool:
    """Whether two lists hold the very same objects (catalogs sharing validated flows)."""
    return a is b or (len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True)))


def _chunks(
    entries: list[bytes], removed: list[str], cap: int
) -> Iterator[tuple[list[bytes], list[str]]]:
    """Cut entries (already encoded) and removed ids into parts of at most `cap` bytes (an
    entry larger than `cap` goes alone); always at least one part."""
    chunk: list[bytes] = []
    gone: list[str] = []
    size = 0
    for item in entries:
        if chunk and size + len(item) > cap:
            yield chunk, []
            chunk, size = [], 0
        chunk.append(item)
        size += len(item)
    for node in removed:
        if (chunk or gone) and size + len(node) + 2 > cap:
            yield chunk, gone
            chunk, gone, size = [], [], 0
        gone.append(node)
        size += len(node) + 2
    yield chunk, gone


def _pack(fields: dict[str, Any], encoded: list[bytes] | bytes, name: str) -> bytes:
    """A msgpack map of `fields` and `name`, the value of `name` spliced from bytes encoded
    once: an array of them (a `RegistryView`'s nodes) or one value (a `NodeEntry`'s catalog)."""
    packer = msgpack.Packer()
    parts = [packer.pack_map_header(len(fields) + 1), packer.pack(name)]
    if isinstance(encoded, bytes):
        parts.append(encoded)
    else:
        parts.append(packer.pack_array_header(len(encoded)))
        parts.extend(encoded)
    for key, value in fields.items():
        parts.append(packer.pack(key))
        parts.append(packer.pack(value))
    return b"".join(parts)
