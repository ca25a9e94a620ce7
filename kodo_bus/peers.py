"""Republishing a registry's view to other buses, and (feed on) taking in theirs, incrementally.

Buses joined at the NATS level are one bus; `connect` names independent buses. For each one the
registry keeps a second NATS connection (retried forever in the background, so a missing peer
never blocks start). On it the registry publishes its view on `kodo.registry.<id>.view` and, with
feed on, listens to the views other registries publish there. A provider also republishes on its
own bus, where registries with feed on take it in; it never takes anything in.

What goes on the wire is a numbered stream per bus (see `RegistryView` and ARCHITECTURE.md,
"Federation"): the whole view once (`full`, cut into parts under `CHUNK_BYTES`), then only the
entries that changed (`changes`), and a small `beat` in a quiet heartbeat interval so receivers
know the sender lives. A receiver that misses a message (a gap in `seq`, a new `epoch`) asks for
a `full` on the bus it heard the stream on; nothing else ever resends the whole view.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from . import subjects
from .bus import connect
from .codec import CONTENT_TYPE, MSGPACK, decode_msg, encode
from .config import ConnectSettings
from .errors import ConnectError, WireError
from .models import SCHEMA_VERSION, NodeEntry, RegistryView
from .tasks import TaskSet

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
    parts: list[NodeEntry] | None = None
    """The parts of a `full` taken so far (None: not assembling one)."""
    asked: float = 0.0


class Peers:
    """The `connect` buses of one registry or provider, and its view streams on them."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.settings = registry.settings
        self.links: dict[str, NATS] = {}
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

    async def stop(self) -> None:
        await self.tasks.close()
        for nc in self.links.values():
            with contextlib.suppress(nats.errors.Error):
                await nc.drain()
        self.links.clear()

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
        settings = ConnectSettings(
            nats=[url],
            retry=-1,
            credentials=self.settings.credentials,
            name=f"{self.settings.id}-peer",
        )
        try:
            nc = await connect(settings)
        except ConnectError as exc:
            log.error("cannot reach peer bus %s: %s", url, exc)
            return
        self.links[url] = nc
        log.info("linked to peer bus %s", url)

        async def on_view(msg: Msg) -> None:
            await self.registry.on_view_msg(msg, [url])

        # feed off too: asks for our view arrive there
        await nc.subscribe(subjects.REGISTRY_VIEW_ALL, cb=on_view)

        async def on_ask(msg: Msg) -> None:
            await self.on_ask(msg, [url])

        await nc.subscribe(subjects.registry_ask(self.settings.id), cb=on_ask)
        self.registry.changed.set()

    # -- receiving ---------------------------------------------------------------------------------
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
        if view.kind == "full":
            if view.part == 0:
                state.parts = []
            elif state.parts is None or not in_order:
                state.parts = None
                self._ask(state, sender, bus)
                return view_.heard_from(sender, now)
            state.parts.extend(view.nodes)
            if view.part + 1 >= view.parts:
                entries, state.parts = state.parts, None
                state.synced = True
                return view_.take_full(sender, entries, view.urls or urls or [], now)
            return view_.heard_from(sender, now)
        if view.kind == "changes":
            changed = view_.take_changes(
                sender, view.nodes, view.removed, view.urls or urls or [], now
            )
        else:
            changed = view_.heard_from(sender, now)
        if not (in_order and state.synced):
            state.synced = False
            self._ask(state, sender, bus)
        return changed

    def _ask(self, state: _Inbound, sender: str, bus: str) -> None:
        """Ask `sender` for its whole view on `bus`, at most once a heartbeat per stream."""
        now = time.monotonic()
        if now - state.asked < min(1.0, self.settings.heartbeat):
            return
        state.asked = now
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
        whole: list[bytes] | None = None
        for _, out in list(self._targets()):
            if out.full:
                if whole is None:
                    whole = self._encoded(self.registry.republished().nodes)
                await self._send_stream(out, "full", whole, [])
                out.full = False
            elif entries or removed:
                if body is None:
                    body = self._encoded(entries)
                await self._send_stream(out, "changes", body, removed)
            elif now - out.last >= self.settings.heartbeat * 0.9:
                await self._send_stream(out, "beat", [], [])

    def _encoded(self, entries: list[NodeEntry]) -> list[bytes]:
        """Each entry as it goes out: with this registry at the end of its path."""
        me = self.settings.id
        return [
            msgpack.packb({**e.model_dump(mode="json", exclude_none=True), "path": [*e.path, me]})
            for e in entries
        ]

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
            body = _pack(fields, chunk)
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
        out.last = time.monotonic()
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await out.nc.flush(timeout=2)


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


def _pack(fields: dict[str, Any], entries: list[bytes]) -> bytes:
    """A `RegistryView` in msgpack, its `nodes` spliced from entries encoded once."""
    packer = msgpack.Packer()
    parts = [packer.pack_map_header(len(fields) + 1)]
    for name, value in fields.items():
        parts.append(packer.pack(name))
        parts.append(packer.pack(value))
    parts.append(packer.pack("nodes"))
    parts.append(packer.pack_array_header(len(entries)))
    parts.extend(entries)
    return b"".join(parts)
