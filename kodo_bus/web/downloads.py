"""A file an execution handed out (`tracer.file`), streamed from the Object Store to the browser.

The reference comes from the execution's own `file` events (read as this browser's NATS user,
so only its own executions' files are found), never from the URL: the URL names the file, the
event says which object, its size and its SHA-256. The chunks are read one at a time (a direct
get each, as `files.download` does: one chunk in memory) and hashed on the way; the last chunk
is held back until the digest is checked, so a file that does not match its digest never
reaches the browser whole — the connection is cut instead, and the download fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

import nats.js.errors
from nats.js.client import JetStreamContext
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse

from .. import files, subjects
from ..codec import decode_events
from ..errors import FileDigestMismatch, KodoError, WireError
from ..models import File
from .execution_pages import handle
from .layout import secure

log = logging.getLogger(__name__)
FILE_EVENTS_MAX = 10_000
"""`file` events of one execution read at most to find a name."""


async def file_refs(js: JetStreamContext, launcher: str, execution: str) -> list[File]:
    """The files of an execution's `file` events so far, the last version of each name; read
    from the stored events (direct gets by subject), so a running execution's are found too."""
    subject = subjects.events(launcher, execution, "file")
    found: dict[str, File] = {}
    seq = 1
    for _ in range(FILE_EVENTS_MAX):
        try:
            msg = await js.get_msg(
                subjects.STREAM_EVENTS, seq=seq, subject=subject, next=True, direct=True
            )
        except nats.js.errors.NotFoundError:
            break
        seq = (msg.seq or seq) + 1
        try:
            events = decode_events(msg.subject or "", msg.data or b"", msg.headers)
        except WireError:
            continue
        for event in events:
            try:
                ref = File.model_validate(event.data)
            except ValidationError:
                continue
            if not ref.belongs_to(launcher, execution):
                continue  # a flow naming someone else's object: never streamed to a viewer
            found.pop(ref.filename, None)
            found[ref.filename] = ref
    return list(found.values())


async def chunks(js: JetStreamContext, ref: File) -> AsyncIterator[bytes]:
    """`ref`'s content, chunk by chunk; the last one is held back until the whole is checked
    (`FileDigestMismatch` instead), so a browser never gets a wrong file whole."""
    sha = hashlib.sha256()
    size = 0
    held = b""
    async with contextlib.aclosing(files.chunks(js, ref)) as content:
        async for data in content:
            sha.update(data)
            size += len(data)
            if held:
                yield held
            held = data
    files.check_digest(ref, size, sha.hexdigest())
    if held:
        yield held


def _missing(text: str, status: int = 404) -> Response:
    response = HTMLResponse(f'<p class="error-box">{text}</p>', status_code=status)
    secure(response)
    return response


async def download(request: Request) -> Response:
    name = request.path_params["name"]
    try:
        ex = await handle(request)
        record = await ex.record()
        js = ex._js
        refs = await file_refs(js, record.launcher, ex.id)
    except KodoError as exc:
        return _missing(str(exc))
    ref = next((r for r in refs if r.filename == name), None)
    if ref is None:
        return _missing(f"execution {ex.id} handed out no file {name}")
    try:
        body = chunks(js, ref)
        first = await anext(body, b"")  # a missing object is a 404, not a cut stream
    except (nats.js.errors.NotFoundError, KodoError) as exc:
        return _missing(f"{name}: {exc or 'expired, or deleted'}", 410)

    async def rest() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in body:
                yield chunk
        except FileDigestMismatch as exc:
            log.error("download cut: %s", exc)
            raise

    disposition = f"attachment; filename*=UTF-8''{quote(name, safe='')}"
    return StreamingResponse(
        rest(),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(ref.size),
            "Content-Disposition": disposition,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )
