"""Reading the bus as it goes by: every execution's events, and the control plane decoded.

`kodo-bus events --all` and `kodo-bus inspect` are the `nats sub` of this project for a user
without the Go tool: events are JSON on the wire, but a burst is an array, so a reader has to
split it; the control plane is msgpack, which no standard tool shows as text. Messages that do
not decode are counted (one warning line at the end), never fatal: anyone may publish on a
subject, and a monitor must outlive what it monitors.

Live reading is a core NATS subscription (as `nats sub`): what is published while it runs. The
stored events are read newest first, in windows of stream sequences that double, until `--last`
matching events are found or the stream's start is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
import typer
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from .. import subjects
from ..bus import connect, consumer_config
from ..codec import decode_events, decode_msg
from ..config import ConnectSettings, Credentials, nats_urls
from ..errors import ConfigError, KodoTimeout, WireError
from ..models import (
    EVENT_KINDS,
    Bye,
    Catalog,
    Event,
    Heartbeat,
    RegistryView,
    SyncRequest,
)
from .render import LEVEL_STYLES, event_json, status_text

STREAM_NOT_FOUND = 10059
"""JetStream's err_code for a stream that does not exist (a bus no node or registry set up)."""
LIVE_PENDING = 65_536
"""Messages a live subscription holds while the terminal catches up; beyond, NATS drops them
(a slow consumer) and the drops are counted in the closing warning."""
WINDOW_MAX = 65_536
"""Largest window of stream sequences read in one consumer while looking back."""
READ_TIMEOUT = 10.0
"""Seconds to wait for a stored message the consumer said was pending."""
TEXT_WIDTH = 160
"""Characters of an event's text shown on its one line (`--json` shows everything)."""


@dataclass
class Skipped:
    """Messages that could not be shown: undecodable ones, and live ones NATS dropped."""

    garbage: int = 0
    last: str = ""
    dropped: int = 0

    def bad(self, exc: WireError) -> None:
        self.garbage += 1
        self.last = str(exc)

    def warning(self) -> str | None:
        """The one closing line, or None when every message was shown."""
        parts = []
        if self.garbage:
            parts.append(
                f"{self.garbage} undecodable message{'s' * (self.garbage > 1)} skipped "
                f"(the last: {self.last})"
            )
        if self.dropped:
            parts.append(
                f"{self.dropped} message{'s' * (self.dropped > 1)} dropped by NATS while the "
                "output fell behind (a slow consumer)"
            )
        return "warning: " + "; ".join(parts) if parts else None

    def report(self, console: Console) -> None:
        line = self.warning()
        if line:
            console.print(f"[yellow]{escape(line)}[/]", highlight=False, soft_wrap=True)


@dataclass
class Filters:
    """What `events --all` keeps. The launcher and a single kind narrow the subject (so the
    server filters, and a client-role user can read its own `kodo.events.<name>.>`); flows,
    nodes and several kinds are checked on each event."""

    flows: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    launcher: str | None = None

    @classmethod
    def of(
        cls,
        flows: Iterable[str] | None,
        nodes: Iterable[str] | None,
        kinds: Iterable[str] | None,
        launcher: str | None,
    ) -> Filters:
        kinds_ = frozenset(kinds or ())
        unknown = kinds_ - set(EVENT_KINDS)
        if unknown:
            raise ConfigError(
                f"--kind {', '.join(sorted(unknown))}: not an event kind "
                f"(kinds: {', '.join(EVENT_KINDS)})"
            )
        if launcher is not None:
            subjects.check_token(launcher, "--launcher")
        return cls(frozenset(flows or ()), frozenset(nodes or ()), kinds_, launcher)

    def subject(self) -> str:
        if len(self.kinds) == 1:
            (kind,) = self.kinds
            return subjects.events(self.launcher or "*", "*", kind)
        if self.launcher is not None:
            return subjects.events_of_user(self.launcher)
        return subjects.EVENTS_ALL

    def keep(self, event: Event) -> bool:
        return (
            (not self.flows or event.flow in self.flows)
            and (not self.nodes or event.node in self.nodes)
            and (not self.kinds or event.kind in self.kinds)
            and self.launcher in (None, event.launcher)
        )


def unpack(msg: Msg, skipped: Skipped) -> list[Event]:
    """The events of one message (a burst is a JSON array of them); [] for garbage, counted."""
    try:
        return decode_events(msg.subject, msg.data, msg.headers)
    except WireError as exc:
        skipped.bad(exc)
        return []


def settings(nats: list[str] | None, credentials: Credentials | None) -> ConnectSettings:
    """How a watching command connects (the NATS user's inbox, as every command does)."""
    creds = credentials or Credentials.from_env()
    result = ConnectSettings(nats=nats_urls(nats), retry=1, credentials=creds)
    result.name = "kodo-bus-watch"
    if creds.user:
        result.inbox_prefix = subjects.inbox(creds.user)
    return result


