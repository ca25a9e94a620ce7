"""NATS pushes that fill the dashboard state: no request to a registry, no polling of KV.

- `kodo.node.*.*`: catalogs, heartbeats and byes, straight from the nodes;
- a KV watch of one registry's view bucket: the nodes that announced before we started;
- a KV watch of `KODO_EXECUTIONS`: every execution's record, current values then updates;
- `kodo.events.>` (core NATS, no JetStream consumer): counted for the rate, and `status`,
  `progress`, `log` and `error` events decoded (the subject's last token says the kind, so the
  other kinds are never decoded). The rate counts events, not messages: a burst is one message
  holding many, counted from its `Nats-Msg-Id` (`<execution>:<first>-<last>`) without decoding;
- nats-server's `/varz` monitoring endpoint, fetched with stdlib `urllib` in a thread. Without
  `--monitor` its URL is a guess (the connected server's host, port 8222): nothing in a client
  connection says where the monitoring listens, so each answer is checked against the
  connected server's id and one from another server is shown as such, never as this bus's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel

from .. import subjects
from ..client import Client
from ..codec import MSG_ID, decode, decode_events, decode_msg
from ..discovery import find_registry
from ..errors import NoResponders, WireError
from ..models import Bye, Catalog, ExecutionRecord, Heartbeat, NodeEntry
from .state import DashboardState

log = logging.getLogger("kodo_bus.dashboard")
M = TypeVar("M", bound=BaseModel)
DECODED_KINDS = frozenset({"status", "progress", "log", "error"})
MONITOR_PORT = 8222


def default_monitor(url: str) -> str:
    """The monitoring URL nats-server uses by default for a client URL (same host, port 8222)."""
    host = urlsplit(url).hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{MONITOR_PORT}"


def events_in(msg: Msg) -> int:
    """How many events a message on `kodo.events.>` carries: 1, or a burst's length (read from
    its `Nats-Msg-Id`, else by parsing the array); 0 for an array that does not parse."""
    if msg.data[:1] != b"[":
        return 1
    seqs = (msg.headers or {}).get(MSG_ID, "").rpartition(":")[2]
    first, dash, last = seqs.partition("-")
    if dash and first.isdigit() and last.isdigit() and int(last) >= int(first):
        return int(last) - int(first) + 1
    try:
        body = json.loads(msg.data)
    except ValueError:
        return 0
    return len(body) if isinstance(body, list) else 0


def fetch_varz(monitor: str, timeout: float = 2.0) -> dict[str, Any]:
    """GET `<monitor>/varz` (blocking: call it through `asyncio.to_thread`)."""
    with urllib.request.urlopen(f"{monitor.rstrip('/')}/varz", timeout=timeout) as reply:
        data: dict[str, Any] = json.loads(reply.read())
        return data


class Feeds:
    """Subscriptions and watches feeding one `DashboardState`; `stop()` ends them all."""

    def __init__(
        self,
        client: Client,
        state: DashboardState,
        via: str | None = None,
        monitor: str | None = None,
        monitor_every: float = 1.0,
        *,
        guessed: bool = False,
    ) -> None:
        self.client = client
        self.state = state
        self.via = via
        self.monitor = monitor
        self.guessed = guessed
        """`monitor` is `default_monitor`'s guess: shown only while it answers with the id of
        the server this connection is on (after a fail-over it may be another's)."""
        self.monitor_every = monitor_every
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        nc = self.client.nc
        s = self.state.server
        s.url = nc.connected_url.geturl() if nc.connected_url else ", ".join(self.client.urls)
        info: dict[str, Any] = getattr(nc, "_server_info", None) or {}
        s.version = str(info.get("version", ""))
        s.jetstream = bool(info.get("jetstream", False))
        s.monitor = self.monitor or ""
        self._subs.append(await nc.subscribe(subjects.NODE_ALL, cb=self._on_node))
        self._subs.append(await nc.subscribe(subjects.EVENTS_ALL, cb=self._on_event))
        self._tasks.append(asyncio.create_task(self._watch_executions()))
        self._tasks.append(asyncio.create_task(self._watch_view()))
        if self.monitor:
            self._tasks.append(asyncio.create_task(self._poll_monitor()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # bounded: nats-py can swallow a cancellation while a watch is being set up; such a
            # task ends when the connection closes
            await asyncio.wait(self._tasks, timeout=1.0)
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    # -- core NATS -----------------------------------------------------------------------------
    async def _on_node(self, msg: Msg) -> None:
        kind = msg.subject.rsplit(".", 1)[-1]
        try:
            if kind == "heartbeat":
                self.state.on_heartbeat(decode_msg(msg, Heartbeat))
            elif kind == "catalog":
                self.state.on_catalog(decode_msg(msg, Catalog))
            elif kind == "bye":
                self.state.on_bye(decode_msg(msg, Bye))
        except WireError as exc:
            log.debug("skipped: %s", exc)

    async def _on_event(self, msg: Msg) -> None:
        self.state.on_event_seen(count=events_in(msg))
        if msg.subject.rsplit(".", 1)[-1] not in DECODED_KINDS:
            return
        try:
            events = decode_events(msg.subject, msg.data, msg.headers)
        except WireError as exc:
            log.debug("skipped: %s", exc)
            return
        for event in events:
            self.state.on_event(event)

    # -- KV watches ----------------------------------------------------------------------------
    async def _watch_executions(self) -> None:
        # no bucket: no execution ever ran; the status events will still show new ones
        await self._watch_bucket(subjects.BUCKET_EXECUTIONS, ExecutionRecord, self.state.on_record)

    async def _watch_view(self) -> None:
        registry = self.via
        if registry is None:
            try:
                registry = await find_registry(self.client.nc)
            except NoResponders:
                return  # heartbeats and catalogs still bring the nodes in
        await self._watch_bucket(
            subjects.bucket_view(registry), NodeEntry, self.state.on_view_entry
        )

    async def _watch_bucket(self, bucket: str, model: type[M], on: Callable[[M], None]) -> None:
        """Every current and future value of a KV bucket, decoded (undecodable ones skipped)."""
        try:
            kv = await self.client.js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            return
        watcher = await kv.watchall(ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None or entry.value is None:
                    continue
                try:
                    value = decode(entry.key, entry.value, None, model)
                except WireError:
                    continue
                on(value)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    # -- monitoring endpoint -------------------------------------------------------------------
    async def _poll_monitor(self) -> None:
        assert self.monitor is not None
        server = self.state.server
        while True:
            nc = self.client.nc
            try:
                varz = await asyncio.to_thread(fetch_varz, self.monitor)
            except (OSError, ValueError):
                server.monitor_ok = server.monitor_other = False
            else:
                info: dict[str, Any] = getattr(nc, "_server_info", None) or {}
                if self.guessed and varz.get("server_id") != info.get("server_id"):
                    server.monitor_ok, server.monitor_other = False, True
                else:
                    self.state.on_varz(varz)
            await asyncio.sleep(self.monitor_every)
