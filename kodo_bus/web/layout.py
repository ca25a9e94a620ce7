"""The frame every page shares: head, navigation, assets — one place for the page's HTML shell
and its security headers."""

from __future__ import annotations

from html import escape

from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..version import __version__
from . import csrf

NAV = (("/", "Flows"), ("/executions", "Executions"), ("/nodes", "Nodes"))
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' http: https:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
"""No inline script, no script from elsewhere: a second line behind the sanitizer."""


def csrf_field(request: Request) -> str:
    """The hidden field every POST form carries."""
    return f'<input type="hidden" name="{csrf.FIELD}" value="{escape(csrf.token_of(request))}">'


def page(
    request: Request, title: str, body: str, *, status: int = 200, active: str = ""
) -> HTMLResponse:
    """A whole page: the shared frame around `body` (already escaped HTML)."""
    on = ' class="on"'
    links = "".join(
        f'<a href="{href}"{on if href == active else ""}>{name}</a>' for href, name in NAV
    )
    who = _who(request)
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · kodo-bus</title>
<link rel="stylesheet" href="/static/panel.css">
<script src="/static/panel.js" defer></script>
</head><body>
<header><a class="brand" href="/">kodo-bus</a><nav>{links}</nav>
{who}</header>
<main>{body}</main>
<footer>kodo-bus {escape(__version__)} · talks to NATS, keeps nothing</footer>
</body></html>"""
    response = HTMLResponse(document, status_code=status)
    secure(response)
    csrf.ensure_cookie(request, response)
    return response


def _who(request: Request) -> str:
    """The NATS user the page was read as; with a session (secure bus) a logout button too."""
    panel = getattr(request.state, "panel", None)
    if panel is None:
        return ""
    user = f'<span class="who" title="NATS user of this page">{escape(panel.user)}</span>'
    if panel.session is None:
        return user
    return (
        f'<form class="logout" method="post" action="/logout">{csrf_field(request)}{user}'
        '<button type="submit" class="link">log out</button></form>'
    )


def secure(response: HTMLResponse) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"


def ago(seconds: float) -> str:
    """`42 s`, `7 min`, `3 h`, `2 d` ago."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{max(0, int(seconds))} s"


def badge(status: str) -> str:
    return f'<span class="badge s-{escape(status)}">{escape(status)}</span>'