async def connect_counting(settings_: ConnectSettings, skipped: Skipped) -> NATS:
    """A connection whose slow-consumer drops are counted in `skipped` (NATS reports them
    only to the error callback)."""

    async def on_error(exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            skipped.dropped += 1

    return await connect(settings_, error_cb=on_error)


# -- stored events -------------------------------------------------------------------------------
async def stored(
    js: JetStreamContext, filters: Filters, last: int, skipped: Skipped
) -> list[Event]:
    """The newest `last` stored events passing `filters`, oldest first ([] without a stream).

    Reads windows of stream sequences backwards from the end, each twice as long as the one
    before, so a common filter costs about `last` messages and a rare one no more than twice
    the part of the stream it had to look through."""
    if last <= 0:
        return []
    try:
        info = await js.stream_info(subjects.STREAM_EVENTS)
    except nats.js.errors.NotFoundError as exc:
        if exc.err_code != STREAM_NOT_FOUND:
            raise
        return []
    first, end = info.state.first_seq, info.state.last_seq
    kept: list[Event] = []
    span = max(64, last)
    while end >= max(first, 1):
        start = max(first, end - span + 1)
        window: deque[Event] = deque(maxlen=last)
        async for event in _window(js, filters.subject(), start, end, skipped):
            if filters.keep(event):
                window.append(event)
        kept = [*window, *kept][-last:]  # this window is older than what was kept
        if len(kept) >= last or start <= first:
            break
        end, span = start - 1, min(span * 2, WINDOW_MAX)
    return kept


async def _window(
    js: JetStreamContext, subject: str, start: int, end: int, skipped: Skipped
) -> AsyncIterator[Event]:
    """Events of the stored messages on `subject` with stream sequences `start`..`end`."""
    sub = await js.subscribe(
        subject,
        stream=subjects.STREAM_EVENTS,
        ordered_consumer=True,
        config=consumer_config(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
        ),
    )
    try:
        info = await sub.consumer_info()
        if not (info.num_pending or 0) + (info.delivered.consumer_seq if info.delivered else 0):
            return
        while True:
            try:
                msg = await sub.next_msg(timeout=READ_TIMEOUT)
            except nats.errors.TimeoutError:
                raise KodoTimeout(
                    f"the bus stopped sending stored events within {READ_TIMEOUT:g} s"
                ) from None
            meta = msg.metadata
            if meta.sequence.stream > end:
                return
            for event in unpack(msg, skipped):
                yield event
            if meta.sequence.stream >= end or not meta.num_pending:
                return
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


# -- live events ---------------------------------------------------------------------------------
async def watch_events(
    nc: NATS,
    js: JetStreamContext,
    filters: Filters,
    *,
    follow: bool,
    last: int,
    emit: Callable[[Event], None],
    skipped: Skipped,
) -> None:
    """The newest `last` stored events, then (`follow`) every new one until cancelled.

    The live subscription starts before the stored events are read, so nothing published in
    between is missed; an event of both (same execution and seq) is shown once."""
    sub = None
    if follow:
        sub = await nc.subscribe(filters.subject(), pending_msgs_limit=LIVE_PENDING)
    try:
        shown: set[tuple[str, int]] = set()
        for event in await stored(js, filters, last, skipped):
            emit(event)
            shown.add((event.execution, event.seq))
        if sub is None:
            return
        async for msg in sub.messages:
            for event in unpack(msg, skipped):
                if filters.keep(event) and (event.execution, event.seq) not in shown:
                    emit(event)
    finally:
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()


def _clip(text: str, width: int = TEXT_WIDTH) -> str:
    lines = text.strip("\n").splitlines() or [""]
    first = lines[0]
    more = len(first) > width or len(lines) > 1
    return first[:width] + (" …" if more else "")


def _summary(event: Event) -> Text:
    data: Any = event.data
    if event.kind == "status" and isinstance(data, dict):
        return status_text(str(data.get("status")))
    if event.kind == "log" and isinstance(data, dict):
        level = str(data.get("level", "info")).lower()
        text = Text(f"{level.upper():<8} ", style=LEVEL_STYLES.get(level, ""))
        return text + Text(_clip(str(data.get("message", ""))))
    if event.kind == "error" and isinstance(data, dict):
        return Text(_clip(f"{data.get('type', 'Error')}: {data.get('message', '')}"), "red")
    if isinstance(data, str):
        return Text(_clip(data), style="dim" if event.kind in ("stdout", "stderr") else "")
    return Text(_clip(json.dumps(data, default=str)))


def event_line(event: Event) -> Text:
    """One event of any execution on one line: time, short id, node/flow, kind, what it says."""
    when = dt.datetime.fromtimestamp(event.ts).strftime("%H:%M:%S")
    line = Text(f"{when} {event.execution[:8]} ", style="dim")
    line.append(f"{event.node}/{event.flow} ")
    line.append(f"{event.kind:<8} ", style="bold")
    return line + _summary(event)


def event_printer(console: Console, as_json: bool) -> Callable[[Event], None]:
    """Where `events --all` sends each event: a JSON line (the wire envelope) or a text line."""
    if as_json:
        return lambda event: print(event_json(event), flush=True)
    return lambda event: console.print(event_line(event), highlight=False, soft_wrap=True)


# -- the control plane ---------------------------------------------------------------------------
def _kind(pattern: str) -> str:
    return pattern.rsplit(".", 1)[-1]


CONTROL_SUBJECTS = (subjects.NODE_ALL, subjects.REGISTRY_VIEW_ALL, subjects.SYNC)
"""What `inspect live` listens to: announcements of nodes, registries' views, sync requests."""
CONTROL_MODELS: dict[str, type[BaseModel]] = {
    _kind(subjects.NODE_CATALOG): Catalog,
    _kind(subjects.NODE_HEARTBEAT): Heartbeat,
    _kind(subjects.NODE_BYE): Bye,
    _kind(subjects.REGISTRY_VIEW): RegistryView,
    subjects.SYNC: SyncRequest,
}


def decode_control(msg: Msg) -> tuple[str, BaseModel]:
    """The kind (catalog, heartbeat, bye, view, or the sync subject) and decoded message."""
    kind = msg.subject if msg.subject == subjects.SYNC else _kind(msg.subject)
    model = CONTROL_MODELS.get(kind)
    if model is None:
        raise WireError(msg.subject, "kodo-bus publishes nothing on this subject")
    return kind, decode_msg(msg, model)


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.0f}M"


