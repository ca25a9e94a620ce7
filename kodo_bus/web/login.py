"""Login and logout on a secure bus: the browser gives its NATS user and its password, nkey
seed or creds file once, the panel connects as that user (`sessions.py`) and keeps the
connection (with the secret inside it, in memory), never the secret in a cookie or a log.

A page asked for without a session answers with this login form (not an error), and comes back
to the page after the login. On an open bus there is nothing to log in to: /login goes home."""

from __future__ import annotations

from html import escape
from urllib.parse import quote, urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..errors import AuthError, ConfigError, ConnectError
from .context import form_of, refused, web_of
from .layout import csrf_field, page, secure
from .sessions import COOKIE, Secret
from .uploads import MULTIPART

NEXT_FIELD = "next"
WHAT = {"password": "password", "nkey": "nkey seed", "creds": "creds file"}


def _local(target: str) -> str:
    """`target` when it is a path of this panel (no open redirect to another site), else /."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target if "\\" not in target else "/"


def _form(
    request: Request, target: str, user: str = "", problem: str = "", status: int = 200
) -> Response:
    note = f'<p class="error-box" id="login-error">{escape(problem)}</p>' if problem else ""
    body = (
        '<section class="login"><h1>Log in to the bus</h1>'
        "<p>This bus wants NATS credentials. The panel connects as you with them, so you see and "
        "launch only what your NATS user may.</p>"
        f'{note}<form class="login" method="post" action="/login" enctype="{MULTIPART}">'
        f"{csrf_field(request)}"
        f'<input type="hidden" name="{NEXT_FIELD}" value="{escape(target)}">'
        '<label for="login-user">NATS user</label>'
        '<input id="login-user" name="user" autocomplete="username" required '
        f'value="{escape(user)}">'
        '<label for="login-password">Password</label>'
        '<input id="login-password" name="password" type="password" '
        'autocomplete="current-password">'
        '<details class="other-login"><summary>or an nkey seed, or a creds file</summary>'
        '<label for="login-seed">nkey seed (SU…)</label>'
        '<input id="login-seed" name="seed" type="password" autocomplete="off" spellcheck="false">'
        '<label for="login-creds">creds file</label>'
        '<input id="login-creds" name="creds" type="file" accept=".creds,text/plain">'
        '<small class="help">The panel connects with it and keeps it in its memory only, with '
        "the connection: never in a cookie, a file or a log.</small></details>"
        '<button type="submit" class="primary">Log in</button></form></section>'
    )
    return page(request, "Log in", body, status=status)


async def login_page(request: Request) -> Response:
    if web_of(request).sessions is None:
        return RedirectResponse("/", status_code=303)
    return _form(request, _local(request.query_params.get(NEXT_FIELD, "/")))


async def login(request: Request) -> Response:
    sessions = web_of(request).sessions
    form = await form_of(request)
    if form is None:
        return refused(request)
    if sessions is None:
        return RedirectResponse("/", status_code=303)
    target = _local(form.get(NEXT_FIELD, "/"))
    user = form.get("user", "").strip()
    creds, seed = form.get("creds", "").strip(), form.get("seed", "").strip()
    kind = "creds" if creds else "nkey" if seed else "password"
    try:
        secret = Secret.of(kind, creds or seed) if kind != "password" else None
        session = await sessions.login(user, form.get("password", ""), secret)
    except ConfigError as exc:
        return _form(request, target, user, str(exc), 400)
    except AuthError:
        return _form(request, target, user, f"NATS refused this user and {WHAT[kind]}.", 401)
    except ImportError:  # nats-py signs with the `nkeys` package, an extra
        return _form(request, target, user, "nkey logins need `pip install nkeys` here.", 501)
    except ConnectError as exc:
        return _form(request, target, user, f"The bus cannot be reached: {exc}", 503)
    if session is None:
        problem = "Too many browsers are logged in to this panel: try again later."
        return _form(request, target, user, problem, 503)
    await sessions.logout(request.cookies.get(COOKIE))  # a new id at each login, never reused
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="strict", path="/")
    return response


async def logout(request: Request) -> Response:
    sessions = web_of(request).sessions
    form = await form_of(request)
    if form is None:
        return refused(request)
    if sessions is not None:
        await sessions.logout(request.cookies.get(COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def needs_login(request: Request, exc: Exception) -> Response:
    """A request without a session on a secure bus: pages get the login form (back to the page
    after it), a live stream or an in-place post a 401 the page's script shows."""
    assert isinstance(exc, HTTPException)
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method == "GET" and not wanted.endswith("/events"):
        return _form(request, _local(wanted), status=401)
    response = HTMLResponse(
        f'<p class="error-box">Logged out: <a href="/login?next={quote(_local(wanted))}">'
        "log in</a> again.</p>",
        status_code=401,
    )
    secure(response)
    return response
