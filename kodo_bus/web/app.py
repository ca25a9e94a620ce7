"""The panel's ASGI app: routes, static assets, and where its NATS connections come from.

The panel keeps no state of its own beyond its NATS connections: every page is read from the
bus when it is asked for (a registry's view, the records bucket, the events stream), so two
panels, or a panel and the CLI, never disagree. On an open bus it has one SDK `Client` (its
command line's user); on a secure bus none of its own, only one per logged-in browser
(`sessions.py`), so NATS enforces what each browser sees.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..client import Client
from ..config import WEB_UPLOAD_MAX
from . import downloads, execution_pages, launch, login, pages
from .context import Web
from .sessions import Sessions


def create_app(
    client: Client | None,
    via: str | None = None,
    connect: bool = True,
    sessions: Sessions | None = None,
    upload_max: int = WEB_UPLOAD_MAX,
) -> Starlette:
    """The panel around `client` (connected at start-up when `connect`, closed at shutdown), or,
    with `sessions` (and no client), one client per logged-in browser, all closed at shutdown."""
    if (client is None) == (sessions is None):
        raise ValueError("create_app: give a client (open bus) or sessions (secure bus)")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if client is not None and connect:
            await client.connect()
        if sessions is not None:
            await sessions.start()
        try:
            yield
        finally:
            if sessions is not None:
                await sessions.stop()
            if client is not None and connect:
                await client.close()

    static = resources.files("kodo_bus.web") / "static"
    routes = [
        Route("/", pages.flows_page),
        Route("/login", login.login_page, methods=["GET"]),
        Route("/login", login.login, methods=["POST"]),
        Route("/logout", login.logout, methods=["POST"]),
        Route("/flows/{node}/{name}", launch.form_page, methods=["GET"]),
        Route("/flows/{node}/{name}", launch.submit, methods=["POST"]),
        Route("/executions", pages.executions_page),
        Route("/executions/{execution}", execution_pages.execution_page),
        Route("/executions/{execution}/events", execution_pages.events),
        Route("/executions/{execution}/answer", execution_pages.answer, methods=["POST"]),
        Route("/executions/{execution}/cancel", execution_pages.cancel, methods=["POST"]),
        Route("/executions/{execution}/files/{name}", downloads.download),
        Route("/nodes", pages.nodes_page),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={401: login.needs_login})
    app.state.web = Web(client, sessions, via, upload_max=upload_max)
    return app
