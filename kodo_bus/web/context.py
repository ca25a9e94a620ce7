"""What every route shares: the panel (its SDK client and registry) and the checked form."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..client import Client
from ..discovery import find_registry
from . import csrf

MAX_FORM = 1_000_000
"""Bytes of a submitted form at most (inputs of a flow, an answer)."""


@dataclass
class Panel:
    """What the routes share: the SDK client and the registry to ask (None: any that answers)."""

    client: Client
    via: str | None = None
    page_size: int = 20

    @property
    def user(self) -> str:
        return self.client.user

    async def registry(self) -> str:
        return self.via or await find_registry(self.client.nc)


async def form_of(request: Request) -> dict[str, str] | None:
    """The submitted urlencoded form, or None when its CSRF token is not this browser's.

    Parsed here (a few lines) rather than with python-multipart: the panel's forms are all
    urlencoded, and one dependency fewer is one less thing to install."""
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


def panel_of(request: Request) -> Panel:
    panel: Panel = request.app.state.panel
    return panel
