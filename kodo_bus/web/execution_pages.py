"""One execution: its live page, its server-sent events, and the two things a viewer does to
it — answer its question, cancel it — each a CSRF-checked POST through the SDK."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from html import escape
from typing import Any
from urllib.parse import quote

import nats.js.errors
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from .. import subjects
from ..codec import decode_events
from ..errors import ExecutionNotFound, InputsInvalid, KodoError, RemoteError, WireError
from ..execution_ref import Execution
from ..models import TERMINAL_STATUSES
from . import forms, live
from .context import form_of, panel_of, refused
from .layout import badge, csrf_field, page, secure
from .pages import trouble

TREE_DEPTH = 4
TREE_MAX = 50
"""Executions shown in a chained flow's tree at most (deeper or further ones are not listed)."""
FETCH_HEADER = "x-panel-fetch"
"""Set by the page's script on in-place posts: answer with a fragment, not a redirect."""


async def handle(request: Request) -> Execution:
    """The execution the path names (a unique prefix of its id will do, as in the CLI)."""
    client = panel_of(request).client
    given = request.path_params["execution"]
    full = await client.resolve(given) if len(given) < 32 else given
    return client.execution(full)


async def execution_page(request: Request) -> Response:
    try:
        ex = await handle(request)
        record = await ex.record()
    except ExecutionNotFound:
        return not_found(request)
    except KodoError as exc:
        return trouble(request, "Execution", exc, "/executions")
    ident = escape(ex.id)
    parent = (
        f' · child of <a href="/executions/{escape(record.parent)}">{escape(record.parent[:12])}'
        "</a>"
        if record.parent
        else ""
    )
    ended = record.status in TERMINAL_STATUSES
    cancel = (
        f'<form class="cancel inplace" method="post" action="/executions/{ident}/cancel">'
        f'{csrf_field(request)}<button type="submit" class="danger">Cancel</button></form>'
    )
    body = f"""
<section class="execution" data-events="/executions/{ident}/events" data-id="{ident}">
<h1>{escape(record.flow)} <span id="status">{badge(record.status)}</span></h1>
<p class="meta"><span class="mono">{ident}</span> · node {escape(record.node)}{parent}</p>
{"" if ended else cancel}
<div id="progress" hidden><progress max="1" value="0"></progress> <span class="pmsg"></span></div>
<details id="inputs-box"><summary>Inputs</summary><div id="inputs"></div></details>
<div id="question"></div>
<div id="out" aria-live="polite"></div>
<section id="files-box" hidden><h2>Files</h2><ul id="files" class="files"></ul></section>
<div id="error"></div>
<section id="final-box" hidden><h2>Result</h2><div id="final"></div></section>
<details id="console" class="console"><summary>Console <span class="count">0</span></summary>
<div class="lines"></div></details>
<section id="children-box" hidden><h2>Next flows</h2><div id="children"></div></section>
<p class="conn" id="conn">connecting…</p>
</section>"""
    return page(request, f"{record.flow} {ex.id[:8]}", body, active="/executions")


def not_found(request: Request) -> Response:
    """An id that is nobody's, or someone else's: the same answer, since this user's connection
    cannot tell them apart (NATS lets it read its own executions only)."""
    user = escape(panel_of(request).user)
    given = escape(request.path_params["execution"])
    body = (
        '<h1>Execution not found</h1><p class="error-box" id="not-found">'
        f'No execution <span class="mono">{given}</span> of user <strong>{user}</strong>: it does '
        "not exist, or it is another user's, which this user may not see.</p>"
        '<p><a href="/executions">Your executions</a></p>'
    )
    return page(request, "Execution not found", body, status=404, active="/executions")


async def tree_html(ex: Execution, depth: int = 0, budget: list[int] | None = None) -> str:
    """The executions this one launched, and theirs, as nested lists of links."""
    budget = budget if budget is not None else [TREE_MAX]
    if depth >= TREE_DEPTH or budget[0] <= 0:
        return ""
    kids = await ex.children()
    items = []
    for kid in kids[: budget[0]]:
        budget[0] -= 1
        status: str = "unknown"
        with contextlib.suppress(KodoError):
            status = (await kid.record()).status
        below = await tree_html(kid, depth + 1, budget)
        items.append(
            f'<li><a href="/executions/{escape(kid.id)}">{escape(kid.flow)}</a> '
            f'<span class="mono">{escape(kid.id[:12])}</span> {badge(status)}{below}</li>'
        )
    return f'<ul class="tree">{"".join(items)}</ul>' if items else ""


