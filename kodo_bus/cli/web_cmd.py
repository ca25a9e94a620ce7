"""`kodo-bus web`: the web panel (kodo_bus/web/) served by uvicorn, as this NATS user.

It connects to NATS before it listens, so a wrong URL or credentials is one error line, not a
server that answers every page with an error; it prints its URL once the socket is bound (with
`--port 0`, the port the system chose), which is what `up` and the tests read.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from ..config import (
    WEB_HOST,
    WEB_PORT,
    WEB_SESSION_IDLE,
    WEB_SESSIONS_MAX,
    WEB_UPLOAD_MAX,
    Credentials,
    nats_urls,
)
from ..errors import AuthError
from .app import console, out
from .creds import with_credentials
from .exec_cmd import client_for
from .federation_cmd import NatsOpt

SHUTDOWN_GRACE = 2
"""Seconds open pages (their event streams) get at Ctrl-C before they are closed."""


@with_credentials
def web(  # noqa: PLR0917 (typer options)
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. Loopback by default: the panel acts as its NATS user "
            "for whoever reaches it.",
        ),
    ] = WEB_HOST,
    port: Annotated[int, typer.Option("--port", "-p", help="Port (0: a free one).")] = WEB_PORT,
    via: Annotated[
        str | None, typer.Option("--via", help="Registry to ask [default: any that answers].")
    ] = None,
    sessions_max: Annotated[
        int,
        typer.Option("--sessions", min=1, help="Browsers logged in at once at most (secure bus)."),
    ] = WEB_SESSIONS_MAX,
    session_idle: Annotated[
        float,
        typer.Option(
            "--session-idle", min=0.1, help="Seconds without a request that log a browser out."
        ),
    ] = WEB_SESSION_IDLE,
    upload_max: Annotated[
        int,
        typer.Option(
            "--upload-max",
            min=1,
            help="Bytes of one launch form's files at most (spooled to disk, never in memory).",
        ),
    ] = WEB_UPLOAD_MAX,
    nats: NatsOpt = None,
    credentials: Credentials | None = None,
) -> None:
    """Serve the web panel: flows, launch forms, live executions, questions, nodes (Ctrl-C
    stops it). On a bus that wants credentials, started without a password, creds or nkey of
    its own, it asks each browser for its NATS user and its password, nkey seed or creds file,
    and connects as that user."""
    import uvicorn

    from ..client import Client
    from ..web import create_app
    from ..web.sessions import Sessions

    async def main() -> None:
        own = client_for(nats, credentials)
        client: Client | None = own
        sessions: Sessions | None = None
        try:
            await own.connect()
        except AuthError:
            if _has_secret(credentials):
                raise  # the operator's own credentials were refused: one error line
            client = None  # a bus that wants credentials: each browser logs in as its user
            sessions = Sessions(nats_urls(nats or None), credentials, cap=sessions_max,
                                idle=session_idle)  # fmt: skip
        try:
            app = create_app(client, via, connect=False, sessions=sessions, upload_max=upload_max)
            config = uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=SHUTDOWN_GRACE,
                lifespan="on",
            )
            server = uvicorn.Server(config)
            serving = asyncio.create_task(server.serve())
            while not server.started and not serving.done():  # noqa: ASYNC110 (uvicorn sets a flag)
                await asyncio.sleep(0.05)
            if server.started:
                bound = server.servers[0].sockets[0].getsockname()[1]
                if sessions is not None:  # before the URL, which is what `up` and tests wait for
                    out.print("the bus wants credentials: each browser logs in as its NATS user")
                out.print(f"web panel on http://{host}:{bound}", highlight=False)
                sys.stdout.flush()
            await serving
        finally:
            if client is not None:
                await client.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        console.print("stopped")
        raise typer.Exit(130) from None


def _has_secret(credentials: Credentials | None) -> bool:
    """Credentials that authenticate by themselves (a user name alone, say KODO_USER, does not)."""
    if credentials is None:
        return False
    return any(x is not None for x in (credentials.password, credentials.creds, credentials.nkey))


def register(app: typer.Typer) -> None:
    app.command()(web)
