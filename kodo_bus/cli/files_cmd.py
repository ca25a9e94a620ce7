"""`kodo-bus files`: download what an execution handed back; `kodo-bus executions rm`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..client import Client
from ..config import Credentials
from .app import out
from .creds import with_credentials
from .exec_cmd import ID_HELP, _run
from .federation_cmd import JsonOpt, NatsOpt


@with_credentials
def files(  # noqa: PLR0917 (typer options)
    execution: Annotated[str, typer.Argument(help=ID_HELP)],
    directory: Annotated[Path, typer.Option("--out", "-o", help="Where to write them.")] = Path(),
    delete_after: Annotated[
        bool,
        typer.Option(
            "--delete-after-download",
            help="Then delete the execution (files, events, record): the results are yours now.",
        ),
    ] = False,
    nats: NatsOpt = None,
    credentials: Credentials | None = None,
    as_json: JsonOpt = False,
) -> None:
    """Download the files an execution handed back (once it has ended), each checked against
    its SHA-256; a file whose digest differs is not written."""

    async def work(kb: Client) -> tuple[str, list[tuple[str, int, str, Path]]]:
        handle = kb.execution(await kb.resolve(execution))
        refs = await handle.files()
        paths = await handle.download(directory)
        if delete_after:
            await handle.delete()
        return handle.id, [
            (r.filename, r.size, r.digest, p) for r, p in zip(refs, paths, strict=True)
        ]

    full, written = _run(nats, credentials, work)
    if as_json:
        items = [{"name": n, "size": s, "sha256": d, "path": str(p)} for n, s, d, p in written]
        print(json.dumps({"execution": full, "files": items, "deleted": delete_after}))
        return
    for _, size, digest, path in written:
        out.print(f"{path}  {size} bytes  sha256 {digest}", highlight=False)
    if not written:
        out.print(f"execution {full} handed back no files", highlight=False)
    if delete_after:
        out.print(f"deleted execution {full}", highlight=False)


def remove(
    ids: list[str], nats: list[str] | None, credentials: Credentials | None, as_json: bool
) -> None:
    """`kodo-bus executions rm ID...`: each ended execution's files, events and record."""

    async def work(kb: Client) -> list[str]:
        done = []
        for given in ids:
            handle = kb.execution(await kb.resolve(given))
            await handle.delete()
            done.append(handle.id)
        return done

    deleted = _run(nats, credentials, work)
    if as_json:
        print(json.dumps({"ok": True, "deleted": deleted}))
        return
    for full in deleted:
        out.print(f"deleted execution {full}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(files)