def control_summary(message: BaseModel) -> str:
    """A control-plane message as a line of text (`--json` shows every field)."""
    if isinstance(message, Heartbeat):
        return (
            f"{message.node}  run {message.running}/{message.capacity} queued {message.queued} "
            f"cpu {message.cpu:.0f}% mem {_megabytes(message.memory)} rev {message.revision} "
            f"instance {message.instance or '-'}"
        )
    if isinstance(message, Catalog):
        names = [f.name for f in message.flows]
        shown = ", ".join(names[:8]) + (f", … {len(names) - 8} more" if len(names) > 8 else "")
        return (
            f"{message.node}  {message.role} org {message.organization or '-'} "
            f"rev {message.revision} instance {message.instance or '-'}  "
            f"{len(names)} flows{': ' + shown if names else ''}"
        )
    if isinstance(message, Bye):
        what = "forget (disconnect)" if message.forget else "stop (kept, offline)"
        return f"{message.node}  {what}{'  ' + message.reason if message.reason else ''}"
    if isinstance(message, RegistryView):
        online = sum(1 for n in message.nodes if n.status == "online")
        return (
            f"{message.registry}  {len(message.nodes)} nodes ({online} online) "
            f"feed {'on' if message.feed else 'off'} org {message.organization or '-'}"
        )
    if isinstance(message, SyncRequest):
        return f"from {message.registry or '-'}"
    return message.model_dump_json()


def control_node(message: BaseModel) -> str | None:
    """The node a control message is about (None for views and sync requests)."""
    return message.node if isinstance(message, Heartbeat | Catalog | Bye) else None


def control_json(subject: str, kind: str, message: BaseModel) -> str:
    payload = message.model_dump(mode="json", exclude_none=True)
    return json.dumps({"subject": subject, "kind": kind, "message": payload})


def control_line(subject: str, kind: str, message: BaseModel) -> Text:
    line = Text(dt.datetime.now().strftime("%H:%M:%S "), style="dim")
    line.append(f"{_kind(kind):<9} ", style="bold")
    return line + Text(control_summary(message))


JS_LIST_PAGE = 256
"""Streams per page of JetStream's STREAM.LIST answer."""


async def view_registries(js: JetStreamContext) -> list[str]:
    """Ids of the registries (and providers) that keep a view bucket on this bus, sorted."""
    prefix = subjects.kv_stream(subjects.bucket_view(""))
    found: list[str] = []
    offset = 0
    while True:
        page = await js.streams_info(offset)
        for info in page:
            name = info.config.name or ""
            if name.startswith(prefix):
                found.append(name[len(prefix) :])
        if len(page) < JS_LIST_PAGE:
            return sorted(found)
        offset += len(page)


def unknown_registry(registry: str, known: list[str]) -> ConfigError:
    """The one-line error for a registry without a view on this bus, listing those with one."""
    if not known:
        return ConfigError(
            f"no registry {registry!r} keeps a view on this bus; none does yet — start one with "
            "'kodo-bus run --role registry' (or 'kodo-bus up')"
        )
    return ConfigError(
        f"no registry {registry!r} keeps a view on this bus — known: {', '.join(known)}"
    )


async def check_registry(js: JetStreamContext, registry: str) -> None:
    """Raise `unknown_registry` unless `registry` keeps a view bucket on this bus."""
    try:
        await js.key_value(subjects.bucket_view(registry))
    except nats.js.errors.BucketNotFoundError:
        raise unknown_registry(registry, await view_registries(js)) from None


def run_until_interrupted(
    main: Callable[[], Coroutine[Any, Any, None]], skipped: Skipped, console: Console
) -> None:
    """`asyncio.run(main())`; Ctrl-C ends it with code 130 and no message (following is ended
    that way), a closed pipe with 0; the line about skipped messages comes last, whatever
    ended the run."""
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # the reader left (`| head`): like any Unix filter, stop without a word; stdout is
        # pointed at /dev/null so the interpreter's last flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    finally:
        skipped.report(console)
