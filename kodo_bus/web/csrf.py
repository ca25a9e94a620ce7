"""CSRF protection of every POST: a per-browser token in a cookie, echoed by each form.

The panel acts on the bus as its user (launch, answer, cancel), so a page of another site must
not be able to make a viewer's browser post to it. The token is random per browser, kept in a
`SameSite=Strict` HttpOnly cookie, and every form carries it in a hidden field: a cross-site
page can neither read the cookie nor guess the field. A POST whose `Origin` names another host
is refused as well, before its body is read. Nothing is stored on the server.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "kodo_csrf"
FIELD = "csrf_token"
TOKEN_BYTES = 32


def token_of(request: Request) -> str:
    """The browser's token (a new one when it has none: `ensure_cookie` then sets it)."""
    existing = request.cookies.get(COOKIE, "")
    if len(existing) >= TOKEN_BYTES:
        return existing
    fresh: str = request.state.__dict__.setdefault("csrf_new", secrets.token_urlsafe(TOKEN_BYTES))
    return fresh


def ensure_cookie(request: Request, response: Response) -> None:
    """Set the cookie when this request handed out a new token."""
    fresh = request.state.__dict__.get("csrf_new")
    if fresh:
        response.set_cookie(COOKIE, fresh, httponly=True, samesite="strict", path="/")


def same_origin(request: Request) -> bool:
    """A POST's `Origin` (or `Referer`), when the browser sends one, names this host."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return source is None
    return urlsplit(source).netloc == request.headers.get("host", "")


def valid(request: Request, submitted: str | None) -> bool:
    """The form's token matches the cookie's, and the POST comes from this origin."""
    cookie = request.cookies.get(COOKIE, "")
    if not cookie or not submitted or not same_origin(request):
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())
