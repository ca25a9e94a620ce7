"""A registry's view: nodes and flows it knows, their liveness, and the queries over them.

Pure in-memory state with no I/O, so the registry decides when to persist (only on changes that
matter: a new catalog, a status flip, a removal — never a heartbeat) and tests can reason about
it. Entries announced on the registry's own bus have `via == ""`; entries taken in from other
registries are chosen among the copies each of them sent (`heard`): the registry they came from
is in `via`, the registries they passed through in `path` (see ARCHITECTURE.md, "Federation").
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import NamedTuple, TypeVar

import msgpack

from .codec import CONTENT_TYPE, JSON, MSGPACK, encode
from .models import (
    Catalog,
    FlowInfo,
    FlowItem,
    FlowsPage,
    FlowsQuery,
    Heartbeat,
    NodeEntry,
    NodeItem,
    NodesPage,
    NodeStatus,
    RegistryView,
)
from .subjects import is_token


def catalog_problem(catalog: Catalog) -> str | None:
    """Why `catalog` may not enter a view, or None.

    Its node id becomes a subject token and a KV key (`node.<id>` in the registry's bucket), its
    flow names subject tokens of launches: a name NATS routes but the KV refuses would be listed
    and then never stored (and, before, stopped every other entry from being stored)."""
    if not is_token(catalog.node):
        return f"node id {catalog.node!r} is not a subject token: use letters, digits, '_' or '-'"
    for f in catalog.flows:
        if not is_token(f.name):
            return (
                f"node {catalog.node!r}: flow name {f.name!r} is not a subject token: "
                "use letters, digits, '_' or '-'"
            )
    return None


def flow_items(entry: NodeEntry) -> list[FlowItem]:
    """The flows of one node as listed to clients (with the node's identity and status)."""
    cat = entry.catalog
    return [
        FlowItem(
            **f.model_dump(),
            node=cat.node,
            organization=cat.organization,
            status=entry.status,
            urls=cat.urls,
        )
        for f in cat.flows
    ]


_Refs = dict[str, int] | tuple[str, int] | None
"""The nodes holding one value of the text index: most values (a flow's summary) belong to one
node, kept as a (node, mask) pair — a dict per value cost a registry holding 200,000 flows some
35 MB; a dict once two nodes or more hold it; None once none does (an unused slot)."""

_BIT = [1 << i for i in range(64)]
"""One int object per single-bit mask: most masks are one flow's bit, shared, not one object
per value and node."""


def _bit(pos: int) -> int:
    return _BIT[pos] if pos < 64 else 1 << pos


def _ref_items(refs: _Refs) -> Iterable[tuple[str, int]]:
    if refs is None:
        return ()
    if type(refs) is tuple:
        return (refs,)
    return refs.items()  # type: ignore[union-attr]


class _Values:
    """The text index: every distinct searchable value of the view, and where it occurs.

    A flow's searchable values are its name, summary, description and tags, in lower case. Flows
    share many (replicas of a node, a description reused across nodes), so each distinct value is
    kept once: in `values`, and laid end to end (SOH between two) in `blob`, which a query scans
    with a few `str.find` — C speed, not a Python loop over 20,000+ flows. `refs[k]` maps each
    node holding value `k` to a bit mask of its flows that do (bit `i`: the catalog's flow `i`;
    see `_Refs` for its compact forms).

    Maintained node by node (`add`, `discard`) as catalogs change, never rebuilt for a query; new
    values join `blob` at the next search. Values no flow holds any more stay as unused slots
    (still in `blob`, matching nothing) until they are the majority: then the view re-indexes.
    So `values` only grows (between two re-indexings), and the slots a text matches among its
    first `n` values never change: `_memo` keeps them for the texts searched lately, and a text
    searched again scans only the values added since (a scan of the blob of 200,000 distinct
    summaries costs milliseconds; clients repeat their filters — a panel, `Client.flow(name)`).
    """

    COMPACT_MIN = 4096
    """Unused slots tolerated whatever the size of the index."""
    MEMO_TEXTS = 256
    """Texts whose matching slots are remembered (the oldest forgotten past it)."""
    MEMO_SLOTS = 4096
    """A text matching more values than this is not remembered (scanning costs little next to
    merging that many slots)."""

    def __init__(self) -> None:
        self.slot: dict[str, int] = {}
        self.values: list[str] = []
        self.refs: list[_Refs] = []
        self.unused = 0
        """Slots whose `refs` are empty."""
        self.blob = ""
        self.starts: array[int] = array("q")
        """Where each of the first `len(starts)` values begins in `blob`."""
        self._memo: dict[str, tuple[int, list[int]]] = {}
        """Text → (n, the slots among the first n values that contain it, used or not)."""

    def add(self, node: str, flows: Sequence[FlowInfo]) -> tuple[int, ...]:
        """Index the flows of `node` (not indexed yet); returns the slots of its values."""
        masks: dict[str, int] = {}
        get = masks.get
        for pos, f in enumerate(flows):
            bit = _bit(pos)
            for field in (f.name, f.summary, f.description, *f.tags):
                if field:  # a query never searches the empty string
                    value = field.lower()
                    if value == field:
                        value = field  # the catalog's own string, not a copy of it
                    old = get(value)
                    masks[value] = bit if old is None else old | bit
        slots: list[int] = []
        for value, mask in masks.items():
            k = self.slot.get(value)
            if k is None:
                k = self.slot[value] = len(self.values)
                self.values.append(value)
                self.refs.append((node, mask))
            else:
                refs = self.refs[k]
                if refs is None:
                    self.unused -= 1
                    self.refs[k] = (node, mask)
                elif type(refs) is tuple:
                    self.refs[k] = {refs[0]: refs[1], node: mask}
                else:
                    refs[node] = mask  # type: ignore[index]
            slots.append(k)
        return tuple(slots)

    def discard(self, node: str, slots: Iterable[int]) -> None:
        """Forget the flows of `node` (`slots`: what `add` returned)."""
        all_refs = self.refs
        for k in slots:
            refs = all_refs[k]
            if refs is None:
                continue
            if type(refs) is tuple:
                if refs[0] == node:
                    all_refs[k] = None
                    self.unused += 1
            elif refs.pop(node, None) is not None and not refs:  # type: ignore[union-attr]
                all_refs[k] = None
                self.unused += 1

    def mask(self, k: int, node: str) -> int:
        """The flows of `node` holding value `k`."""
        refs = self.refs[k]
        if refs is None:
            return 0
        if type(refs) is tuple:
            return refs[1] if refs[0] == node else 0
        return refs.get(node, 0)  # type: ignore[union-attr]

    def needs_compacting(self) -> bool:
        return self.unused > self.COMPACT_MIN and self.unused * 2 > len(self.values)

    def search(self, text: str) -> list[int]:
        """Slots of the values that contain `text` (non-empty, lower case) and some flow holds."""
        self._extend()
        refs = self.refs
        if "\1" in text:  # could match across two values: test value by value
            return [k for k, value in enumerate(self.values) if text in value and refs[k]]
        count = len(self.values)
        memo = self._memo.pop(text, None)
        if memo is None:
            found = self._scan(text, 0)
        else:
            found = memo[1]
            if memo[0] < count:
                found = found + self._scan(text, memo[0])
        if len(found) <= self.MEMO_SLOTS:
            self._memo[text] = (count, found)  # last: the most recently used
            if len(self._memo) > self.MEMO_TEXTS:
                del self._memo[next(iter(self._memo))]
        return [k for k in found if refs[k] is not None]

    def _scan(self, text: str, first: int) -> list[int]:
        """Slots from `first` on whose value contains `text`, used or not."""
        blob, starts = self.blob, self.starts
        last = len(starts) - 1
        if first > last:
            return []
        found: list[int] = []
        pos = blob.find(text, starts[first])
        while pos != -1:
            k = bisect_right(starts, pos) - 1
            found.append(k)
            if k >= last:
                break
            pos = blob.find(text, starts[k + 1])
        return found

    def matches(self, text: str) -> dict[str, int]:
        """Node id → bit mask of its flows with a value containing `text`; read-only."""
        slots = self.search(text)
        if len(slots) == 1:  # the common case: the answer is in the index as it is
            refs = self.refs[slots[0]]
            if type(refs) is dict:
                return refs
        merged: dict[str, int] = {}
        get = merged.get
        for k in slots:
            for node, mask in _ref_items(self.refs[k]):
                merged[node] = get(node, 0) | mask
        return merged

    def _extend(self) -> None:
        """Append the values added since the last search to `blob`."""
        done = len(self.starts)
        if done == len(self.values):
            return
        new = self.values[done:]
        at = len(self.blob) + 1 if done else 0
        for value in new:
            self.starts.append(at)
            at += len(value) + 1
        joined = "\1".join(new)
        self.blob = f"{self.blob}\1{joined}" if done else joined


def _bits(mask: int) -> list[int]:
    """Positions of the set bits of `mask`, lowest first."""
    out: list[int] = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def query_flows(items: Iterable[FlowItem], query: FlowsQuery) -> FlowsPage:
    """Filter and page flows; `q` matches name, summary, description and tags, case-blind."""
    text = query.q.lower() if query.q else None
    wanted = set(query.tags)
    hits = [
        item
        for item in items
        if (query.node is None or item.node == query.node)
        and (query.name is None or item.name == query.name)
        and (query.organization is None or item.organization == query.organization)
        and (not wanted or wanted.issubset(item.tags))
        and (
            text is None
            or text in item.name.lower()
            or text in item.summary.lower()
            or text in item.description.lower()
            or any(text in tag.lower() for tag in item.tags)
        )
    ]
    page = hits[query.offset : query.offset + query.limit]
    return FlowsPage(total=len(hits), offset=query.offset, limit=query.limit, items=page)


def node_item(entry: NodeEntry) -> NodeItem:
    cat, hb = entry.catalog, entry.heartbeat
    return NodeItem(
        id=cat.node,
        organization=cat.organization,
        role=cat.role,
        status=entry.status,
        last_seen=entry.last_seen,
        flows=len(cat.flows),
        running=hb.running if hb else 0,
        capacity=hb.capacity if hb else 0,
        cpu=hb.cpu if hb else 0.0,
        memory=hb.memory if hb else 0,
        urls=cat.urls,
        replicas=entry.replicas,
    )


class _Node:
    """One catalog's flows as a query needs them; built once per catalog object.

    `slots` are the node's values in the text index; `tag_masks` a bit mask of the flows carrying
    each tag (`every`: all flows). `bodies` caches each flow's item serialised as it goes on the
    wire, per content type, for one node status: a page is these bytes joined, not 100 models
    built and dumped. A changed catalog (or a node that came back) is a new object with a new
    `_Node`, and a cache is kept with the status it was made for, so a body is never stale.
    """

    __slots__ = ("bodies", "catalog", "every", "slots", "tag_masks")

    def __init__(self, catalog: Catalog, slots: tuple[int, ...]) -> None:
        self.catalog = catalog
        self.slots = slots
        self.every = (1 << len(catalog.flows)) - 1
        self.tag_masks: dict[str, int] = {}
        for pos, f in enumerate(catalog.flows):
            for tag in f.tags:
                was = self.tag_masks.get(tag)
                self.tag_masks[tag] = _bit(pos) if was is None else was | _bit(pos)
        self.bodies: dict[str, tuple[NodeStatus, list[bytes | None]]] = {}

    def tagged(self, wanted: Sequence[str]) -> int:
        """Mask of the flows carrying every tag in `wanted`."""
        mask = self.every
        for tag in wanted:
            mask &= self.tag_masks.get(tag, 0)
        return mask

    def matching(self, text: str, index: _Values) -> int:
        """Mask of the flows with a value containing `text`."""
        node, values = self.catalog.node, index.values
        mask = 0
        for k in self.slots:
            if text in values[k]:
                mask |= index.mask(k, node)
        return mask

    def item(self, pos: int, status: NodeStatus) -> FlowItem:
        cat = self.catalog
        # every field comes from validated models: construct without validating again
        return FlowItem.model_construct(
            **dict(cat.flows[pos]),
            node=cat.node,
            organization=cat.organization,
            status=status,
            urls=cat.urls,
        )

    def body(self, pos: int, status: NodeStatus, content_type: str) -> bytes:
        """The flow's item as `encode` serialises it inside a page (cached for the node's
        current status only: a status flip starts afresh rather than keeping both)."""
        cached = self.bodies.get(content_type)
        if cached is None or cached[0] != status:
            cached = self.bodies[content_type] = (status, [None] * len(self.catalog.flows))
        cache = cached[1]
        body = cache[pos]
        if body is None:
            body = cache[pos] = encode(self.item(pos, status), content_type)[0]
        return body


def _both(masks: dict[str, int], other: dict[str, int]) -> dict[str, int]:
    """`masks & other`, node by node, walking the smaller of the two (nodes left with 0 may
    stay; a node in one only is left out)."""
    if len(other) < len(masks):
        masks, other = other, masks
    get = other.get
    return {n: m & o for n, m in masks.items() if (o := get(n)) is not None}


_Hit = tuple[_Node, int, NodeStatus]
"""A flow in a query's page: its node, its position in the catalog, its node's status."""


def encode_page(
    total: int, offset: int, limit: int, items: list[bytes], content_type: str
) -> tuple[bytes, dict[str, str]]:
    """A `FlowsPage` holding `items` (each already serialised), byte for byte as `encode` would
    write it; returns the body and headers, like `encode`."""
    head = FlowsPage(total=total, offset=offset, limit=limit)
    if content_type == JSON:
        dumped = head.model_dump_json(exclude_none=True).encode()
        before, key, after = dumped.rpartition(b'"items":')
        if not key or not after.startswith(b"[]"):
            raise ValueError("unexpected FlowsPage JSON")  # pragma: no cover (fixed by models.py)
        body = b"".join((before, b'"items":[', b",".join(items), after[1:]))
    elif content_type == MSGPACK:
        packer = msgpack.Packer()
        fields = head.model_dump(mode="json", exclude_none=True)
        parts = [packer.pack_map_header(len(fields))]
        for name, value in fields.items():
            parts.append(packer.pack(name))
            if name == "items":
                parts.append(packer.pack_array_header(len(items)))
                parts.extend(items)
            else:
                parts.append(packer.pack(value))
        body = b"".join(parts)
    else:
        raise ValueError(f"unsupported content type {content_type!r}")
    return body, {CONTENT_TYPE: content_type}


MAX_PATH = 64
"""Registries an entry may have passed through; a longer path is refused (no real federation
chains that many, and it bounds what one entry can carry)."""

MAX_REPLICAS = 256
"""Processes tracked per node id; a further one is refused, so made-up instance ids cannot grow
the registry's memory."""


@dataclass(slots=True)
class _Replica:
    """One process serving a node id, as its own announcements show it (kept in memory only:
    the liveness of processes means nothing to a registry restarted later)."""

    seen: float
    revision: int
    heartbeat: Heartbeat | None = None
    suspect: int = 0
    """Non-zero while silent past the ttl and not yet judged dead: the number of the suspicion,
    so a judgement made for an older suspicion never applies to a newer one."""


_K = TypeVar("_K")


def _first(pair: tuple[float, object]) -> float:
    return pair[0]


def _due(order: dict[_K, float], now: float, ttl: float) -> Iterator[_K]:
    """The keys of `order` (oldest first) heard more than `ttl` before `now`."""
    for key, heard in order.items():
        if not now - heard > ttl:
            return
        yield key


class Expired(NamedTuple):
    """What one liveness tick found."""

    died: list[str]
    """Direct nodes that just went offline (every process silent)."""
    changed: list[str]
    """Nodes whose persisted entry changed (status, replica count)."""
    silent: list[tuple[str, str, int]]
    """Processes that just fell silent past the ttl: (node, instance, suspicion)."""


def same_content(a: Catalog, b: Catalog) -> bool:
    """Whether two announcements offer the same node (replicas differ in instance and start)."""
    return a == b.model_copy(update={"instance": a.instance, "started": a.started})


class _Shared:
    """One object for equal pieces of the catalogs a view holds.

    Nodes running the same code announce the same schemas, descriptions, tags and versions, and
    each decoded catalog holds its own copies: a flow's `input_schema` alone is a few nested
    dicts and their strings, about 1 KB, for every one of 200,000 flows. A catalog entering the
    view gives its flows the objects already held: strings through `sys.intern`, schemas
    through a table keyed by their msgpack bytes (equal bytes, equal schema: a 1 and a 1.0 pack
    apart). Catalogs are read, never changed in place, so sharing is safe; the table is
    bounded (cleared when full: sharing is an economy, not a fact anything relies on).
    """

    MAX_BYTES = 4 * 2**20
    """Bytes of distinct schemas (packed) held, at most."""

    def __init__(self) -> None:
        self.schemas: dict[bytes, dict[str, object]] = {}
        self.size = 0

    def catalog(self, catalog: Catalog) -> None:
        intern, schemas, get = sys.intern, self.schemas, self.schemas.get
        pack = msgpack.Packer().pack
        for f in catalog.flows:
            # a validated model's own values, replaced by equal ones (a summary or an author
            # is mostly a flow's own, or empty: not worth the look-up on a burst's path)
            fields = f.__dict__
            fields["name"] = intern(fields["name"])
            value = fields["description"]
            if value:
                fields["description"] = intern(value)
            value = fields["version"]
            if value:
                fields["version"] = intern(value)
            tags = fields["tags"]
            if tags:
                tags[:] = map(intern, tags)
            schema = fields["input_schema"]
            try:
                key = pack(schema)
            except (TypeError, ValueError, OverflowError):
                continue  # not msgpack data (a hybrid's own catalog, say): kept as it is
            held = get(key)
            if held is None:
                if self.size + len(key) > self.MAX_BYTES:
                    schemas.clear()
                    self.size = 0
                schemas[key] = schema
                self.size += len(key)
            else:
                fields["input_schema"] = held


class View:
    """Nodes known to one registry, keyed by node id."""

    def __init__(self, owner: str, local: Catalog | None = None) -> None:
        self.owner = owner
        self.local = local
        """A hybrid's own node: always listed, always online, never touched by announcements."""
        self.entries: dict[str, NodeEntry] = {}
        self.replicas: dict[str, dict[str, _Replica]] = {}
        """The processes heard serving each direct node, by instance id: a node lives while one
        does, and each one's executions end `lost` when it alone dies."""
        self._suspicions = 0
        self.source_seen: dict[str, float] = {}
        """Last time each registry we take in from republished its view."""
        self.heard: dict[str, dict[str, NodeEntry]] = {}
        """Registry → node → the entry as that registry last sent it (its view, as far as it
        told us). `entries` holds, for each node not heard directly, the best of these."""
        self._stale: set[str] = set()
        """Registries silent past the ttl (their copies lose to any live one's, and are shown
        offline when no other is left)."""
        self._values = _Values()
        self._nodes: dict[str, _Node] = {}
        """The indexed catalog of every node (the hybrid's own included), by node id."""
        self._dirty: set[str] = set()
        """Nodes whose catalog object changed since the index last caught up. Every change of
        `entries` goes through the methods below, which note it here."""
        self._tags: dict[str, dict[str, int]] = {}
        """The tag index: tag → node → bit mask of its flows carrying the tag."""
        self._tag_flows: dict[str, int] = {}
        """Tag → flows carrying it (a tag on every flow of the view filters nothing: a query
        skips it rather than intersecting every node's masks)."""
        self._names: dict[str, dict[str, int]] = {}
        """The name index: flow name → node → bit mask of its flows of that name (a client
        resolving one flow asks for it by name: one lookup, not a scan of every flow)."""
        self._flows = 0
        """Flows indexed."""
        self._rank: dict[str, int] | None = None
        """Position of each node in view order (None: to recompute, the order changed)."""
        self._local: NodeEntry | None = None
        self._shared = _Shared()
        self._processes: dict[tuple[str, str], float] = {}
        """(node, instance) → when last heard, in that order (oldest first): what `expire`
        reads. Holds the processes not suspected yet (a suspected one returns when heard)."""
        self._seen: dict[str, float] = {}
        """Direct node → its `last_seen`, in that order (oldest first)."""
        self._latest = float("-inf")
        self._ordered = True
        """False once a time older than `_latest` was noted: the orders may be out of order."""

    # -- replicas --------------------------------------------------------------------------------
    def replica(self, node: str, instance: str) -> _Replica | None:
        return self.replicas.get(node, {}).get(instance)

    def has_room(self, node: str, instance: str) -> bool:
        """Whether a process may be tracked for `node` (it is, or there are fewer than the cap)."""
        known = self.replicas.get(node, {})
        return instance in known or len(known) < MAX_REPLICAS

    def rivals(self, node: str, instance: str, revision: int) -> list[str]:
        """Live processes other than `instance` serving the catalog the view holds for `node`,
        when `revision` is another catalog: two different processes claim one node id."""
        entry = self.entries.get(node)
        if entry is None or entry.via or entry.catalog.revision == revision:
            return []
        held = entry.catalog.revision
        return [
            i
            for i, r in self.replicas.get(node, {}).items()
            if i != instance and not r.suspect and r.revision == held
        ]

    def see(
        self, node: str, instance: str, revision: int, now: float, hb: Heartbeat | None
    ) -> None:
        """Note a sign of life of one process of `node` (a suspicion of it ends)."""
        known = self.replicas.setdefault(node, {})
        rep = known.get(instance)
        if rep is None:
            if len(known) < MAX_REPLICAS:
                known[instance] = _Replica(now, revision, hb)
                self._heard_at((node, instance), now)
            return
        rep.seen = now
        rep.revision = revision
        rep.suspect = 0
        if hb is not None:
            rep.heartbeat = hb
        self._heard_at((node, instance), now)

    def _heard_at(self, process: tuple[str, str], now: float) -> None:
        """`process` was heard at `now`: last in the order `expire` reads."""
        order = self._processes
        order.pop(process, None)
        order[process] = now
        if now < self._latest:
            self._ordered = False
        else:
            self._latest = now

    def _seen_at(self, node: str, now: float) -> None:
        """Direct `node` was heard at `now` (its `last_seen`): last in the order `expire` reads."""
        order = self._seen
        order.pop(node, None)
        order[node] = now
        if now < self._latest:
            self._ordered = False
        else:
            self._latest = now

    def join(self, catalog: Catalog, now: float) -> bool:
        """Track a process whose catalog the view does not take (a rival): its executions are
        real ones, judged by its own heartbeats. True when the persisted entry changed."""
        self.see(catalog.node, catalog.instance, catalog.revision, now, None)
        entry = self.entries.get(catalog.node)
        return entry is not None and self._count(entry)

    def _count(self, entry: NodeEntry) -> bool:
        """Bring `entry.replicas` up to date; whether it changed."""
        live = sum(1 for r in self.replicas.get(entry.catalog.node, {}).values() if not r.suspect)
        if entry.replicas == live:
            return False
        entry.replicas = live
        return True

    def _load_of(self, node: str, hb: Heartbeat) -> Heartbeat:
        """The node's load as one heartbeat: the sums over its live processes."""
        beats = [
            r.heartbeat
            for r in self.replicas.get(node, {}).values()
            if r.heartbeat is not None and not r.suspect
        ]
        if len(beats) <= 1:
            return hb
        return Heartbeat.model_construct(
            node=node,
            revision=hb.revision,
            ts=max(b.ts for b in beats),
            running=sum(b.running for b in beats),
            queued=sum(b.queued for b in beats),
            capacity=sum(b.capacity for b in beats),
            cpu=sum(b.cpu for b in beats),
            memory=sum(b.memory for b in beats),
            instance="",
        )

    def refresh(self, now: float) -> list[str]:
        """After this registry's own outage: every direct node and process gets a fresh ttl.

        Nothing was heard while the registry itself was cut off, so that silence says nothing
        about the nodes; a suspicion raised before is dropped and judged again from now on.
        Returns the nodes whose replica count changed.
        """
        changed: list[str] = []
        for node, entry in self.entries.items():
            if entry.via:
                continue
            if entry.status == "online":
                entry.last_seen = now
                self._seen_at(node, now)
            for instance, rep in self.replicas.get(node, {}).items():
                rep.seen = now
                rep.suspect = 0
                self._heard_at((node, instance), now)
            if self._count(entry):
                changed.append(node)
        return changed

    def forget(self, node: str, instance: str, suspicion: int) -> bool:
        """Drop a process judged dead; False when it was heard again since `suspicion`."""
        known = self.replicas.get(node, {})
        rep = known.get(instance)
        if rep is None or rep.suspect != suspicion:
            return False
        del known[instance]
        if not known:
            del self.replicas[node]
        return True

    def silent_node(self, node: str) -> bool:
        """Whether `node` is direct, offline and without any process heard: a node that died
        while this registry was not listening (its processes were never known)."""
        entry = self.entries.get(node)
        return (
            entry is not None
            and entry.via == ""
            and entry.status == "offline"
            and not self.replicas.get(node)
        )

    # -- changes (each returns whether the persisted state changed) ------------------------------
    def put_catalog(self, catalog: Catalog, now: float) -> bool:
        node, instance, revision = catalog.node, catalog.instance, catalog.revision
        old = self.entries.get(node)
        direct = old is not None and old.via == ""
        same = direct and old is not None and same_content(old.catalog, catalog)
        if same:
            assert old is not None
            catalog = old.catalog  # the same object keeps the node's index and cached bodies
        else:
            self._dirty.add(node)
            self._shared.catalog(catalog)
        if old is None:
            self._rank = None
        if not direct:
            self.replicas.pop(node, None)
        self.see(node, instance, revision, now, None)  # the announcer, not the kept catalog's
        self._seen_at(node, now)
        entry = self.entries[node] = NodeEntry(
            catalog=catalog,
            status="online",
            last_seen=now,
            heartbeat=old.heartbeat if old and not old.via else None,
            replicas=old.replicas if direct and old is not None else 0,
        )
        counted = self._count(entry)
        return not same or old is None or old.status != "online" or counted

    def needs_catalog(self, hb: Heartbeat) -> bool:
        """Whether a heartbeat shows we lack the node's current catalog (missed or changed)."""
        entry = self.entries.get(hb.node)
        return entry is None or entry.via != "" or entry.catalog.revision != hb.revision

    def beat(self, hb: Heartbeat, now: float) -> bool:
        """Record a heartbeat of a known node; True when the persisted entry changed (the node
        came back online, or a process joined)."""
        entry = self.entries[hb.node]
        self.see(hb.node, hb.instance, hb.revision, now, hb)
        entry.last_seen = now
        self._seen_at(hb.node, now)
        entry.heartbeat = self._load_of(hb.node, hb)
        counted = self._count(entry)
        if entry.status == "offline":
            entry.status = "online"
            return True
        return counted

    def stopped(self, node: str, instance: str | None = None) -> bool:
        """A process stopped on purpose (None: every one). The node stays listed, offline once
        no process of it is left (it may come back)."""
        entry = self.entries.get(node)
        if entry is None or entry.via:
            return False
        known = self.replicas.get(node, {})
        if instance is None:
            known.clear()
        else:
            known.pop(instance, None)
        if not known:
            self.replicas.pop(node, None)
        counted = self._count(entry)
        if any(not r.suspect for r in known.values()) or entry.status == "offline":
            return counted
        entry.status = "offline"
        return True

    def remove(self, node: str) -> bool:
        """Drop `node`'s entry: a direct one (another registry's copy may take its place), or
        one taken in (with the copy it came from, which would otherwise be chosen again)."""
        self.replicas.pop(node, None)
        entry = self.entries.pop(node, None)
        if entry is None:
            return False
        if entry.via:
            self.heard.get(entry.via, {}).pop(node, None)
        self._dirty.add(node)
        self._rank = None
        self._choose(node)
        return True

    def source_live(self, source: str, now: float, ttl: float) -> bool:
        """Whether registry `source` republished its view within `ttl`."""
        seen = self.source_seen.get(source)
        return seen is not None and now - seen <= ttl

    def drop_source(self, source: str) -> list[str]:
        """Forget registry `source` and every entry taken in from it; returns those nodes."""
        self.source_seen.pop(source, None)
        self._stale.discard(source)
        copies = self.heard.pop(source, {})
        gone = [n for n, e in self.entries.items() if e.via == source]
        for node in gone:
            self.remove(node)
        return gone + [n for n in copies if n not in gone and self._choose(n)]

    def prune(self, now: float, retention: float, ttl: float) -> list[str]:
        """Drop the entries nobody will hear from again; returns their nodes.

        A direct node goes once it has been offline (last heard) for longer than `retention`
        and no judgement of its processes is pending (their executions must be ended `lost`
        first). An entry taken in from another registry goes only while that registry is
        silent: a live one's view is the authority, and an entry dropped here would be back at
        its next republish. A registry silent for `retention` with nothing left is forgotten,
        so `source_seen` does not grow with every registry ever heard.
        """
        gone: list[str] = []
        for node, entry in self.entries.items():
            if entry.status != "offline" or now - entry.last_seen <= retention:
                continue
            if entry.via == "":
                if not self.replicas.get(node):
                    gone.append(node)
            elif not self.source_live(entry.via, now, ttl):
                gone.append(node)
        for node in gone:
            self.remove(node)
        holding = {e.via for e in self.entries.values() if e.via}
        for source, seen in list(self.source_seen.items()):
            if source not in holding and now - seen > retention:
                del self.source_seen[source]
        return gone

    # -- entries taken in from other registries (see ARCHITECTURE.md, "Federation") -------------
    def take_in(self, view: RegistryView, urls: list[str], now: float) -> set[str]:
        """A whole view of `view.registry` (all parts of a `full`): replaces what it gave us
        before; returns node ids to persist or delete."""
        return self.take_full(view.registry, view.nodes, view.urls or urls, now)

    def take_full(
        self, source: str, entries: Iterable[NodeEntry], urls: list[str], now: float
    ) -> set[str]:
        """Replace every copy `source` gave us with `entries`; returns nodes whose chosen entry
        changed."""
        self.heard_from(source, now)
        old = self.heard.pop(source, {})
        copies = self.heard[source] = {}
        touched = set(old)
        for entry in entries:
            copy = self._copy(source, entry, urls)
            if copy is not None:
                copies[copy.catalog.node] = copy
                touched.add(copy.catalog.node)
        return {node for node in touched if self._choose(node)}

    def take_changes(
        self,
        source: str,
        entries: Iterable[NodeEntry],
        removed: Iterable[str],
        urls: list[str],
        now: float,
    ) -> set[str]:
        """Apply one `changes` message of `source`; returns nodes whose chosen entry changed."""
        self.heard_from(source, now)
        copies = self.heard.setdefault(source, {})
        touched: set[str] = set()
        for node in removed:
            if copies.pop(node, None) is not None:
                touched.add(node)
        for entry in entries:
            copy = self._copy(source, entry, urls)
            if copy is not None:
                copies[copy.catalog.node] = copy
                touched.add(copy.catalog.node)
        return {node for node in touched if self._choose(node)}

    def heard_from(self, source: str, now: float) -> set[str]:
        """`source` is live (any message of it); if it had fallen silent, its copies are chosen
        again. Returns nodes whose chosen entry changed."""
        self.source_seen[source] = now
        if source not in self._stale:
            return set()
        self._stale.discard(source)
        return {n for n in list(self.heard.get(source, {})) if self._choose(n)}

    def _copy(self, source: str, entry: NodeEntry, urls: list[str]) -> NodeEntry | None:
        """`entry` as sent by `source`, kept as its copy (None: too long a path to be sane)."""
        path = entry.path if entry.path and entry.path[-1] == source else [*entry.path, source]
        if len(path) > MAX_PATH:
            return None
        catalog = entry.catalog
        if not catalog.urls:
            catalog = catalog.model_copy(update={"urls": list(urls)})
        return NodeEntry.model_construct(
            catalog=catalog,
            status=entry.status,
            last_seen=entry.last_seen,
            heartbeat=entry.heartbeat,
            via=source,
            replicas=entry.replicas,
            path=path,
        )

    def _choose(self, node: str) -> bool:
        """Pick the entry of `node` among the copies other registries gave us; whether the
        chosen entry changed.

        A node heard on our own bus (or our hybrid node) always wins. A copy whose path holds
        our own id came back around a loop and is never taken. Among the rest: a live source
        first, then the shortest path, then the smallest path (so two equal routes never flip
        between each other and make changes to send).
        """
        if node == self.owner or (self.local is not None and node == self.local.node):
            return False
        current = self.entries.get(node)
        if current is not None and current.via == "":
            return False
        best: NodeEntry | None = None
        best_key: tuple[bool, int, list[str]] | None = None
        for source, copies in self.heard.items():
            copy = copies.get(node)
            if copy is None or self.owner in copy.path:
                continue
            key = (source in self._stale, len(copy.path), copy.path)
            if best_key is None or key < best_key:
                best, best_key = copy, key
        if best is None:
            if current is None:
                return False
            del self.entries[node]
            self._dirty.add(node)
            self._rank = None
            return True
        assert best_key is not None
        status: NodeStatus = "offline" if best_key[0] else best.status
        catalog = best.catalog
        if current is not None and (current.catalog is catalog or current.catalog == catalog):
            catalog = current.catalog  # unchanged: its index and cached bodies stay valid
        else:
            self._dirty.add(node)
            self._shared.catalog(catalog)
        if current is None:
            self._rank = None
        chosen = NodeEntry.model_construct(
            catalog=catalog,
            status=status,
            last_seen=best.last_seen,
            heartbeat=best.heartbeat,
            via=best.via,
            replicas=best.replicas,
            path=best.path,
        )
        self.entries[node] = chosen
        return (
            current is None
            or any(
                getattr(current, f) != getattr(chosen, f)
                for f in ("status", "via", "path", "replicas", "last_seen")
            )
            or current.catalog is not catalog
        )

    def share(self, catalog: Catalog) -> None:
        """Give `catalog` the pieces equal to those of catalogs held (see `_Shared`): for
        entries about to be `load`ed, called as each is decoded, so their copies are freed at
        once rather than all held at the peak of a restart."""
        self._shared.catalog(catalog)

    def load(self, entries: Iterable[NodeEntry], now: float) -> None:
        """Adopt persisted entries, giving each node (and source) one `ttl` to show it lives.

        Heartbeats are not persisted, so a stored `last_seen` is old even for a live node; judging
        by it would mark live nodes offline (and their executions lost) before they re-announce.
        """
        for entry in entries:
            if entry.catalog.node == self.owner:
                continue
            if entry.status == "online":
                entry.last_seen = now
                if not entry.via:
                    self._seen_at(entry.catalog.node, now)
            if entry.via:
                self.source_seen.setdefault(entry.via, now)
                path = entry.path or [entry.via]
                entry.path = path
                self.heard.setdefault(entry.via, {})[entry.catalog.node] = entry.model_copy()
            self.entries[entry.catalog.node] = entry
            self._dirty.add(entry.catalog.node)
            self._rank = None

    def expire(self, now: float, ttl: float) -> Expired:
        """Suspect processes silent past `ttl`, and mark nodes offline once every process of
        theirs (or the registry they came from) is."""
        stale = {s for s, seen in self.source_seen.items() if now - seen > ttl}
        fell_silent = stale - self._stale
        self._stale = stale
        out = Expired([], [], [])
        if self._ordered and now >= self._latest:
            self._expire_due(now, ttl, out)
        else:
            self._expire_all(now, ttl, out)
        for source in fell_silent:  # another live copy, or the same one shown offline
            out.changed.extend(n for n in list(self.heard.get(source, {})) if self._choose(n))
        return out

    def _expire_due(self, now: float, ttl: float, out: Expired) -> None:
        """`expire` for the direct nodes and processes, reading only those silent past `ttl`.

        Every sign of life puts its process (and its node's `last_seen`) last in `_processes`
        (and `_seen`), so both are in the order they were last heard and the silent ones are
        first: a tick at 10,000 nodes reads the few that fell silent, not every entry (that
        loop was a fifth of a registry's CPU under steady beating). A time that went back
        (`_ordered` false) and anything found out of step makes the next tick read everything
        (`_expire_all`), which also puts both orders right again.
        """
        due = list(_due(self._processes, now, ttl))
        fell: list[str] = []
        for process in due:
            del self._processes[process]
            node, instance = process
            entry = self.entries.get(node)
            rep = self.replicas.get(node, {}).get(instance)
            if rep is None or rep.suspect or entry is None or entry.via != "":
                continue  # gone, judged already, or not ours to judge: heard again, it is back
            if not now - rep.seen > ttl:
                self._ordered = False  # heard without passing `see`: look at all next time
                continue
            self._suspicions += 1
            rep.suspect = self._suspicions
            out.silent.append((node, instance, rep.suspect))
            fell.append(node)
        for node in dict.fromkeys(fell):
            if self._count(self.entries[node]):
                out.changed.append(node)
        for node in list(_due(self._seen, now, ttl)):
            del self._seen[node]
            entry = self.entries.get(node)
            if entry is None or entry.via != "" or entry.status == "offline":
                continue
            if not now - entry.last_seen > ttl:
                self._ordered = False
                continue
            out.died.append(node)
            entry.status = "offline"
            out.changed.append(node)

    def _expire_all(self, now: float, ttl: float, out: Expired) -> None:
        """`expire` for the direct nodes and processes, reading every one; then the orders
        `_expire_due` reads are rebuilt from what the view holds."""
        for node, entry in self.entries.items():
            if entry.via == "":
                fell = False
                for instance, rep in self.replicas.get(node, {}).items():
                    if not rep.suspect and now - rep.seen > ttl:
                        self._suspicions += 1
                        rep.suspect = self._suspicions
                        out.silent.append((node, instance, rep.suspect))
                        fell = True
                if fell and self._count(entry):
                    out.changed.append(node)
                if entry.status == "offline" or now - entry.last_seen <= ttl:
                    continue
                out.died.append(node)
                entry.status = "offline"
                out.changed.append(node)
        processes = [
            (rep.seen, (node, instance))
            for node, known in self.replicas.items()
            for instance, rep in known.items()
            if not rep.suspect
        ]
        seen = [
            (e.last_seen, node)
            for node, e in self.entries.items()
            if e.via == "" and e.status == "online"
        ]
        processes.sort(key=_first)
        seen.sort(key=_first)
        self._processes = {p: t for t, p in processes}
        self._seen = {n: t for t, n in seen}
        self._latest = max(processes[-1][0] if processes else now, seen[-1][0] if seen else now)
        self._ordered = True

    # -- queries ---------------------------------------------------------------------------------
    def all_entries(self) -> list[NodeEntry]:
        own = [NodeEntry(catalog=self.local, status="online")] if self.local else []
        return own + list(self.entries.values())

    def flows(self, query: FlowsQuery) -> FlowsPage:
        """Same result as `query_flows` over every flow item, without building an item for each
        of the (tens of thousands of) flows: search the index, build items for the page only.
        """
        total, hits = self._query(query)
        items = [node.item(pos, status) for node, pos, status in hits]
        return FlowsPage(total=total, offset=query.offset, limit=query.limit, items=items)

    def flows_encoded(self, query: FlowsQuery, content_type: str) -> tuple[bytes, dict[str, str]]:
        """`encode(self.flows(query), content_type)`, from the cached bodies of the items."""
        total, hits = self._query(query)
        items = [node.body(pos, status, content_type) for node, pos, status in hits]
        return encode_page(total, query.offset, query.limit, items, content_type)

    def _query(self, query: FlowsQuery) -> tuple[int, list[_Hit]]:
        """(number of matching flows, the page of them) in view order: the hybrid's own node
        first, then entries in insertion order, each node's flows in catalog order.

        Which flows of a node match is a bit mask (text from the text index, tags from the tag
        index), so counting them is `int.bit_count` and only the nodes before the end of the
        page are walked in order.
        """
        self._catch_up()
        text = query.q.lower() if query.q else None
        wanted = list(dict.fromkeys(query.tags))
        if query.node is not None or query.organization is not None:
            return self._query_filtered(query, text, wanted)
        masks: dict[str, int] | None = None  # node → its matching flows; None: every flow
        if query.name is not None:  # the smallest set first: the others only narrow it
            masks = self._names.get(query.name, {})  # read-only: the index's own dict
        if text is not None:
            found = self._values.matches(text)  # read-only: the index's own dict, maybe
            masks = found if masks is None else _both(masks, found)
        for tag in wanted:
            if self._flows and self._tag_flows.get(tag) == self._flows:
                continue  # every flow of the view carries it: it narrows nothing
            tagged = self._tags.get(tag, {})
            masks = tagged if masks is None else _both(masks, tagged)
        total = self._flows if masks is None else sum(map(int.bit_count, masks.values()))
        if query.offset >= total:
            return total, []
        return total, self._page(masks, query.offset, query.offset + query.limit)

    def _page(self, masks: dict[str, int] | None, lo: int, hi: int) -> list[_Hit]:
        """The matching flows number `lo` to `hi` (excluded) in view order."""
        seen = 0
        hits: list[_Hit] = []
        get = masks.get if masks is not None else None
        nodes_get = self._nodes.get
        for entry in self._candidates(None, masks):
            catalog = entry.catalog
            mask = -1 if get is None else get(catalog.node, 0)
            if not mask:
                continue
            node = nodes_get(catalog.node)
            if node is None or node.catalog is not catalog:
                node = self._indexed(catalog)
            if mask == -1:
                mask = node.every
            n = mask.bit_count()
            if seen + n > lo:
                if n == 1:
                    hits.append((node, mask.bit_length() - 1, entry.status))
                else:
                    page = _bits(mask)[max(0, lo - seen) : hi - seen]
                    hits.extend((node, pos, entry.status) for pos in page)
            seen += n
            if seen >= hi:
                break
        return hits

    def _query_filtered(
        self, query: FlowsQuery, text: str | None, wanted: list[str]
    ) -> tuple[int, list[_Hit]]:
        """`_query` for one node, or one organization: look at every candidate node."""
        found = None
        if text is not None and query.node is None:
            found = self._values.matches(text)
        named = self._names.get(query.name, {}) if query.name is not None else None
        lo, hi = query.offset, query.offset + query.limit
        total = 0
        hits: list[_Hit] = []
        for entry in self._candidates(query.node, named if named is not None else found):
            catalog = entry.catalog
            if query.organization is not None and catalog.organization != query.organization:
                continue
            node = self._indexed(catalog)
            if found is not None:
                mask = found.get(catalog.node, 0)
            elif text is not None:
                mask = node.matching(text, self._values)
            else:
                mask = node.every
            if named is not None:
                mask &= named.get(catalog.node, 0)
            for tag in wanted:
                mask &= node.tag_masks.get(tag, 0)
            if not mask:
                continue
            n = mask.bit_count()
            if total < hi and total + n > lo:
                page = _bits(mask)[max(0, lo - total) : hi - total]
                hits.extend((node, pos, entry.status) for pos in page)
            total += n
        return total, hits

    def _indexed(self, catalog: Catalog) -> _Node:
        """The index's node for `catalog`, indexed now if `entries` changed without a method of
        this class (not done in this code base; it would cost a wrong count, never a crash)."""
        node = self._nodes.get(catalog.node)
        if node is None or node.catalog is not catalog:
            self._dirty.add(catalog.node)
            self._catch_up()
            node = self._nodes[catalog.node]
        return node

    def _candidates(self, node: str | None, found: dict[str, int] | None) -> Iterable[NodeEntry]:
        """Entries to look at, in view order: `node`'s only, or those in `found` when they are
        few (sorted by view order rather than looking at every entry), or all of them."""
        local = self._local_entry()
        if node is not None:
            if local is not None and local.catalog.node == node:
                return [local]
            entry = self.entries.get(node)
            return [entry] if entry is not None else []
        if found is not None and len(found) * 4 < len(self.entries):
            if self._rank is None:
                self._rank = {n: i for i, n in enumerate(self.entries)}
                if local is not None:
                    self._rank[local.catalog.node] = -1
            rank = self._rank
            picked: list[NodeEntry] = []
            for n in sorted((n for n in found if n in rank), key=rank.__getitem__):
                entry = local if rank[n] == -1 else self.entries.get(n)
                if entry is not None:
                    picked.append(entry)
            return picked
        if local is not None:
            return chain([local], self.entries.values())
        return self.entries.values()

    def _local_entry(self) -> NodeEntry | None:
        """The hybrid's own node as an entry (the same object while `local` stays the same)."""
        if self.local is None:
            return None
        if self._local is None or self._local.catalog is not self.local:
            self._local = NodeEntry.model_construct(catalog=self.local, status="online")
            self._rank = None
        return self._local

    def _catch_up(self) -> None:
        """Bring the indexes up to date with the catalogs that changed since the last query
        (the only work a change costs: none on the announcement path)."""
        local = self.local
        if local is not None:
            known = self._nodes.get(local.node)
            if known is None or known.catalog is not local:
                self._dirty.add(local.node)
        if not self._dirty:
            return
        values = self._values
        for node_id in self._dirty:
            old = self._nodes.pop(node_id, None)
            if old is not None:
                values.discard(node_id, old.slots)
                self._flows -= len(old.catalog.flows)
                for tag, mask in old.tag_masks.items():
                    tagged = self._tags[tag]
                    del tagged[node_id]
                    if not tagged:
                        del self._tags[tag]
                        del self._tag_flows[tag]
                    else:
                        self._tag_flows[tag] -= mask.bit_count()
                for f in old.catalog.flows:
                    named = self._names.get(f.name)
                    if named is not None and named.pop(node_id, None) is not None and not named:
                        del self._names[f.name]
            if local is not None and node_id == local.node:
                catalog: Catalog | None = local
            else:
                entry = self.entries.get(node_id)
                catalog = entry.catalog if entry is not None else None
            if catalog is not None:
                node = self._nodes[node_id] = _Node(catalog, values.add(node_id, catalog.flows))
                self._flows += len(catalog.flows)
                for tag, mask in node.tag_masks.items():
                    self._tags.setdefault(tag, {})[node_id] = mask
                    self._tag_flows[tag] = self._tag_flows.get(tag, 0) + mask.bit_count()
                for pos, f in enumerate(catalog.flows):
                    named = self._names.setdefault(f.name, {})
                    was = named.get(node_id)
                    named[node_id] = _bit(pos) if was is None else was | _bit(pos)
        self._dirty.clear()
        if values.needs_compacting():
            self._reindex()

    def _reindex(self) -> None:
        """A fresh text index of the same nodes (drops the values no flow holds any more)."""
        self._values = values = _Values()
        for node_id, node in self._nodes.items():
            node.slots = values.add(node_id, node.catalog.flows)

    def nodes(self) -> NodesPage:
        items = [node_item(e) for e in self.all_entries()]
        return NodesPage(total=len(items), items=items)

    def counts(self) -> tuple[int, int]:
        entries = self.all_entries()
        return len(entries), sum(len(e.catalog.flows) for e in entries)
