"""A registry's view: nodes and flows it knows, their liveness, and the queries over them.

Pure in-memory state with no I/O, so the registry decides when to persist (only on changes that
matter: a new catalog, a status flip, a removal — never a heartbeat) and tests can reason about
it. Entries announced on the registry's own bus have `via == ""`; entries taken in from another
registry's republished view carry that registry's id in `via` and are replaced wholesale each time
that registry republishes.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable

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
    RegistryView,
)


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


class _Index:
    """Every flow of a view made quick to query (a registry answers many queries over 20,000+
    flows; a Python loop over all of them costs tens of milliseconds, a few `str.find` do not).

    Each flow's searchable text (name, summary, description, tags; lower case, fields joined by
    NUL) is laid end to end in one `blob`, flows joined by SOH; `starts[i]` is where flow `i`
    begins. Rebuilt whenever an entry's catalog object changes (a new catalog, a node that came
    or left); statuses are read from the entries at query time, so they never make it stale.
    """

    def __init__(self, entries: list[NodeEntry]) -> None:
        self.catalogs = [e.catalog for e in entries]
        self.flows: list[FlowInfo] = []
        self.owner: list[int] = []
        self.ranges: dict[str, tuple[int, int]] = {}
        texts: list[str] = []
        for k, cat in enumerate(self.catalogs):
            lo = len(self.flows)
            for f in cat.flows:
                self.flows.append(f)
                self.owner.append(k)
                texts.append("\0".join([f.name, f.summary, f.description, *f.tags]).lower())
            self.ranges[cat.node] = (lo, len(self.flows))
        self.tags = [frozenset(f.tags) for f in self.flows]
        self.starts: list[int] = []
        at = 0
        for text in texts:
            self.starts.append(at)
            at += len(text) + 1
        self.blob = "\1".join(texts)

    def fresh(self, entries: list[NodeEntry]) -> bool:
        # list equality tries identity first, so unchanged catalogs compare at C speed
        return self.catalogs == [e.catalog for e in entries]

    def search(self, text: str, lo: int, hi: int) -> Iterable[int]:
        """Flows in [lo, hi) whose text contains `text`."""
        if lo >= hi:
            return []
        if "\0" in text or "\1" in text:  # could match across fields: check field by field
            return [i for i in range(lo, hi) if _plain_match(self.flows[i], text)]
        found: list[int] = []
        end = self.starts[hi] - 1 if hi < len(self.starts) else len(self.blob)
        pos = self.blob.find(text, self.starts[lo], end)
        while pos != -1:
            i = bisect_right(self.starts, pos) - 1
            found.append(i)
            if i + 1 >= hi:
                break
            pos = self.blob.find(text, self.starts[i + 1], end)
        return found


def _plain_match(f: FlowInfo, text: str) -> bool:
    return (
        text in f.name.lower()
        or text in f.summary.lower()
        or text in f.description.lower()
        or any(text in tag.lower() for tag in f.tags)
    )


def query_flows(items: Iterable[FlowItem], query: FlowsQuery) -> FlowsPage:
    """Filter and page flows; `q` matches name, summary, description and tags, case-blind."""
    text = query.q.lower() if query.q else None
    wanted = set(query.tags)
    hits = [
        item
        for item in items
        if (query.node is None or item.node == query.node)
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
    )


class View:
    """Nodes known to one registry, keyed by node id."""

    def __init__(self, owner: str, local: Catalog | None = None) -> None:
        self.owner = owner
        self.local = local
        """A hybrid's own node: always listed, always online, never touched by announcements."""
        self.entries: dict[str, NodeEntry] = {}
        self.source_seen: dict[str, float] = {}
        """Last time each registry we take in from republished its view."""
        self._index: _Index | None = None

    # -- changes (each returns whether the persisted state changed) ------------------------------
    def put_catalog(self, catalog: Catalog, now: float) -> bool:
        old = self.entries.get(catalog.node)
        self.entries[catalog.node] = NodeEntry(
            catalog=catalog,
            status="online",
            last_seen=now,
            heartbeat=old.heartbeat if old and not old.via else None,
        )
        return old is None or old.via != "" or old.catalog != catalog or old.status != "online"

    def needs_catalog(self, hb: Heartbeat) -> bool:
        """Whether a heartbeat shows we lack the node's current catalog (missed or changed)."""
        entry = self.entries.get(hb.node)
        return entry is None or entry.via != "" or entry.catalog.revision != hb.revision

    def beat(self, hb: Heartbeat, now: float) -> bool:
        """Record a heartbeat of a known node; True when it came back online."""
        entry = self.entries[hb.node]
        entry.last_seen = now
        entry.heartbeat = hb
        if entry.status == "offline":
            entry.status = "online"
            return True
        return False

    def stopped(self, node: str) -> bool:
        """A node stopped on purpose: keep listing it, offline (it may come back)."""
        entry = self.entries.get(node)
        if entry is None or entry.via or entry.status == "offline":
            return False
        entry.status = "offline"
        return True

    def remove(self, node: str) -> bool:
        return self.entries.pop(node, None) is not None

    def take_in(self, view: RegistryView, urls: list[str], now: float) -> set[str]:
        """Replace what `view.registry` gave us before; returns node ids to persist or delete.

        Skipped: nodes heard directly (our own bus is fresher), our own hybrid node, and entries
        that came from us in the first place (`via == owner`), which would otherwise bounce back.
        """
        source = view.registry
        self.source_seen[source] = now
        changed = {n for n, e in self.entries.items() if e.via == source}
        for n in changed:
            del self.entries[n]
        for entry in view.nodes:
            node = entry.catalog.node
            if self.owner in (node, entry.via):
                continue
            mine = self.entries.get(node)
            if mine is not None and mine.via == "":
                continue
            catalog = entry.catalog
            if not catalog.urls:
                catalog = catalog.model_copy(update={"urls": list(view.urls or urls)})
            self.entries[node] = NodeEntry(
                catalog=catalog,
                status=entry.status,
                last_seen=entry.last_seen,
                heartbeat=entry.heartbeat,
                via=source,
            )
            changed.add(node)
        return changed

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
            if entry.via:
                self.source_seen.setdefault(entry.via, now)
            self.entries[entry.catalog.node] = entry

    def expire(self, now: float, ttl: float) -> tuple[list[str], list[str]]:
        """Mark silent nodes offline: (direct nodes that just died, every node that flipped)."""
        stale = {s for s, seen in self.source_seen.items() if now - seen > ttl}
        died: list[str] = []
        flipped: list[str] = []
        for node, entry in self.entries.items():
            if entry.status == "offline":
                continue
            if entry.via == "":
                if now - entry.last_seen <= ttl:
                    continue
                died.append(node)
            elif entry.via not in stale:
                continue
            entry.status = "offline"
            flipped.append(node)
        return died, flipped

    # -- queries ---------------------------------------------------------------------------------
    def all_entries(self) -> list[NodeEntry]:
        own = [NodeEntry(catalog=self.local, status="online")] if self.local else []
        return own + list(self.entries.values())

    def flows(self, query: FlowsQuery) -> FlowsPage:
        """Same result as `query_flows` over every flow item, without building an item for each
        of the (tens of thousands of) flows: filter prepared rows, build items for the page only.
        """
        text = query.q.lower() if query.q else None
        wanted = set(query.tags)
        entries = self.all_entries()
        index = self._index
        if index is None or not index.fresh(entries):
            index = self._index = _Index(entries)
        if query.node is None:
            spans = [(0, len(index.flows))]
        else:
            spans = [index.ranges[query.node]] if query.node in index.ranges else []
        hits: list[tuple[NodeEntry, FlowInfo]] = []
        for lo, hi in spans:
            for i in index.search(text, lo, hi) if text is not None else range(lo, hi):
                entry = entries[index.owner[i]]
                if (
                    query.organization is not None
                    and entry.catalog.organization != query.organization
                ):
                    continue
                if wanted and not wanted <= index.tags[i]:
                    continue
                hits.append((entry, index.flows[i]))
        page = hits[query.offset : query.offset + query.limit]
        items = [
            # every field comes from validated models: construct without validating again
            FlowItem.model_construct(
                **dict(info),
                node=entry.catalog.node,
                organization=entry.catalog.organization,
                status=entry.status,
                urls=entry.catalog.urls,
            )
            for entry, info in page
        ]
        return FlowsPage(total=len(hits), offset=query.offset, limit=query.limit, items=items)

    def nodes(self) -> NodesPage:
        items = [node_item(e) for e in self.all_entries()]
        return NodesPage(total=len(items), items=items)

    def counts(self) -> tuple[int, int]:
        entries = self.all_entries()
        return len(entries), sum(len(e.catalog.flows) for e in entries)
