"""An execution's events as server-sent events, each rendered (and sanitized) on the server.

The SDK's follow (`Execution.events`: an ordered JetStream consumer) gives history then live
events in one sequence, so a page opened on a finished execution replays it, and one opened
mid-run catches up then goes on live. Each event becomes one SSE message whose `data` is JSON:
where it goes on the page (`target`), and HTML that is safe to insert — flow text is escaped,
markdown and html go through the allow-list sanitizer. The browser's script only places it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Callable
from html import escape
from typing import Any
from urllib.parse import quote

from ..execution_ref import Execution, status_of
from ..models import TERMINAL_STATUSES, Event
from . import forms
from .sanitize import clean_html, render_markdown

KEEPALIVE = 15.0
"""Seconds of silence after which a comment line is sent, so proxies and the browser keep the
stream open (and a gone browser is noticed)."""
QUEUE_MAX = 256
"""Rendered messages held for one slow browser at most; the follow waits beyond that."""
END = "end"


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def _text_of(data: Any) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, dict):
        for key in ("text", "line", "message"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return as_json(data)


def question_form(execution: str, lock: dict[str, Any], csrf_field: str) -> str:
    """The form of a `tracer.ask` question, generated from its schema, answered in place."""
    schema = lock.get("schema") if isinstance(lock.get("schema"), dict) else {}
    fields = forms.fields_of(schema or {})
    prompt = escape(str(lock.get("prompt") or "The flow asks:"))
    token = escape(str(lock.get("lock", "")))
    return (
        f'<form class="question inplace" method="post" action="/executions/{escape(execution)}'
        f'/answer" novalidate data-lock="{token}"><h3>{prompt}</h3>{csrf_field}'
        f'{forms.render(fields)}<button type="submit">Answer</button></form>'
    )


def file_item(execution: str, data: dict[str, Any]) -> str:
    """A `file` event as a list item: name, size, digest, and the link that downloads it
    through the panel (`downloads.py`, which checks the digest)."""
    filename = str(data.get("name", "")).rsplit("/", 1)[-1]
    size, digest = data.get("size"), str(data.get("digest", ""))
    href = f"/executions/{quote(execution, safe='')}/files/{quote(filename, safe='')}"
    shown = f"{size:,} bytes" if isinstance(size, int) else "? bytes"
    return (
        f'<li class="file" data-name="{escape(filename)}" data-digest="{escape(digest)}">'
        f'<a class="download" href="{escape(href)}" download="{escape(filename)}">'
        f'{escape(filename)}</a> <span class="size">{escape(shown)}</span> '
        f'<span class="mono digest" title="SHA-256 {escape(digest)}">sha256 '
        f"{escape(digest[:12])}…</span></li>"
    )


def render_event(event: Event, csrf_field: str) -> dict[str, Any]:
    """Where an event goes on the page and its safe HTML."""
    data = event.data
    kind = event.kind
    msg: dict[str, Any] = {"seq": event.seq, "kind": kind, "ts": event.ts}
    if kind == "status":
        msg |= {"target": "status", "status": status_of(event) or ""}
    elif kind == "markdown":
        msg |= {"target": "out", "html": f'<div class="md">{render_markdown(str(data))}</div>'}
    elif kind == "html":
        msg |= {"target": "out", "html": f'<div class="html">{clean_html(str(data))}</div>'}
    elif kind == "text":
        msg |= {"target": "out", "html": f'<pre class="text">{escape(str(data))}</pre>'}
    elif kind in ("result", "action"):
        body = escape(as_json(data))
        msg |= {"target": "out", "html": f'<pre class="json {kind}">{body}</pre>'}
    elif kind == "progress" and isinstance(data, dict):
        done, total = data.get("done") or 0, data.get("total")
        msg |= {
            "target": "progress",
            "done": done if isinstance(done, int | float) else 0,
            "total": total if isinstance(total, int | float) else None,
            "html": escape(str(data.get("message") or "")),
        }
    elif kind in ("log", "stdout", "stderr"):
        level = str(data.get("level", "info")) if isinstance(data, dict) else kind
        line = escape(_text_of(data).rstrip("\n"))
        msg |= {
            "target": "console",
            "html": f'<div class="line {escape(kind)} l-{escape(level)}">'
            f'<span class="k">{escape(level if kind == "log" else kind)}</span> {line}</div>',
        }
    elif kind == "lock" and isinstance(data, dict):
        msg |= {
            "target": "question",
            "lock": str(data.get("lock", "")),
            "html": question_form(event.execution, data, csrf_field),
        }
    elif kind == "answer":
        lock = data.get("lock", "") if isinstance(data, dict) else ""
        answer = data.get("data") if isinstance(data, dict) else data
        msg |= {
            "target": "answered",
            "lock": str(lock),
            "html": f'<pre class="json answer">answered: {escape(as_json(answer))}</pre>',
        }
    elif kind == "error":
        info = data if isinstance(data, dict) else {"message": data}
        trace = str(info.get("traceback") or "")
        details = (
            f"<details><summary>traceback</summary><pre>{escape(trace)}</pre></details>"
            if trace
            else ""
        )
        msg |= {
            "target": "error",
            "html": f'<div class="error-box"><strong class="etype">'
            f"{escape(str(info.get('type') or 'Error'))}</strong>: "
            f'<span class="emsg">{escape(str(info.get("message") or ""))}</span>{details}</div>',
        }
    elif kind == "final":
        msg |= {"target": "final", "html": f'<pre class="json">{escape(as_json(data))}</pre>'}
    elif kind == "file" and isinstance(data, dict):
        msg |= {"target": "files", "html": file_item(event.execution, data)}
    elif kind == "inputs":
        msg |= {"target": "inputs", "html": f'<pre class="json">{escape(as_json(data))}</pre>'}
    else:
        msg |= {"target": "none"}
    return msg


def sse(message: dict[str, Any], event: str = "message") -> bytes:
    ident = f"id: {message['seq']}\n" if "seq" in message else ""
    name = f"event: {event}\n" if event != "message" else ""
    return f"{ident}{name}data: {json.dumps(message, ensure_ascii=False)}\n\n".encode()


async def stream(
    execution: Execution,
    csrf_field: str,
    after: int,
    children: Callable[[], Any],
) -> AsyncGenerator[bytes]:
    """SSE bytes of an execution: its events from the start (those up to `after`, which the
    browser already has, skipped), a `children` message once it ended, then `end`.

    The follow runs in a task feeding a bounded queue, so keep-alive comments can be sent while
    it waits, without ever cancelling the follow mid-read; the task is cancelled and awaited
    when the browser goes away (the follow then deletes its consumer)."""
    queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue(QUEUE_MAX)

    async def pump() -> None:
        try:
            events = execution.events()
            async with contextlib.aclosing(events):
                async for event in events:
                    if event.seq > after:
                        await queue.put(render_event(event, csrf_field))
                    if status_of(event) in TERMINAL_STATUSES:
                        break
            await queue.put(await children())
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # told to the page, which shows it
            await queue.put(exc)

    task = asyncio.create_task(pump(), name=f"web-follow-{execution.id}")
    try:
        yield b"retry: 2000\n\n"
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE):
                    item = await queue.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is None:
                yield sse({"target": END}, END)
                return
            if isinstance(item, BaseException):
                text = escape(f"{type(item).__name__}: {item}")
                yield sse({"target": "failure", "html": text}, END)
                return
            yield sse(item)
    finally:
        await stop(task)


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel and await a helper task; a cancellation of the caller itself goes on."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
