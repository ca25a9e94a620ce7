"""`Client`: the asyncio entry point of the Python SDK.

It talks only to NATS subjects and JetStream (never imports a role), so a user's process stays
light. Registries are found by NATS micro discovery (`discovery.py`), like `kodo-bus flows`.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import Self, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel

from . import bus, snapshot, subjects
from .codec import JSON, decode, decode_msg
from .config import ConnectSettings, Credentials, nats_urls
from .discovery import find_registry, live_services
from .errors import (
    AmbiguousExecution,
    ConfigError,
    ExecutionNotFound,
    FlowNotFound,
    KodoError,
    KodoTimeout,
    NoResponders,
    ServiceNotFound,
    WireError,
    did_you_mean,
)
from .execution_ref import Execution
from .flow_ref import Flow, choose
from .models import (
    Empty,
    Event,
    ExecutionRecord,
    FlowItem,
    FlowsPage,
    FlowsQuery,
    NodeItem,
    NodesPage,
)

M = TypeVar("M", bound=BaseModel)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MIN_ID_PREFIX = 4
"""Fewest characters of an execution id `Client.resolve` takes (like git's short hashes)."""
STREAM_NOT_FOUND = 10059
"""JetStream's err_code for a stream that does not exist (a bus no node or registry set up)."""
STREAM_POLL = 1.0
"""Seconds between looks for the events stream while following the log of a fresh bus."""


async def flows_page(nc: NATS, registry: str, query: FlowsQuery, timeout: float) -> FlowsPage:
    """One page of a registry's flows: the request `Client.flows` makes (and the benchmark's
    query figure measures). Asked in JSON, so the reply (in the request's content type) is read
    and validated in one pass by pydantic-core, a third faster than msgpack then validation."""
    return await bus.request(
        nc, subjects.svc_flows(registry), query, FlowsPage, timeout=timeout, content_type=JSON
    )


async def nodes_page(nc: NATS, registry: str | None = None, timeout: float = 5.0) -> NodesPage:
    """The nodes a registry knows, online and offline, with when it last heard each: one
    request to `registry`, or to any registry that answers."""
    registry = registry or await find_registry(nc)
    return await bus.request(nc, subjects.svc_nodes(registry), Empty(), NodesPage, timeout=timeout)


class Client:
    """Connection to a kodo-bus federation: find flows, launch them, follow executions.

    `async with Client() as kb:` — the URL comes from the argument (one, a list, or several
    comma-separated), `KODO_NATS` (same form; the deprecated `KODO_NATS_URL` is read only when
    `KODO_NATS` is unset), or nats://127.0.0.1:4222. `user` is the launcher identity placed in
    launch subjects (with authentication it must be your NATS user name); it defaults to
    `KODO_USER` or `local`.
    """

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        user: str | None = None,
        credentials: Credentials | None = None,
        retry: int = 2,
        timeout: float = 5.0,
    ) -> None:
        self.urls = nats_urls(url)
        self.user = subjects.check_token(
            user or os.environ.get("KODO_USER") or subjects.DEFAULT_USER, "user"
        )
        self.timeout = timeout
        self._settings = ConnectSettings(
            nats=self.urls,
            retry=retry,
            credentials=credentials or Credentials.from_env(),
            name=f"kodo-bus-client-{self.user}",
            inbox_prefix=subjects.inbox(self.user),
        )
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._other_buses: dict[tuple[str, ...], NATS] = {}
        self._other_js: dict[int, JetStreamContext] = {}

    # -- life cycle ----------------------------------------------------------------------------
    async def connect(self) -> Self:
        """Connect (raises ConnectError with a hint when NATS is unreachable)."""
        if self._nc is None:
            self._nc = await bus.connect(self._settings)
            self._js = bus.jetstream(self._nc)
        return self

    async def close(self) -> None:
        """Drain and close every connection this client opened."""
        connections = [c for c in (self._nc, *self._other_buses.values()) if c is not None]
        self._nc, self._js = None, None
        self._other_buses.clear()
        self._other_js.clear()
        for nc in connections:
            with contextlib.suppress(nats.errors.Error):
                await nc.drain()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def nc(self) -> NATS:
        """For NATS work the SDK does not wrap (your own subjects); only while connected."""
        if self._nc is None:
            raise KodoError("the client is not connected: use 'async with Client() as kb:'")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        """For JetStream work the SDK does not wrap (your own streams); only while connected."""
        if self._js is None:
            raise KodoError("the client is not connected: use 'async with Client() as kb:'")
        return self._js

    # -- flows ---------------------------------------------------------------------------------
    async def flows(
        self,
        q: str | None = None,
        tags: Iterable[str] | None = None,
        via: str | None = None,
        *,
        node: str | None = None,
        organization: str | None = None,
    ) -> list[Flow]:
        """Flows from a registry's view: any registry that answers, or the one named by `via`."""
        query = FlowsQuery(
            q=q, tags=list(tags or []), node=node, organization=organization, limit=10_000
        )
        return await self._flows(query, via)

    async def _flows(self, query: FlowsQuery, via: str | None) -> list[Flow]:
        """Every page of `query`'s answer, from `via` or any registry that answers."""
        registry = via or await find_registry(self.nc)
        items: list[FlowItem] = []
        while True:
            try:
                page = await flows_page(self.nc, registry, query, self.timeout)
            except NoResponders:
                if via is None:
                    raise
                raise await unknown_service(self.nc, via) from None
            items.extend(page.items)
            if len(items) >= page.total or not page.items:
                return [Flow(self, item) for item in items]
            query = query.model_copy(update={"offset": len(items)})

    async def flow(self, name: str, via: str | None = None) -> Flow:
        """One flow by `name` or `node/name`; errors list the candidates.

        One request asks the registry for flows of exactly that name (a federation lists
        hundreds of thousands of flows: downloading them all to pick one took seconds); only
        when none is found does a second request fetch the flows the error names as candidates.
        """
        node, _, flow_name = name.rpartition("/")
        query = FlowsQuery(name=flow_name, node=node or None, limit=10_000)
        exact = await self._flows(query, via)
        if exact:
            return await choose(self, name, exact, via)
        found = await self.flows(via=via, node=node or None)
        if node:  # the node may be misspelt, or not offer it: look at every node's flows
            everywhere = await self.flows(via=via)
            elsewhere = sorted({f.qualified_name for f in everywhere if f.name == flow_name})
            if elsewhere:
                hint = did_you_mean(name, elsewhere) or f" — it is offered as {elsewhere[0]!r}"
                raise FlowNotFound(f"no flow named {name!r}{hint}")
            if not found:
                nodes = {f.node for f in everywhere}
                raise FlowNotFound(
                    f"no flow named {name!r}: no node {node!r} offers flows here"
                    f"{did_you_mean(node, nodes)}"
                )
        raise FlowNotFound(f"no flow named {name!r}{_did_you_mean(flow_name, found, node)}")

    # -- nodes ---------------------------------------------------------------------------------
    async def nodes(self, via: str | None = None) -> list[NodeItem]:
        """The nodes a registry knows (any registry that answers, or the one named by `via`),
        online and offline."""
        try:
            return (await nodes_page(self.nc, via, self.timeout)).items
        except NoResponders:
            if via is None:
                raise
            raise await unknown_service(self.nc, via) from None

    # -- executions ----------------------------------------------------------------------------
    def execution(self, execution: str) -> Execution:
        """Re-attach to an execution by id, from any process."""
        return Execution(self, execution)

    async def resolve(self, prefix: str) -> str:
        """The full id of this client's user's execution whose id starts with `prefix` (at
        least `MIN_ID_PREFIX` characters), so the short ids tables and logs print can be pasted
        back, as git does with hashes.

        An id that no record starts with is returned as given: its record may not be written
        yet (a launch stores events first), and `Execution` looks at the events too. Raises
        `ExecutionNotFound` on a bus that never held an execution, `AmbiguousExecution` when
        several ids start with `prefix`, `ConfigError` for a prefix that is too short.
        """
        text = prefix.strip().rstrip("…")
        if len(text) < MIN_ID_PREFIX:
            raise ConfigError(
                f"execution id {prefix!r}: give at least {MIN_ID_PREFIX} characters of it"
            )
        matches = await self._records_or_none(lambda r: r.execution.startswith(text))
        if matches is None:
            raise ExecutionNotFound(
                f"no execution {text!r} is known: this bus has run no execution yet"
            )
        if not matches or any(r.execution == text for r in matches):
            return text
        if len(matches) == 1:
            return matches[0].execution
        matches.sort(key=lambda r: r.created, reverse=True)
        raise AmbiguousExecution(text, [(r.execution, r.flow, r.status) for r in matches])

    async def executions(
        self,
        status: str | Iterable[str] | None = None,
        flow: str | None = None,
        node: str | None = None,
        launcher: str | None = None,
        limit: int = 100,
    ) -> list[ExecutionRecord]:
        """Execution records, newest first, filtered on any of the fields."""
        statuses = {status} if isinstance(status, str) else set(status or [])

        def keep(r: ExecutionRecord) -> bool:
            return (
                (not statuses or r.status in statuses)
                and flow in (None, r.flow)
                and node in (None, r.node)
                and launcher in (None, r.launcher)
            )

        records = await self._records(keep, launcher)
        records.sort(key=lambda r: r.created, reverse=True)
        return records[:limit]

    async def logs(
        self,
        level: str = "debug",
        node: str | None = None,
        flow: str | None = None,
        since: float | None = None,
        follow: bool = False,
    ) -> AsyncIterator[Event]:
        """`log` events of every execution on the bus, oldest first; `follow` keeps listening."""
        floor = LOG_LEVELS.index(level.lower()) if level.lower() in LOG_LEVELS else 0
        async for msg in self._log_messages(since, follow):
            try:
                event = decode_msg(msg, Event)
            except WireError:
                continue
            data = event.data if isinstance(event.data, dict) else {}
            lvl = str(data.get("level", "info")).lower()
            if (LOG_LEVELS.index(lvl) if lvl in LOG_LEVELS else 1) < floor:
                continue
            if node in (None, event.node) and flow in (None, event.flow):
                yield event

    async def _log_messages(self, since: float | None, follow: bool) -> AsyncIterator[Msg]:
        """The stored `log` events, then (`follow`) the new ones. A bus no node or registry has
        set up has no events stream: nothing to read, or (`follow`) wait until it is made.
        A consumer the bus never answers is what a user without the right to read everyone's
        log gets on a secure bus (the refusal itself only reaches the connection's error
        callback), so it is told as such, in one line."""
        while True:
            messages = snapshot.current(
                self.js,
                subjects.STREAM_EVENTS,
                subjects.EVENTS_LOG_ALL,
                last_per_subject=False,
                start_time=_rfc3339(since) if since is not None else None,
                follow=follow,
            )
            try:
                first = await anext(messages, None)
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code != STREAM_NOT_FOUND:
                    raise
                if not follow:
                    return
                await asyncio.sleep(STREAM_POLL)
                continue
            except nats.errors.TimeoutError:
                raise KodoTimeout(
                    f"the bus did not answer a read of the central log within {self.timeout:g} s: "
                    f"on a secure bus only monitor and admin users ({self.user!r} is not one?) "
                    "may read it"
                ) from None
            break
        if first is None:
            return
        try:
            yield first
            async for msg in messages:
                yield msg
        finally:
            close = getattr(messages, "aclose", None)  # an async generator: end its consumer
            if close is not None:
                await close()

    # -- internals shared with Flow and Execution ----------------------------------------------
    async def _request(
        self, subject: str, message: BaseModel, reply: type[M], nc: NATS | None = None
    ) -> M:
        return await bus.request(nc or self.nc, subject, message, reply, timeout=self.timeout)

    async def _bus_for(self, urls: Sequence[str]) -> NATS:
        """This bus, or a connection to the other bus a flow was taken in from."""
        if not urls or set(urls) & set(self.urls):
            return self.nc
        key = tuple(sorted(urls))
        if key not in self._other_buses:
            settings = self._settings.model_copy(update={"nats": list(urls)})
            self._other_buses[key] = await bus.connect(settings)
        return self._other_buses[key]

    def _jetstream(self, nc: NATS) -> JetStreamContext:
        """JetStream of another bus this client reached (one context per connection)."""
        if nc is self._nc:
            return self.js
        return self._other_js.setdefault(id(nc), bus.jetstream(nc))

    async def _record(
        self, execution: str, launcher: str | None = None, js: JetStreamContext | None = None
    ) -> ExecutionRecord | None:
        """The record of an execution launched by `launcher` (default: this client's user), on
        this bus or the one `js` reaches."""
        kv = bus.kv_handle(js or self.js, subjects.BUCKET_EXECUTIONS)
        key = subjects.record_key(launcher or self.user, execution)
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except nats.errors.NoRespondersError:  # nobody serves the bucket: it does not exist
            raise nats.js.errors.BucketNotFoundError from None
        if entry.value is None:
            return None
        return decode(f"{subjects.BUCKET_EXECUTIONS}.{key}", entry.value, None, ExecutionRecord)

    async def _records(
        self,
        keep: Callable[[ExecutionRecord], bool],
        launcher: str | None = None,
        js: JetStreamContext | None = None,
    ) -> list[ExecutionRecord]:
        """Current records of `launcher`'s executions (default: this client's user; `*` for
        everyone's, which needs monitor or admin rights) passing `keep`.

        Read with a consumer filtered on the launcher's keys, the form a client's permissions
        allow (a whole-bucket watch would be refused on a secure bus).
        """
        return await self._records_or_none(keep, launcher, js) or []

    async def _records_or_none(
        self,
        keep: Callable[[ExecutionRecord], bool],
        launcher: str | None = None,
        js: JetStreamContext | None = None,
    ) -> list[ExecutionRecord] | None:
        """`_records`, or None when the bus has no records bucket (it never ran anything)."""
        bucket = subjects.BUCKET_EXECUTIONS
        js = js or self.js
        keys = subjects.kv_subject(bucket, subjects.record_key(launcher or self.user, ">"))
        records: list[ExecutionRecord] = []
        try:
            async for msg in snapshot.current(js, subjects.kv_stream(bucket), keys):
                if not msg.data:
                    continue  # a deleted or purged key
                try:
                    record = decode(msg.subject, msg.data, None, ExecutionRecord)
                except WireError:
                    continue
                if keep(record):
                    records.append(record)
        except nats.js.errors.NotFoundError:  # no such stream
            return None
        return records


