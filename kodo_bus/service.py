"""The life cycle every role shares: connect, answer `kodo.svc.<id>.*`, count bad input, stop.

One `Service` runs the parts its role needs — a `Node` (node, hybrid), a `Registry` (registry,
provider, hybrid) — behind one NATS connection, and registers as a NATS micro service so
`$SRV.PING/INFO/STATS` list it next to any other NATS service. The request endpoints are micro
endpoints on the `kodo.svc.<id>.*` subjects, so standard tooling sees their stats too.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from . import subjects
from .bus import connect, respond, respond_error
from .codec import decode_msg, reply_content_type
from .config import ServiceSettings
from .errors import WireError
from .flows import FlowSpec
from .models import Ack, Empty, FlowsQuery, NodesPage, ServiceInfo
from .node import Node
from .registry import Registry
from .version import __version__
from .view import node_item

log = logging.getLogger("kodo_bus.service")

REJECT_LOG_EVERY = 60.0
"""Seconds between two log lines about bad messages from the same sender."""
STOP_STEP = 2.0
"""Seconds a stop step that talks to NATS (micro service, drain) gets before it is given up."""
REJECT_LOG_CHARS = 300
"""Longest reason logged for a bad message (reasons may quote the message itself)."""


class Rejects:
    """Counts dropped messages; logs at most once per sender per minute (a flood stays quiet)."""

    def __init__(self) -> None:
        self.count = 0
        self._logged: dict[str, float] = {}

    def reject(self, sender: str, reason: object) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._logged.get(sender, -REJECT_LOG_EVERY) >= REJECT_LOG_EVERY:
            self._logged[sender] = now
            text = str(reason)
            if len(text) > REJECT_LOG_CHARS:  # a 1 MB bad message must not make a 1 MB log line
                text = text[:REJECT_LOG_CHARS] + f"... ({len(text)} characters)"
            log.warning("dropped a bad message from %.100s: %s", sender, text)


class KodoService:
    """One `kodo-bus run` process."""

    def __init__(self, settings: ServiceSettings, flows: list[FlowSpec]) -> None:
        self.settings = settings
        self.flows = flows
        self.rejects = Rejects()
        self.started = time.time()
        self.instance = secrets.token_hex(4)
        """This process, told apart from other processes serving the same id (replicas)."""
        self.nc: NATS | None = None
        self.node: Node | None = None
        self.registry: Registry | None = None
        self.micro: Service | None = None

    async def __aenter__(self) -> KodoService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        s = self.settings
        self.nc = nc = await connect(
            s.connect_settings(),
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
        )
        if s.is_node:
            self.node = Node(nc, s, self.flows, self.rejects, instance=self.instance)
        if s.is_registry:
            local = self.node.catalog if self.node else None
            self.registry = Registry(nc, s, self.rejects, local)
            await self.registry.start()
        self.micro = await add_service(
            nc,
            ServiceConfig(
                name=subjects.MICRO_SERVICE_NAME,
                version=__version__,
                description=f"kodo-bus {s.role} {s.id}",
                metadata={"id": s.id, "role": s.role, "organization": s.organization}
                | self._node_metadata(),
            ),
        )
        endpoints: dict[str, tuple[str, Callable[[Msg], Awaitable[None]]]] = {
            "info": (subjects.svc_info(s.id), self._info),
            "flows": (subjects.svc_flows(s.id), self._flows),
            "nodes": (subjects.svc_nodes(s.id), self._nodes),
            "disconnect": (subjects.svc_disconnect(s.id), self._disconnect),
        }
        if self.node is not None:
            endpoints["catalog"] = (subjects.svc_catalog(s.id), self._catalog)
        for name, (subject, handler) in endpoints.items():
            await self.micro.add_endpoint(
                EndpointConfig(name=name, subject=subject, handler=_guarded(handler))
            )
        if self.node is not None:
            await self.node.start()
        log.info(
            "%s %s ready (%d flows) on %s; instance %s",
            s.role,
            s.id,
            len(self.flows),
            ", ".join(s.nats),
            self.instance,
        )

    def _node_metadata(self) -> dict[str, str]:
        """A node's catalog revision and instance, so a process starting with its id can tell
        a replica from a rival (`Node._check_claim`)."""
        if self.node is None:
            return {}
        return {"revision": str(self.node.catalog.revision), "instance": self.instance}

    async def _disconnected(self) -> None:
        if self.nc is not None and not (self.nc.is_closed or self.nc.is_draining):
            log.warning("disconnected from NATS; reconnecting")

    async def _reconnected(self) -> None:
        """Announce again at once (registries may have missed announcements); the registry
        restarts its liveness clock by itself (it watches the connection)."""
        log.info("reconnected to NATS")
        if self.node is not None:
            self.node.reconnected()

    async def stop(self) -> None:
        """Take no new requests, stop the parts (node first: its bye is the last word), drain.

        With NATS unreachable (its server stopped first) each step that needs it is skipped or
        fails fast, in one log line: draining a dead connection waits out every flush (10 s
        each, a traceback at the end).
        """
        if self.micro is not None:
            try:
                if self._connected():
                    async with asyncio.timeout(STOP_STEP):
                        await self.micro.stop()
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("stopping the micro service: %r", exc)
        if self.node is not None:
            await self.node.stop()
        if self.registry is not None:
            try:
                await self.registry.stop()
            except nats.errors.Error as exc:
                log.warning("registry stop: NATS unreachable (%r)", exc)
        if self.nc is not None and not self.nc.is_closed:
            try:
                if self._connected():
                    async with asyncio.timeout(STOP_STEP):
                        await self.nc.drain()
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                log.debug("drain: %r", exc)
            if not self.nc.is_closed:
                try:
                    await self.nc.close()
                except OSError as exc:  # the server died at this very moment: closed anyway
                    log.debug("close: %r", exc)

    def _connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    # -- replies ---------------------------------------------------------------------------------
    def info(self) -> ServiceInfo:
        s = self.settings
        if self.registry is not None:
            nodes, flows = self.registry.view.counts()
        else:
            nodes, flows = 1, len(self.flows)
        return ServiceInfo(
            id=s.id,
            role=s.role,
            registry=s.is_registry,
            feed=s.feeds,
            organization=s.organization,
            version=__version__,
            started=self.started,
            nodes=nodes,
            flows=flows,
            rejected=self.rejects.count,
        )

    async def _info(self, msg: Msg) -> None:
        if await _refused(msg):
            return
        await respond(msg, self.info())

    async def _flows(self, msg: Msg) -> None:
        try:
            query = decode_msg(msg, FlowsQuery)
        except WireError as exc:
            await respond_error(msg, exc.kind, exc.reason)
            return
        if self.registry is not None:
            if msg.reply:  # the page from the items' cached bodies, as `respond` would encode it
                body, headers = self.registry.view.flows_encoded(query, reply_content_type(msg))
                await msg._client.publish(msg.reply, body, headers=headers)
        elif self.node is not None:
            await respond(msg, self.node.flows_page(query))

    async def _nodes(self, msg: Msg) -> None:
        if await _refused(msg):
            return
        if self.registry is not None:
            await respond(msg, self.registry.view.nodes())
        elif self.node is not None:
            from .models import NodeEntry

            entry = NodeEntry(
                catalog=self.node.catalog, heartbeat=self.node.heartbeat(), replicas=1
            )
            item = node_item(entry)
            await respond(msg, NodesPage(total=1, items=[item]))

    async def _catalog(self, msg: Msg) -> None:
        assert self.node is not None
        if await _refused(msg):
            return
        await respond(msg, self.node.catalog)

    async def _disconnect(self, msg: Msg) -> None:
        if await _refused(msg):
            return
        if self.registry is not None:
            await self.registry.disconnect()
        if self.node is not None:
            await self.node.disconnect()
        log.info("%s disconnected from the federation (still serving)", self.settings.id)
        await respond(msg, Ack(message=f"{self.settings.id} disconnected"))


async def _refused(msg: Msg) -> bool:
    """Whether a request that takes no fields (`Empty`) was refused for its body: unknown keys
    (`invalid_request`) or an unsupported `v` (`unsupported_version`)."""
    try:
        decode_msg(msg, Empty)
    except WireError as exc:
        await respond_error(msg, exc.kind, exc.reason)
        return True
    return False


def _guarded(handler: Callable[[Msg], Awaitable[None]]) -> Callable[[Request], Awaitable[None]]:
    """Adapt a handler to nats.micro; an unexpected failure becomes an `internal` error reply."""

    async def handle(req: Request) -> None:
        msg = req._msg
        try:
            await handler(msg)
        except nats.errors.Error as exc:
            log.warning("cannot answer on %s: %r", msg.subject, exc)
        except Exception as exc:
            log.exception("request on %s failed", msg.subject)
            await respond_error(msg, "internal", f"{type(exc).__name__}: {exc}")

    return handle
