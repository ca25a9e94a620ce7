"""`kodo-bus info | nodes | flows | disconnect`: ask any service about the federation.

Without `--via`, `nodes` and `flows` ask the first registry that answers the NATS micro
discovery (`$SRV.INFO.kodo-bus`), preferring one with feed on, since it sees the most.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from nats.aio.client import Client as NATS
from pydantic import BaseModel
from rich.table import Table

from .. import subjects
from ..bus import connect, request
from ..config import ConnectSettings, Credentials, nats_urls
from ..discovery import find_registry
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
ViaOpt = Annotated[str | None, typer.Option("--via", help="Service id to ask.")]


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
        return await request(nc, subjects.svc_info(service), Empty(), ServiceInfo)

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
        target = via or await discover_registry(nc)
        return await request(nc, subjects.svc_nodes(target), Empty(), NodesPage)

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
    q: Annotated[str | None, typer.Option("--q", help="Text to look for.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Required tag (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 100,
    nats: NatsOpt = None,
    as_json: JsonOpt = False,
    credentials: Credentials | None = None,
) -> None:
    """Flows a service offers (a registry: every flow in its view)."""
    query = FlowsQuery(q=q, tags=tag or [], limit=limit)

    async def work(nc: NATS) -> FlowsPage:
        target = via or await discover_registry(nc)
        return await request(nc, subjects.svc_flows(target), query, FlowsPage)

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
    as_json: JsonOpt = False,
    credentials: Credentials | None = None,
) -> None:
    """Make a service leave the federation; it keeps serving its own flows."""

    async def work(nc: NATS) -> Ack:
        return await request(nc, subjects.svc_disconnect(service), Empty(), Ack)

    reply = _call(nats, work, credentials)
    if as_json:
        print(reply.model_dump_json(indent=2))
    else:
        out.print(reply.message or "ok", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(info)
    app.command()(nodes)
    app.command()(flows)
    app.command()(disconnect)
