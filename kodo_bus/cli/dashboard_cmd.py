"""`kodo-bus dashboard`: the federation at a glance, live, in the terminal."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from ..config import Credentials
from .creds import with_credentials
from .exec_cmd import client_for
from .federation_cmd import NatsOpt


@with_credentials
def dashboard(
    via: Annotated[
        str | None,
        typer.Option("--via", help="Registry whose view seeds the nodes [default: any]."),
    ] = None,
    refresh: Annotated[
        float, typer.Option("--refresh", min=0.05, help="Seconds between redraws.")
    ] = 0.5,
    monitor: Annotated[
        str | None,
        typer.Option(
            "--monitor",
            envvar="KODO_MONITOR_URL",
            help="nats-server monitoring URL [default: the bus host, port 8222].",
        ),
    ] = None,
    nats: NatsOpt = None,
    credentials: Credentials | None = None,
) -> None:
    """Full-screen live view of nodes, executions, event rates and warnings (q or Ctrl-C quits).

    Fed by NATS pushes (heartbeats, catalogs, KV watches, status and log events), not by
    polling a registry.
    """
    from ..dashboard.feeds import default_monitor
    from ..dashboard.live import run_dashboard

    async def main() -> None:
        kb = await client_for(nats, credentials).connect()
        try:
            target = monitor if monitor is not None else default_monitor(kb.urls[0])
            await run_dashboard(kb, via, refresh, target or None)
        finally:
            # close, not drain: nothing needs flushing, and a KV watch cancelled while it was
            # being set up would hold a drain until its timeout
            await kb.nc.close()
            await kb.close()

    asyncio.run(main())


def register(app: typer.Typer) -> None:
    app.command()(dashboard)
