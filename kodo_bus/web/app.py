"""The panel's ASGI app: one SDK `Client` (the panel's NATS user), routes, static assets.

The panel keeps no state of its own beyond its NATS connection: every page is read from the
bus when it is asked for (a registry's view, the records bucket, the events stream), so two
panels, or a panel and the CLI, never disagree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..client import Client
from . import execution_pages, launch, pages
from .context import Panel


def create_app(client: Client, via: str | None = None, connect: bool = True) -> Starlette:
    """The panel around `client` (connected at start-up when `connect`, closed at shutdown)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if connect:
            await client.connect()
        try:
            yield
        finally:
            if connect:
                await client.close()

    static = resources.files("kodo_bus.web") / "static"
    routes = [
        Route("/", pages.flows_page),
        Route("/flows/{node}/{name}", launch.form_page, methods=["GET"]),
        Route("/flows/{node}/{name}", launch.submit, methods=["POST"]),
        Route("/executions", pages.executions_page),
        Route("/executions/{execution}", execution_pages.execution_page),
        Route("/executions/{execution}/events", execution_pages.events),
        Route("/executions/{execution}/answer", execution_pages.answer, methods=["POST"]),
        Route("/executions/{execution}/cancel", execution_pages.cancel, methods=["POST"]),
        Route("/nodes", pages.nodes_page),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.panel = Panel(client, via)
    return app
