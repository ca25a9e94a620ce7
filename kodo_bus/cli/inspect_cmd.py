"""`kodo-bus inspect live | view | record`: the control plane, decoded as text or JSON.

Catalogs, heartbeats, byes, registries' views and the stored views and records are msgpack,
which `nats sub` or `nats kv get` print as bytes; these commands decode them with the wire
models, so what a registry or a node sees can be read without writing code.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Annotated

import typer
from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from rich.table import Table

from .. import snapshot, subjects
from ..client import Client
from ..codec import decode
from ..config import Credentials
from ..errors import ExecutionNotFound, WireError
from ..models import ExecutionRecord, NodeEntry
from . import watch
from .app import console, out
from .creds import with_credentials
from .exec_cmd import ID_HELP, client_for
from .federation_cmd import NatsOpt

JsonLines = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
JsonDoc = Annotated[bool, typer.Option("--json", help="Print JSON.")]

inspect_app = typer.Typer(
    help="The control plane decoded: live announcements, a registry's view, a record.",
    no_args_is_help=True,
)


@inspect_app.command()
@with_credentials
def live(
    node: Annotated[
        list[str] | None, typer.Option("--node", help="Only this node's messages (repeatable).")
    ] = None,
    nats: NatsOpt = None,
    credentials: Credentials | None = None,
    as_json: JsonLines = False,
) -> None:
    """Catalogs, heartbeats and byes of nodes (`kodo.node.*.*`), registries' views and sync
    requests as they are published, decoded from msgpack, until Ctrl-C (exit 130).

    `--json`: one `{"subject", "kind", "message"}` object per line, `message` the decoded
    model. Messages that do not decode are skipped and counted in one warning line at the end.
    """
    nodes = set(node or [])
    skipped = watch.Skipped()

    async def on_msg(msg: Msg) -> None:
        try:
            kind, message = watch.decode_control(msg)
        except WireError as exc:
            skipped.bad(exc)
            return
        if nodes and watch.control_node(message) not in nodes:
            return
        if as_json:
            print(watch.control_json(msg.subject, kind, message), flush=True)
        else:
            line = watch.control_line(msg.subject, kind, message)
            out.print(line, highlight=False, soft_wrap=True)

    async def main() -> None:
        nc = await watch.connect_counting(watch.settings(nats, credentials), skipped)
        try:
            for subject in watch.CONTROL_SUBJECTS:
                await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=watch.LIVE_PENDING)
            await asyncio.Event().wait()  # until Ctrl-C cancels it
        finally:
            await nc.close()

    watch.run_until_interrupted(main, skipped, console)


@inspect_app.command()
@with_credentials
def view(
    registry: Annotated[
        str | None,
        typer.Argument(help="Registry (or provider) id; without it, the ones that keep a view."),
    ] = None,
    nats: NatsOpt = None,
    credentials: Credentials | None = None,
    as_json: JsonDoc = False,
) -> None:
    """The entries of a registry's view bucket (`KODO_VIEW_<id>`), decoded: the nodes it
    knows, as it will serve them after a restart."""

    async def main() -> list[NodeEntry] | list[str]:
        async with client_for(nats, credentials) as kb:
            if registry is None:
                return await watch.view_registries(kb.js)
            return await _view_entries(kb, registry)

    found = asyncio.run(main())
    if registry is None:
        names = [str(n) for n in found]
        if as_json:
            print(json.dumps({"total": len(names), "items": names}))
        elif names:
            out.print("\n".join(names), highlight=False)
        else:
            console.print("[dim]no registry keeps a view on this bus (yet)[/]")
        return
    entries = [e for e in found if isinstance(e, NodeEntry)]
    if as_json:
        items = [e.model_dump(mode="json", exclude_none=True) for e in entries]
        print(json.dumps({"registry": registry, "total": len(items), "items": items}, indent=2))
        return
    now = time.time()
    table = Table(title=f"view of {registry}: {len(entries)} nodes")
    for col in ("node", "status", "last seen", "flows", "replicas", "role", "org", "via"):
        table.add_column(col)
    for e in entries:
        seen = f"{max(0.0, now - e.last_seen):.0f}s ago" if e.last_seen else "-"
        c = e.catalog
        table.add_row(
            c.node,
            e.status,
            seen,
            str(len(c.flows)),
            str(e.replicas),
            c.role,
            c.organization,
            e.via,
        )
    out.print(table)


async def _view_entries(kb: Client, registry: str) -> list[NodeEntry]:
    await watch.check_registry(kb.js, registry)
    bucket = subjects.bucket_view(registry)
    entries: list[NodeEntry] = []
    keys = subjects.kv_subject(bucket, ">")
    async for msg in snapshot.current(kb.js, subjects.kv_stream(bucket), keys):
        if not msg.data:
            continue  # a deleted key
        try:
            entries.append(decode(msg.subject, msg.data, None, NodeEntry))
        except WireError as exc:
            console.print(f"[yellow]warning: {exc}[/]", highlight=False)
    entries.sort(key=lambda e: e.catalog.node)
    return entries


@inspect_app.command()
@with_credentials
def record(
    execution: Annotated[str, typer.Argument(help=ID_HELP)],
    nats: NatsOpt = None,
    credentials: Credentials | None = None,
    as_json: JsonDoc = False,
) -> None:
    """An execution's record as stored in `KODO_EXECUTIONS` (its key and revision too): the
    status there trails the events by design, `kodo-bus events ID` shows the live one."""

    async def main() -> tuple[str, int, ExecutionRecord]:
        async with client_for(nats, credentials) as kb:
            full = await kb.resolve(execution)
            key = subjects.record_key(kb.user, full)
            try:
                kv = await kb.js.key_value(subjects.BUCKET_EXECUTIONS)
                entry = await kv.get(key)
            except (BucketNotFoundError, KeyNotFoundError):
                entry = None
            if entry is None or not entry.value:
                raise ExecutionNotFound(
                    f"no record of execution {full!r} (of user {kb.user!r}) is stored"
                )
            where = f"{subjects.BUCKET_EXECUTIONS}.{key}"
            return key, int(entry.revision or 0), decode(where, entry.value, None, ExecutionRecord)

    key, revision, rec = asyncio.run(main())
    if as_json:
        print(json.dumps({"key": key, "revision": revision, "record": rec.model_dump(mode="json")}))
        return
    table = Table(title=f"record {key} (revision {revision})", show_header=False)
    for name, value in rec.model_dump().items():
        shown = value
        if name in ("created", "updated") and isinstance(value, float):
            shown = f"{value} ({dt.datetime.fromtimestamp(value):%Y-%m-%d %H:%M:%S})"
        table.add_row(name, "" if shown is None else str(shown))
    out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(inspect_app, name="inspect")