async def events(request: Request) -> Response:
    try:
        ex = await handle(request)
        await ex.record()  # an id that is not this user's is a 404 here, not a stream that fails
    except KodoError as exc:
        return HTMLResponse(escape(str(exc)), status_code=404)
    try:
        after = int(request.headers.get("last-event-id", "0"))
    except ValueError:
        after = 0
    field = csrf_field(request)
    session = panel_of(request).session

    async def children() -> dict[str, Any]:
        return {"target": "children", "html": await tree_html(ex)}

    async def body() -> AsyncIterator[bytes]:
        with session.streaming() if session else contextlib.nullcontext():
            stream = live.stream(ex, field, after, children)
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    yield chunk

    response = StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    return response


def _fragment(html: str, status: int = 200) -> HTMLResponse:
    response = HTMLResponse(html, status_code=status)
    secure(response)
    return response


async def _open_question(request: Request, ex: Execution) -> dict[str, Any]:
    """The last question (`lock` event) the execution asked ({} when none)."""
    client = panel_of(request).client
    subject = subjects.events(ex.launcher or client.user, ex.id, "lock")
    js = client.js
    try:
        msg = await js.get_last_msg(subjects.STREAM_EVENTS, subject, direct=True)
    except nats.js.errors.NotFoundError:
        return {}
    try:
        found = decode_events(msg.subject or "", msg.data or b"", msg.headers)
    except WireError:
        return {}
    data = found[-1].data if found else None
    return data if isinstance(data, dict) else {}


async def answer(request: Request) -> Response:
    form = await form_of(request)
    if form is None:
        return refused(request)
    in_place = request.headers.get(FETCH_HEADER) == "1"
    try:
        ex = await handle(request)
        await ex.record()
        lock = await _open_question(request, ex)
    except KodoError as exc:
        return _fragment(f'<p class="error-box">{escape(str(exc))}</p>', 404)
    schema = lock.get("schema") if isinstance(lock.get("schema"), dict) else {}
    fields = forms.fields_of(schema or {})
    data = forms.parse(fields, form)
    try:
        await ex.answer(data)
    except InputsInvalid as exc:
        placed, rest = forms.problems_by_field(fields, exc.problems)
        values = {k: v for k, v in form.items() if k.startswith(forms.PREFIX)}
        top = "".join(f'<p class="field-error form-error">{escape(m)}</p>' for m in rest)
        html = (
            f'<form class="question inplace" method="post" action="/executions/'
            f'{escape(ex.id)}/answer" novalidate data-lock="{escape(str(lock.get("lock", "")))}">'
            f"<h3>{escape(str(lock.get('prompt') or 'The flow asks:'))}</h3>"
            f"{csrf_field(request)}{top}{forms.render(fields, values, placed)}"
            '<button type="submit">Answer</button></form>'
        )
        return _fragment(html, 422) if in_place else page(request, "Answer", html, status=422)
    except RemoteError as exc:
        return _fragment(f'<p class="error-box">answer not taken: {escape(str(exc))}</p>', 409)
    except KodoError as exc:
        return _fragment(f'<p class="error-box">{escape(str(exc))}</p>', 502)
    if in_place:
        return _fragment('<p class="sent">Answer sent.</p>')
    return RedirectResponse(f"/executions/{quote(ex.id, safe='')}", status_code=303)


async def cancel(request: Request) -> Response:
    form = await form_of(request)
    if form is None:
        return refused(request)
    try:
        ex = await handle(request)
        await ex.cancel()
    except RemoteError as exc:
        return _fragment(f'<p class="error-box">not cancelled: {escape(str(exc))}</p>', 409)
    except KodoError as exc:
        return _fragment(f'<p class="error-box">{escape(str(exc))}</p>', 502)
    if request.headers.get(FETCH_HEADER) == "1":
        return _fragment('<p class="sent">Cancel requested.</p>')
    return RedirectResponse(f"/executions/{quote(ex.id, safe='')}", status_code=303)
