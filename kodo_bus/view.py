"""A registry's view: nodes and flows it knows, their liveness, and the queries over them.

Pure in-memory state with no I/O, so the registry decides when to persist (only on changes that
matter: a new catalog, a status flip, a removal — never a heartbeat) and tests can reason about
it. Entries announced on the registry's own bus have `via == ""`; entries taken in from another
registry's republished view carry that registry's id in `via` and are replaced wholesale each time
that registry republishes.
"""

from __future__ import annotations

from collections.abc import Iterable

from .models import (
    Catalog,
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
        return query_flows((i for e in self.all_entries() for i in flow_items(e)), query)

    def nodes(self) -> NodesPage:
        items = [node_item(e) for e in self.all_entries()]
        return NodesPage(total=len(items), items=items)

    def counts(self) -> tuple[int, int]:
        entries = self.all_entries()
        return len(entries), sum(len(e.catalog.flows) for e in entries)
