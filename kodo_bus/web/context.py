"""What every route shares: the panel (the SDK client of this request, the registry) and the
checked form.

On an open bus the panel has one client, its command line's user. On a secure bus it has none:
each request goes through the client of the browser's session (`sessions.py`), and a request
without one is answered 401, which the app turns into the login page."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..client import Client
from ..config import WEB_UPLOAD_MAX
from ..discovery import find_registry
from . import csrf, uploads
from .sessions import COOKIE, Session, Sessions

MAX_FORM = 1_000_000
"""Bytes of a submitted form at most (inputs of a flow, an answer)."""


@dataclass
class Web:
    """The app-wide part: the open bus's one client, or the secure bus's sessions."""

    client: Client | None
    sessions: Sessions | None = None
    via: str | None = None
    page_size: int = 20
    upload_max: int = WEB_UPLOAD_MAX
    """Bytes of one launch form with files at most."""


@dataclass
class Panel:
    """What a route works with: the client of this request (the browser's session's on a secure
    bus) and the registry to ask (None: any that answers)."""

    client: Client
    via: str | None = None
    page_size: int = 20
    session: Session | None = None

    @property
    def user(self) -> str:
        return self.client.user

    async def registry(self) -> str:
        return self.via or await find_registry(self.client.nc)


def web_of(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


def session_of(request: Request) -> Session | None:
    """The browser's session on a secure bus (None without one, or on an open bus)."""
    sessions = web_of(request).sessions
    return sessions.get(request.cookies.get(COOKIE)) if sessions is not None else None


def panel_of(request: Request) -> Panel:
    """This request's panel; raises 401 (→ the login page) on a secure bus without a session."""
    known: Panel | None = getattr(request.state, "panel", None)
    if known is not None:
        return known
    web = web_of(request)
    session = session_of(request)
    client = web.client if web.sessions is None else (session.client if session else None)
    if client is None:
        raise HTTPException(401, "log in first")
    panel = Panel(client, web.via, web.page_size, session)
    request.state.panel = panel
    return panel


async def form_of(request: Request) -> dict[str, str] | None:
    """The submitted form, or None when its CSRF token is not this browser's.

    Urlencoded forms are parsed here (a few lines); a multipart one (the login form with its
    creds file) goes through python-multipart (`uploads.read_fields`), under the same bound."""
    if uploads.is_multipart(request):
        fields = await uploads.read_fields(request, MAX_FORM)
        return fields if csrf.valid(request, fields.get(csrf.FIELD)) else None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise HTTPException(413, "form too large")
    form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return form if csrf.valid(request, form.get(csrf.FIELD)) else None


def refused(request: Request) -> Response:
    return HTMLResponse(
        "<p>This form is out of date or was posted from elsewhere (CSRF check failed): "
        "reload the page and send it again.</p>",
        status_code=403,
    )
