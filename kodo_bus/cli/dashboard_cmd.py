"""`kodo-bus dashboard`: the federation at a glance, live, in the terminal.

It draws a full screen until `q`: with stdout not a terminal (redirected, piped, under a
supervisor) it would run forever and write nothing useful, so it says so and exits 2 at once.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from ..config import Credentials
from .app import console
from .creds import with_credentials
from .exec_cmd import client_for
from .federation_cmd import NatsOpt
from .watch import check_registry

NOT_A_TERMINAL = (
    "error: the dashboard draws a full screen and stdout is not a terminal — for a stream of "
    "lines use 'kodo-bus events --all --follow' or 'kodo-bus inspect live'"
)


@with_credentials
def dashboard(
    via: Annotated[
        str | None,
        typer.Option(
            "--via",
            help="Registry whose view bucket seeds the nodes [default: any that answers].",
        ),
    ] = None,
    refresh: Annotated[
        float, typer.Option("--refresh", min=0.05, help="Seconds between redraws.")
    ] = 0.5,
    monitor: Annotated[
        str | None,
        typer.Option(
            "--monitor",
            envvar="KODO_MONITOR_URL",
            help="nats-server monitoring URL ('' for none) [default: the connected server's "
            "host, port 8222, shown only if it answers for that same server].",
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

    if not sys.stdout.isatty():
        console.print(NOT_A_TERMINAL, style="red", highlight=False, soft_wrap=True)
        raise typer.Exit(2)

    async def main() -> None:
        kb = await client_for(nats, credentials).connect()
        try:
            if via is not None:
                await check_registry(kb.js, via)
            connected = kb.nc.connected_url
            bus_url = connected.geturl() if connected is not None else kb.urls[0]
            target = monitor if monitor is not None else default_monitor(bus_url)
            await run_dashboard(kb, via, refresh, target or None, guessed=monitor is None)
        finally:
            # close, not drain: nothing needs flushing, and a KV watch cancelled while it was
            # being set up would hold a drain until its timeout
            await kb.nc.close()
            await kb.close()

    asyncio.run(main())


def register(app: typer.Typer) -> None:
    app.command()(dashboard)
