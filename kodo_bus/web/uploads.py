"""Posted forms with files (`multipart/form-data`): read with a bound, never held in memory.

A launch form with a file input posts the file in the request body. The body is streamed through
python-multipart (starlette's parser), which spools each file to disk past 1 MB; every byte is
counted on the way in and the request is refused (413) past the panel's bound
(`config.WEB_UPLOAD_MAX`), also when the browser sent no length. Each file is then saved under
its own name in a directory of this request, since the SDK's upload (`Flow.launch(files=...)`)
takes paths and names the object after the file; the directory is removed after the launch.

Small forms posted as multipart (the login form, whose creds file is a file input) are read
into text instead (`read_fields`), under the same bound as any other form.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message, Receive

MULTIPART = "multipart/form-data"
FIELDS_MAX = 1000
"""Fields of one posted form at most (python-multipart's own bound)."""
FILES_MAX = 16
"""Files of one posted form at most."""
NAME_MAX = 200
"""Characters of a file's name at most (longer ones are cut, keeping the extension)."""
UPLOADS_AT_ONCE = 4
"""Posted forms with files being read or launched at once; one more is answered 503. Each may
put up to twice the upload bound on disk (python-multipart's spool, then the file under its own
name), so the panel's disk use is bounded too, not only each request's."""
_uploading: set[int] = set()
"""`id`s of the `Posted` forms counted against `UPLOADS_AT_ONCE` (one event loop: no lock)."""


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower() == MULTIPART


def _bounded(request: Request, limit: int) -> Request:
    """`request` whose body raises 413 once more than `limit` bytes came in (refused at once
    when its Content-Length already says so)."""
    try:
        told = int(request.headers.get("content-length", "0"))
    except ValueError:
        told = 0
    if told > limit:
        raise HTTPException(413, f"the form is larger than {limit} bytes")
    seen = 0
    receive: Receive = request.receive

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise HTTPException(413, f"the form is larger than {limit} bytes")
        return message

    return Request(request.scope, counted)


def safe_name(given: str) -> str:
    """A browser's file name as one path part (no directories, never empty, not too long)."""
    name = given.replace("\\", "/").rsplit("/", 1)[-1].strip().replace("\x00", "")
    if name in ("", ".", ".."):
        return "upload"
    if len(name) > NAME_MAX:
        stem, dot, ext = name.rpartition(".")
        keep = ext if dot and len(ext) < 16 else ""
        name = (stem if keep else name)[: NAME_MAX - len(keep) - 1] + (f".{keep}" if keep else "")
    return name


@dataclass
class Posted:
    """A posted form: its text fields, and its files saved on disk (field → path)."""

    form: dict[str, str]
    files: dict[str, Path] = field(default_factory=dict)
    where: Path | None = None

    async def remove(self) -> None:
        """Remove the saved files (after the launch uploaded them, or refused them)."""
        _uploading.discard(id(self))
        if self.where is not None:
            where, self.where = self.where, None
            await asyncio.to_thread(shutil.rmtree, where, True)


def _save(upload: UploadFile, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    upload.file.seek(0)
    with dest.open("wb") as out:
        shutil.copyfileobj(upload.file, out, 1024 * 1024)


async def read(request: Request, limit: int, file_fields: Collection[str]) -> Posted:
    """A multipart form whose files (of `file_fields` only, one each, a chosen file only) are
    saved on disk; raises 413 past `limit` bytes, 400 for a body that is not multipart, 503
    past `UPLOADS_AT_ONCE` (until `Posted.remove`)."""
    if len(_uploading) >= UPLOADS_AT_ONCE:
        raise HTTPException(503, "the panel is taking other uploads: retry in a moment")
    posted = Posted({})
    _uploading.add(id(posted))
    try:
        async with _bounded(request, limit).form(
            max_files=FILES_MAX, max_fields=FIELDS_MAX
        ) as form:
            for key, value in form.multi_items():
                if isinstance(value, str):
                    posted.form[key] = value
                elif key in file_fields and value.filename and key not in posted.files:
                    if posted.where is None:
                        posted.where = Path(tempfile.mkdtemp(prefix="kodo-web-upload-"))
                    dest = posted.where / str(len(posted.files)) / safe_name(value.filename)
                    await asyncio.to_thread(_save, value, dest)
                    posted.files[key] = dest
    except BaseException:
        await posted.remove()
        raise
    return posted


async def read_fields(request: Request, limit: int) -> dict[str, str]:
    """A small multipart form as text: its files' contents too (a creds file), as UTF-8."""
    form: dict[str, str] = {}
    async with _bounded(request, limit).form(max_files=FILES_MAX, max_fields=FIELDS_MAX) as got:
        for key, value in got.multi_items():
            if isinstance(value, str):
                form[key] = value
            elif value.filename:
                with contextlib.suppress(UnicodeDecodeError):
                    form[key] = (await value.read()).decode("utf-8")
    return form