async def unknown_service(nc: NATS, service: str, known: Iterable[str] = ()) -> NoResponders:
    """Why a service a user named (`--via`, `info`, `disconnect`) does not answer: it is live
    but does not serve that request, or no live service has that id (`ServiceNotFound`, with
    the ids close to it among the live ones and `known`)."""
    live = {m["id"]: m.get("role", "service") for m in await live_services(nc)}
    if service in live:
        return NoResponders(f"{live[service]} {service} does not answer this request")
    return ServiceNotFound(
        f"no service {service!r} answers on this bus{did_you_mean(service, [*live, *known])}"
    )


def _did_you_mean(name: str, found: Sequence[Flow], node: str = "") -> str:
    """The " — did you mean 'greet'?" of an unknown flow: names close to `name` (difflib, like
    the node's unknown-input problems) or containing it; `node/name` where several nodes offer
    one, or where the user named the node."""
    names = sorted({f.name for f in found})
    near = set(difflib.get_close_matches(name, names, n=5, cutoff=0.6))
    near |= {n for n in names if name.lower() in n.lower()}
    shown: list[str] = []
    for n in sorted(near):
        offers = sorted(f.qualified_name for f in found if f.name == n)
        shown.extend([n] if len(offers) == 1 and not node else offers)
    if not shown:
        return ""
    if len(shown) == 1:
        return f" — did you mean {shown[0]!r}?"
    return f" — did you mean: {', '.join(shown[:10])}?"


def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"
