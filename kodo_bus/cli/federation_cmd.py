"""`kodo-bus info | nodes | flows | disconnect | forget`: ask any service about the federation.

Without `--via`, `nodes` and `flows` ask the first registry that answers the NATS micro
discovery (`$SRV.INFO.kodo-bus`), preferring one with feed on, since it sees the most.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import nats.errors
import typer
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from pydantic import BaseModel
from rich.table import Table

from .. import client, subjects
from ..bus import connect, jetstream, request
from ..codec import decode_reply, encode
from ..config import ConnectSettings, Credentials, nats_urls
from ..discovery import find_registry, live_services
from ..errors import (
    ConfigError,
    KodoError,
    KodoTimeout,
    NoResponders,
    did_you_mean,
)
from ..models import Ack, Empty, FlowsPage, FlowsQuery, NodesPage, ServiceInfo
from .app import out
from .creds import with_credentials

T = TypeVar("T")

NATS_HELP = (
    "NATS URL (repeatable, or comma-separated) [default: $KODO_NATS, else nats://127.0.0.1:4222]."
)
"""Every command's `--nats`: flags, else KODO_NATS (read by `config.nats_urls`, as the SDK does)."""
NatsOpt = Annotated[list[str] | None, typer.Option("--nats", help=NATS_HELP)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
JsonReplyOpt = Annotated[bool, typer.Option("--json", help="Print the reply as JSON.")]
"""`--json` of a command that prints no table, only what the service answered."""
ViaOpt = Annotated[str | None, typer.Option("--via", help="Service id to ask.")]
M = TypeVar("M", bound=BaseModel)


def _call(
    nats: list[str] | None,
    work: Callable[[NATS], Awaitable[T]],
    credentials: Credentials | None = None,
) -> T:
    async def main() -> T:
        settings = ConnectSettings(
            nats=nats_urls(nats),
            retry=1,
            credentials=credentials or Credentials.from_env(),
        )
        if settings.credentials.user:
            settings.inbox_prefix = subjects.inbox(settings.credentials.user)
        nc = await connect(settings)
        try:
            return await work(nc)
        finally:
            await nc.drain()

    return asyncio.run(main())


async def discover_registry(nc: NATS) -> str:
    """The id of a registry on this bus (feed on preferred); NoResponders when there is none."""
    return await find_registry(nc)


async def ask(nc: NATS, service: str, subject: str, message: BaseModel, reply: type[M]) -> M:
    """`request` to a service a user named; if nobody answers, say whether that id is offline
    or unknown (with the ids close to it) rather than which subject was silent."""
    try:
        return await request(nc, subject, message, reply)
    except NoResponders:
        raise await unknown_service(nc, service) from None


async def unknown_service(nc: NATS, service: str) -> NoResponders:
    """Why `service` does not answer: offline, per a registry's view (then `forget` drops it),
    or as `client.unknown_service` says (with close ids among the nodes a registry knows)."""
    known: dict[str, str] = {}
    with contextlib.suppress(KodoError):  # no registry: the live services are all we know
        known = {n.id: n.status for n in (await client.nodes_page(nc)).items}
    if known.get(service) == "offline":
        return NoResponders(
            f"node {service} is offline ('kodo-bus forget {service}' drops it from the views)"
        )
    return await client.unknown_service(nc, service, known)


def _emit(model: BaseModel, as_json: bool, table: Callable[[], Table]) -> None:
    if as_json:
        print(model.model_dump_json(indent=2))
    else:
        out.print(table())


@with_credentials
def info(
    service: Annotated[str, typer.Argument(help="Service id.")],
    nats: NatsOpt = None,
    as_json: JsonOpt = False,
    credentials: Credentials | None = None,
) -> None:
    """Who a service is: role, organization, version, counts of nodes, flows, rejected messages."""

    async def work(nc: NATS) -> ServiceInfo:
        return await ask(nc, service, subjects.svc_info(service), Empty(), ServiceInfo)

    reply = _call(nats, work, credentials)

    def table() -> Table:
        t = Table(title=f"service {reply.id}", show_header=False)
        for key, value in reply.model_dump(exclude={"v"}).items():
            t.add_row(key, str(value))
        return t

    _emit(reply, as_json, table)


@with_credentials
def nodes(
    via: ViaOpt = None,
    nats: NatsOpt = None,
    as_json: JsonOpt = False,
    credentials: Credentials | None = None,
) -> None:
    """Nodes a registry knows, online and offline."""

    async def work(nc: NATS) -> NodesPage:
        if via:
            return await ask(nc, via, subjects.svc_nodes(via), Empty(), NodesPage)
        return await client.nodes_page(nc, await discover_registry(nc))

    reply = _call(nats, work, credentials)

    def table() -> Table:
        t = Table(title=f"{reply.total} nodes")
        for col in ("node", "organization", "role", "status", "flows", "running", "urls"):
            t.add_column(col)
        for n in reply.items:
            status = "[green]online[/]" if n.status == "online" else "[red]offline[/]"
            t.add_row(
                n.id, n.organization, n.role, status, str(n.flows), str(n.running), " ".join(n.urls)
            )
        return t

    _emit(reply, as_json, table)


@with_credentials
def flows(  # noqa: PLR0917 (typer options)
    via: ViaOpt = None,
    query: Annotated[
        str | None,
        typer.Option("--query", "-q", help="Text to look for in names, summaries and tags."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Required tag (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 100,
    nats: NatsOpt = None,
    as_json: JsonOpt = False,
    credentials: Credentials | None = None,
) -> None:
    """Flows a service offers (a registry: every flow in its view)."""
    wanted = FlowsQuery(q=query, tags=tag or [], limit=limit)

    async def work(nc: NATS) -> FlowsPage:
        if via:
            return await ask(nc, via, subjects.svc_flows(via), wanted, FlowsPage)
        return await request(nc, subjects.svc_flows(await discover_registry(nc)), wanted, FlowsPage)

    reply = _call(nats, work, credentials)

    def table() -> Table:
        t = Table(title=f"{reply.total} flows (showing {len(reply.items)})")
        for col in ("node", "flow", "summary", "tags", "organization", "status"):
            t.add_column(col)
        for f in reply.items:
            t.add_row(f.node, f.name, f.summary, ", ".join(f.tags), f.organization, f.status)
        return t

    _emit(reply, as_json, table)


@with_credentials
def disconnect(
    service: Annotated[str, typer.Argument(help="Service id.")],
    nats: NatsOpt = None,
    as_json: JsonReplyOpt = False,
    credentials: Credentials | None = None,
) -> None:
    """Make a service leave the federation; it keeps serving its own flows."""

    async def work(nc: NATS) -> Ack:
        return await ask(nc, service, subjects.svc_disconnect(service), Empty(), Ack)

    reply = _call(nats, work, credentials)
    if as_json:
        print(reply.model_dump_json(indent=2))
    else:
        out.print(reply.message or "ok", highlight=False)


FORGET_WAIT = 3.0
"""Seconds `forget` waits for every registry's answer."""
_REGISTRY_ROLES = ("registry", "provider", "hybrid")


@with_credentials
def forget(
    node: Annotated[str, typer.Argument(help="Id of the offline node (or gone registry).")],
    nats: NatsOpt = None,
    as_json: JsonReplyOpt = False,
    credentials: Credentials | None = None,
) -> None:
    """Remove an offline node from the view of every registry on the bus (admin only).

    Not `disconnect --offline`: `disconnect` asks a live service to leave, and the service
    does it itself; `forget` is for a node that no longer answers, so it asks every registry
    instead. A node that still answers is refused: stop it first, or use `disconnect`.
    Registries also prune nodes offline for longer than their `retention` (7 days).
    Given the id of a registry that is gone for good, every registry drops what it took in
    from it, and its view bucket is deleted. Registries of other buses
    follow at the next view of this bus's registries.
    """
    subjects.check_token(node, "node id")

    async def work(nc: NATS) -> list[Ack]:
        services = await live_services(nc)
        for meta in services:
            if meta.get("id") == node:
                role = meta.get("role", "service")
                raise ConfigError(f"{role} {node} is online; stop it first or use disconnect")
        registries = {m["id"] for m in services if m.get("role") in _REGISTRY_ROLES}
        if not registries:
            raise NoResponders("no registry answers on this bus: no view to forget it from")
        hint = await _forget_hint(nc, node, services)  # before: after, it is known no more
        acks = await _gather_forget(nc, node, len(registries))
        if hint and all(a.ok for a in acks):
            acks.append(Ack(message=hint))
        if len(acks) < len(registries):
            missing = len(registries) - len(acks)
            acks.append(Ack(ok=False, message=f"{missing} of {len(registries)} did not answer"))
        if all(a.ok for a in acks):
            with contextlib.suppress(NotFoundError):  # not a registry's id: it has no bucket
                if await jetstream(nc).delete_key_value(subjects.bucket_view(node)):
                    acks.append(Ack(message=f"deleted the view bucket of registry {node}"))
        return acks

    acks = _call(nats, work, credentials)
    if as_json:
        print("[" + ",".join(a.model_dump_json() for a in acks) + "]")
    else:
        for ack in acks:
            out.print(ack.message, highlight=False)
    refused = [a.message for a in acks if not a.ok]
    if refused:
        raise ConfigError("; ".join(refused))


async def _forget_hint(nc: NATS, node: str, services: list[dict[str, str]]) -> str:
    """ "did you mean" for a `forget` of an id no registry's view holds: the ids close to it
    among the nodes a registry knows and the live services ('' when none is close)."""
    known: set[str] = {m["id"] for m in services}
    with contextlib.suppress(KodoError):
        known |= {n.id for n in (await client.nodes_page(nc)).items}
    if node in known:
        return ""
    suggestion = did_you_mean(node, known)
    return f"no node {node!r} is known on this bus{suggestion}" if suggestion else ""


async def _gather_forget(nc: NATS, node: str, expected: int) -> list[Ack]:
    """Every registry's answer to one forget request (several replies to one request)."""
    acks: list[Ack] = []
    done = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        try:
            acks.append(decode_reply(msg, Ack))
        except KodoError as exc:
            acks.append(Ack(ok=False, message=str(exc)))
        if len(acks) >= expected:
            done.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply, max_msgs=expected)
    try:
        body, headers = encode(Empty())
        await nc.publish(subjects.admin_forget(node), body, reply=inbox, headers=headers)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), FORGET_WAIT)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    if not acks:
        raise KodoTimeout(
            f"no registry answered within {FORGET_WAIT:g} s (on a secure bus, forgetting a "
            "node is an admin right)"
        )
    return acks


def register(app: typer.Typer) -> None:
    app.command()(info)
    app.command()(nodes)
    app.command()(flows)
    app.command()(disconnect)
    app.command()(forget)
