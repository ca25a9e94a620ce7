"""What the dashboard knows, built only from pushed messages (no NATS code here).

Heartbeat ages use the dashboard's own clock at receipt, so a node with a skewed clock still
ages correctly. Each node's beat interval is learnt from its heartbeats, so colours and the
offline rule follow whatever `--heartbeat` the node runs with.

A node known only from a registry's stored view (the dashboard just started, or the node lives
on another bus) shows the registry's status until the node is heard directly: the view's
`last_seen` is when the registry last wrote the entry, not its last heartbeat (heartbeats are
never written), so judging its age would call every live node offline at start.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..models import (
    TERMINAL_STATUSES,
    Bye,
    Catalog,
    Event,
    ExecutionRecord,
    Heartbeat,
    NodeEntry,
    NodeStatus,
)

DEFAULT_BEAT = 5.0
MISSED_BEATS = 3
"""A node silent for this many beats is shown offline (the registries' default ttl)."""
NOTICE_LEVELS = ("warning", "error", "critical")


@dataclass
class NodeRow:
    """One node: identity from its catalog, health from its last heartbeat."""

    id: str
    organization: str = ""
    role: str = "node"
    flows: int = 0
    running: int = 0
    queued: int = 0
    capacity: int = 0
    cpu: float = 0.0
    memory: int = 0
    last_beat: float = 0.0
    beat: float = DEFAULT_BEAT
    gone: bool = False
    last_heartbeat: float = 0.0
    """Receipt time of the last heartbeat itself (catalogs do not count for the interval)."""
    intervals: int = 0
    registry_status: NodeStatus | None = None
    """The registry view's status, while the node has not been heard directly (then None)."""
    health: bool = False
    """Whether running/queued/capacity/cpu/memory come from a heartbeat (else unknown)."""

    def age(self, now: float) -> float:
        return max(0.0, now - self.last_beat) if self.last_beat else float("inf")

    def online(self, now: float) -> bool:
        if self.gone:
            return False
        if self.registry_status is not None:
            return self.registry_status == "online"
        return self.age(now) <= MISSED_BEATS * self.beat

    def set_health(self, beat: Heartbeat) -> None:
        """Take the figures of a heartbeat (received, or stored with a registry's entry)."""
        self.running, self.queued, self.capacity = beat.running, beat.queued, beat.capacity
        self.cpu, self.memory = beat.cpu, beat.memory
        self.health = True


@dataclass
class ExecRow:
    """One execution: its record, plus the last progress it reported."""

    id: str
    flow: str
    node: str
    launcher: str
    status: str
    created: float
    updated: float
    done: float | None = None
    total: float | None = None


@dataclass
class Notice:
    """A warning or error seen anywhere in the federation."""

    ts: float
    level: str
    node: str
    flow: str
    execution: str
    message: str


@dataclass
class ServerInfo:
    """The bus: URL, server version, JetStream, and the monitoring endpoint's figures."""

    url: str = ""
    version: str = ""
    jetstream: bool | None = None
    monitor: str = ""
    monitor_ok: bool = False
    monitor_other: bool = False
    """The guessed monitoring URL answers for another nats-server (not the one connected to)."""
    connections: int | None = None
    in_rate: float | None = None
    out_rate: float | None = None
    last_varz: tuple[float, int, int] | None = None


@dataclass
class DashboardState:
    """Everything the screen shows; every `on_*` method takes one pushed message."""

    server: ServerInfo = field(default_factory=ServerInfo)
    nodes: dict[str, NodeRow] = field(default_factory=dict)
    executions: dict[str, ExecRow] = field(default_factory=dict)
    notices: deque[Notice] = field(default_factory=lambda: deque(maxlen=200))
    rate_buckets: dict[int, int] = field(default_factory=dict)
    max_executions: int = 5000
    window: int = 300

    # -- nodes ---------------------------------------------------------------------------------
    def _node(self, node: str) -> NodeRow:
        row = self.nodes.get(node)
        if row is None:
            row = self.nodes[node] = NodeRow(node)
        return row

    def on_catalog(self, catalog: Catalog, now: float | None = None) -> None:
        row = self._node(catalog.node)
        row.organization, row.role, row.flows = (
            catalog.organization,
            catalog.role,
            len(catalog.flows),
        )
        row.gone = False
        row.registry_status = None  # heard directly: from now on, our own clock judges it
        row.last_beat = max(row.last_beat, time.time() if now is None else now)

    def on_heartbeat(self, beat: Heartbeat, now: float | None = None) -> None:
        now = time.time() if now is None else now
        row = self._node(beat.node)
        if row.last_heartbeat and not row.gone:
            interval = now - row.last_heartbeat
            if 0.05 < interval < 600:
                row.beat = interval if not row.intervals else 0.7 * row.beat + 0.3 * interval
                row.intervals += 1
        row.last_beat = row.last_heartbeat = now
        row.gone = False
        row.registry_status = None
        row.set_health(beat)

    def on_bye(self, bye: Bye) -> None:
        if bye.forget:
            self.nodes.pop(bye.node, None)
        elif bye.node in self.nodes:
            self.nodes[bye.node].gone = True

    def on_view_entry(self, entry: NodeEntry) -> None:
        """A node as a registry's KV view stores it (the start point before pushes arrive).

        Until the node is heard directly, its status is the registry's and its last-seen the
        entry's; health figures only come from a heartbeat stored with the entry."""
        row = self._node(entry.catalog.node)
        row.organization, row.role = entry.catalog.organization, entry.catalog.role
        row.flows = len(entry.catalog.flows)
        if row.last_beat and row.registry_status is None:
            return  # heard directly: fresher than any stored entry
        row.registry_status = entry.status
        row.last_beat = entry.last_seen
        if entry.heartbeat is not None:
            row.set_health(entry.heartbeat)

    def node_counts(self, now: float) -> tuple[int, int]:
        online = sum(1 for n in self.nodes.values() if n.online(now))
        return online, len(self.nodes) - online

    # -- executions ----------------------------------------------------------------------------
    def on_record(self, record: ExecutionRecord) -> None:
        row = self.executions.get(record.execution)
        if row is None:
            row = self.executions[record.execution] = ExecRow(
                record.execution,
                record.flow,
                record.node,
                record.launcher,
                record.status,
                record.created,
                record.updated,
            )
            self._prune()
        else:
            row.created = record.created  # a row first seen in an event took that event's time
            if record.updated < row.updated:
                return
        row.status, row.updated = record.status, record.updated

    def _prune(self) -> None:
        if len(self.executions) <= self.max_executions:
            return
        ended = sorted(
            (r for r in self.executions.values() if r.status in TERMINAL_STATUSES),
            key=lambda r: r.created,
        )
        for row in ended[: len(self.executions) - self.max_executions]:
            del self.executions[row.id]

    def on_event_seen(self, now: float | None = None, count: int = 1) -> None:
        """Count `count` events of any kind (the sparkline): a burst message holds several."""
        second = int(time.time() if now is None else now)
        self.rate_buckets[second] = self.rate_buckets.get(second, 0) + count
        if len(self.rate_buckets) > self.window:
            for old in sorted(self.rate_buckets)[: len(self.rate_buckets) - self.window]:
                del self.rate_buckets[old]

    def on_event(self, event: Event) -> None:
        """A decoded `status`, `progress`, `log` or `error` event."""
        data: Any = event.data
        row = self.executions.get(event.execution)
        if row is None and event.kind in ("status", "progress"):
            status = data.get("status", "pending") if isinstance(data, dict) else "pending"
            row = self.executions[event.execution] = ExecRow(
                event.execution,
                event.flow,
                event.node,
                event.launcher,
                str(status) if event.kind == "status" else "running",
                event.ts,
                event.ts,
            )
            self._prune()
        if event.kind == "status" and row is not None and isinstance(data, dict):
            if event.ts >= row.updated or row.status not in TERMINAL_STATUSES:
                row.status, row.updated = str(data.get("status")), event.ts
        elif event.kind == "progress" and row is not None and isinstance(data, dict):
            row.done = float(data.get("done") or 0)
            total = data.get("total")
            row.total = float(total) if total else None
        elif event.kind == "log" and isinstance(data, dict):
            level = str(data.get("level", "info")).lower()
            if level in NOTICE_LEVELS:
                self._notice(event, level, str(data.get("message", "")))
        elif event.kind == "error" and isinstance(data, dict):
            self._notice(event, "error", f"{data.get('type', 'Error')}: {data.get('message', '')}")

    def _notice(self, event: Event, level: str, message: str) -> None:
        self.notices.append(
            Notice(event.ts, level, event.node, event.flow, event.execution, message)
        )

    def events_per_second(self, now: float, seconds: int) -> list[int]:
        """Event counts of the last `seconds` whole seconds, oldest first."""
        last = int(now) - 1
        return [self.rate_buckets.get(s, 0) for s in range(last - seconds + 1, last + 1)]

    # -- the server ----------------------------------------------------------------------------
    def on_varz(self, varz: dict[str, Any], now: float | None = None) -> None:
        """Figures of nats-server's `/varz` monitoring endpoint; rates from the previous call."""
        now = time.time() if now is None else now
        s = self.server
        s.monitor_ok, s.monitor_other = True, False
        s.version = str(varz.get("version") or s.version)
        s.jetstream = bool(varz.get("jetstream", {}).get("config")) or s.jetstream
        s.connections = int(varz.get("connections", 0))
        in_msgs, out_msgs = int(varz.get("in_msgs", 0)), int(varz.get("out_msgs", 0))
        if s.last_varz is not None and now > s.last_varz[0]:
            dt = now - s.last_varz[0]
            s.in_rate = max(0.0, (in_msgs - s.last_varz[1]) / dt)
            s.out_rate = max(0.0, (out_msgs - s.last_varz[2]) / dt)
        s.last_varz = (now, in_msgs, out_msgs)
