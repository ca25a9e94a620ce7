"""`kodo-bus launch | events | executions | cancel | answer | logs`: executions from a shell.

Every command is a thin face over the SDK (`Client`, `Flow`, `Execution`), run with
`asyncio.run` at the command boundary. Human output goes through rich; `--json` prints the wire
shapes (one JSON event per line when following) so scripts see what `nats sub` shows. Prompts
(missing inputs, answers to `tracer.ask`) only appear when stdin is a terminal and run in a
thread so the event loop keeps receiving events meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from .. import subjects
from ..bus import jetstream
from ..client import LOG_LEVELS, Client
from ..config import Credentials
from ..errors import ConfigError, FieldProblem, InputsInvalid, KodoError, problems_from
from ..execution_ref import Execution, status_of
from ..executions import last_seq
from ..files import upload_inputs
from ..models import EVENT_KINDS, TERMINAL_STATUSES, Event
from ..schema_model import model_from_schema
from . import watch
from .app import console, out
from .creds import with_credentials
from .federation_cmd import JsonOpt, JsonReplyOpt, NatsOpt, ViaOpt
from .prompts import ask_fields, in_thread, parse_pairs
from .render import EventRenderer, event_json, log_line, short_ids, status_text

T = TypeVar("T")

PairsOpt = Annotated[
    list[str] | None,
    typer.Option("--input", "-i", help="One input as key=value (repeatable; JSON for non-text)."),
]
ID_HELP = "Execution id, or a unique prefix of it (4 characters or more)."
EXIT_BY_STATUS = {"finished": 0, "error": 1, "cancelled": 3, "timeout": 3, "lost": 3}
INTERRUPTED = 130
INTERRUPTED_AT = {
    "asking": "cancelled: nothing was launched",
    "launching": "interrupted while launching: it may run ('kodo-bus executions' shows it)",
    "launched": "detached: the execution goes on ('kodo-bus cancel ID')",
}
LAUNCH_HELP = """Launch a flow and follow its execution.

Missing inputs are asked for on a terminal (with the schema's defaults and choices). While
following: markdown is rendered, progress is a live bar, logs are coloured, stdout/stderr dimmed,
questions of the flow are asked, the final value is pretty-printed. Ctrl-C detaches (the
execution goes on).

Exit codes: 0 finished · 1 error (the flow failed, or NATS unreachable) · 2 bad input or usage
(unknown flow, invalid inputs) · 3 cancelled, timed out or lost.
"""


def client_for(nats: list[str] | None, credentials: Credentials | None) -> Client:
    """A Client for the shared `--nats` and credentials options (the NATS user launches)."""
    user = credentials.user if credentials is not None else None
    return Client(nats or None, user=user, credentials=credentials)


def _run(
    nats: list[str] | None,
    credentials: Credentials | None,
    work: Callable[[Client], Awaitable[T]],
) -> T:
    """Connect a Client, run `work`, close; Ctrl-C leaves with code 130 and no traceback."""

    async def main() -> T:
        async with client_for(nats, credentials) as kb:
            return await work(kb)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        console.print("[dim]interrupted[/]")
        raise typer.Exit(INTERRUPTED) from None


@contextlib.asynccontextmanager
async def _closing(stream: AsyncIterator[Event]) -> AsyncIterator[AsyncIterator[Event]]:
    """Close an event generator on leaving, so its subscription ends even after `break`."""
    try:
        yield stream
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()


def _interactive() -> bool:
    return sys.stdin.isatty()


def _read_inputs(source: str | None) -> dict[str, Any]:
    if source is None:
        return {}
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        data = json.loads(text) if text.strip() else {}
    except OSError as exc:
        raise ConfigError(f"--inputs {source}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--inputs {source}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--inputs {source}: expected a JSON object")
    return data


def _checker(schema: dict[str, Any], name: str) -> Callable[[dict[str, Any]], list[FieldProblem]]:
    """Validate data against a schema with pydantic, as the node would."""
    model = model_from_schema(schema, name)

    def check(data: dict[str, Any]) -> list[FieldProblem]:
        if model is None:
            return []
        try:
            model.model_validate(data)
        except Exception as exc:
            return problems_from(exc)
        return []

    return check


async def _events_so_far(kb: Client, execution: str) -> int:
    """The seq of the last event of `execution` the stream holds right now."""
    return await last_seq(kb.js, execution)


async def _answer_lock(execution: Execution, lock: dict[str, Any]) -> None:
    """Ask the human on the terminal, send the answer; re-ask while the node refuses it."""
    schema = lock.get("schema") if isinstance(lock.get("schema"), dict) else {}
    assert isinstance(schema, dict)
    check = _checker(schema, "answer")
    given: dict[str, Any] = {}
    while True:
        data = await in_thread(ask_fields, schema, given, check, console)
        try:
            await execution.answer(data)
            return
        except InputsInvalid as exc:
            for problem in exc.problems:
                console.print(f"[red]{escape(problem.field)}: {escape(problem.message)}[/]")
            given = {}
        except KodoError as exc:
            console.print(f"[red]answer not taken: {escape(str(exc))}[/]")
            return


async def gather_inputs(
    schema: dict[str, Any],
    name: str,
    pairs: list[str] | None,
    source: str | None,
    interactive: bool,
) -> dict[str, Any]:
    """A launch's inputs: the `--inputs` file, then `-i` pairs, then (on a terminal) prompts
    for the rest — one function, so `launch` and `try` take inputs the same way."""
    data = {**_read_inputs(source), **parse_pairs(pairs or [], schema)}
    if interactive:
        data = await in_thread(ask_fields, schema, data, _checker(schema, name), console)
    return data


async def follow(execution: Execution, as_json: bool, interactive: bool) -> int:
    """Show every event until the terminal status; returns the documented exit code."""
    renderer = EventRenderer(out)
    status = "lost"
    final = False
    try:
        async with _closing(execution.events()) as events:
            async for event in events:
                if as_json:
                    print(event_json(event), flush=True)
                else:
                    renderer.render(event)
                if event.kind == "lock" and interactive and isinstance(event.data, dict):
                    await _answer_lock(execution, event.data)
                final = final or event.kind == "final"
                if (s := status_of(event)) in TERMINAL_STATUSES:
                    status = s or status
    finally:
        renderer.close()
    if status == "finished" and not final:  # repaired: its result was lost (`ResultLost`)
        status = "lost"
    return EXIT_BY_STATUS.get(status, 1)


@with_credentials
def launch(  # noqa: PLR0917 (typer options)
    flow: Annotated[str, typer.Argument(help="Flow name, or node/flow.")],
    pairs: PairsOpt = None,
    inputs: Annotated[
        str | None, typer.Option("--inputs", help="JSON file of inputs ('-': stdin).")
    ] = None,
    no_follow: Annotated[
        bool, typer.Option("--no-follow", help="Print the execution id and return at once.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds before the execution is stopped.")
    ] = None,
    via: ViaOpt = None,
    nats: NatsOpt = None,
    credentials: Credentials | None = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
    file_pairs: Annotated[
        list[str] | None,
        typer.Option(
            "--file", "-f", help="A file input as field=path, uploaded first (repeatable)."
        ),
    ] = None,
) -> None:
    interactive = _interactive() and inputs != "-"
    uploads = dict(_file_pair(p) for p in file_pairs or [])
    execution_id = secrets.token_hex(16)
    stage = "asking"
    """How far it got, for what a Ctrl-C means: nothing launched, maybe, or detached."""

    async def work(kb: Client) -> int:
        nonlocal stage
        target = await kb.flow(flow, via=via)
        js = kb._jetstream(await kb._bus_for(target.urls))  # the flow's bus holds its files
        refs = await upload_inputs(js, kb.user, execution_id, uploads)
        given = [*(pairs or []), *(f"{k}={json.dumps(v)}" for k, v in refs.items())]
        data = await gather_inputs(target.schema, target.name, given, inputs, interactive)
        stage = "launching"
        execution = await target.launch(data, timeout=timeout, execution_id=execution_id)
        stage = "launched"
        if as_json and no_follow:
            reply = {
                "execution": execution.id,
                "node": execution.node,
                "flow": execution.flow,
                "launcher": execution.launcher,
            }
            print(json.dumps(reply))
            return 0
        if no_follow or not as_json:
            print(execution.id, flush=True)
        if no_follow:
            return 0
        return await follow(execution, as_json, interactive)

    try:
        code = _run(nats, credentials, work)
    except typer.Exit as exc:
        if exc.exit_code == INTERRUPTED:
            console.print(f"[dim]{INTERRUPTED_AT[stage]}[/]")
        raise
    raise typer.Exit(code)


def _file_pair(pair: str) -> tuple[str, Path]:
    field, sep, path = pair.partition("=")
    if not sep or not field or not path:
        raise ConfigError(f"-f {pair!r}: expected field=path")
    if not Path(path).is_file():
        raise ConfigError(f"-f {pair!r}: no file {path}")
    return field, Path(path)


EVENTS_HELP = f"""Events of one execution, in order: what it said so far (`--follow`: until it
ends).

With `--all` instead of an id: every execution's events, one line each (`--json`: one JSON
event per line, the wire envelope; a burst is split into its events). `--all --follow` is
the `nats sub '{subjects.EVENTS_ALL}'` of kodo-bus: what is published from now on, until
Ctrl-C (exit 130).
`--all` alone prints the newest stored events and returns: `--last N` of them (default 100;
with `--follow`, N stored ones before the live ones, default none). `--flow`, `--node`,
`--kind` (repeatable) and `--launcher` filter (`--user` stays the NATS user, as on every
command); `--launcher NAME` reads only `{subjects.events_of_user("NAME")}`, which is what a
client-role user may read on a secure bus. Messages that do not decode are skipped and counted
in one warning line at the end.
"""
DEFAULT_LAST = 100


@with_credentials
def events(  # noqa: PLR0917 (typer options)
    execution: Annotated[str | None, typer.Argument(help=ID_HELP)] = None,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep going until the execution ends.")
    ] = False,
    kind: Annotated[
        list[str] | None, typer.Option("--kind", "-k", help="Only this kind (repeatable).")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every execution's events (instead of an id).")
    ] = False,
    flow: Annotated[
        list[str] | None, typer.Option("--flow", help="With --all: only this flow (repeatable).")
    ] = None,
    node: Annotated[
        list[str] | None, typer.Option("--node", help="With --all: only this node (repeatable).")
    ] = None,
    launcher: Annotated[
        str | None, typer.Option("--launcher", help="With --all: only this user's executions.")
    ] = None,
    last: Annotated[
        int | None,
        typer.Option(
            "--last",
            min=0,
            help=f"With --all: newest stored events shown [default: {DEFAULT_LAST}, 0 with "
            "--follow].",
        ),
    ] = None,
    nats: NatsOpt = None,
    credentials: Credentials | None = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    if all_:
        if execution is not None:
            raise ConfigError("give an execution id or --all, not both")
        _events_of_all(flow, node, kind, launcher, last, follow_, nats, credentials, as_json)
        return
    if execution is None:
        raise ConfigError("give an execution id (or a prefix of it), or --all for every execution")
    if flow or node or launcher is not None or last is not None:
        raise ConfigError("--flow, --node, --launcher and --last go with --all")
    kinds = set(kind or [])
    unknown = kinds - set(EVENT_KINDS)
    if unknown:
        raise ConfigError(f"--kind {', '.join(sorted(unknown))}: not an event kind")

    async def work(kb: Client) -> None:
        handle = kb.execution(await kb.resolve(execution))
        record = await handle.record()
        limit = None
        if not follow_ and record.status not in TERMINAL_STATUSES:
            limit = await _events_so_far(kb, handle.id)
        renderer = EventRenderer(out)
        try:
            async with _closing(handle.events()) as stream:
                async for event in stream:
                    if not kinds or event.kind in kinds:
                        if as_json:
                            print(event_json(event), flush=True)
                        else:
                            renderer.render(event)
                    if limit is not None and event.seq >= limit:
                        break
        finally:
            renderer.close()

    _run(nats, credentials, work)


def _events_of_all(  # noqa: PLR0917
    flows: list[str] | None,
    nodes: list[str] | None,
    kinds: list[str] | None,
    launcher: str | None,
    last: int | None,
    follow_: bool,
    nats: list[str] | None,
    credentials: Credentials | None,
    as_json: bool,
) -> None:
    """`events --all`: the stored events, and (`--follow`) the live ones (kodo_bus/cli/watch.py)."""
    filters = watch.Filters.of(flows, nodes, kinds, launcher)
    newest = last if last is not None else (0 if follow_ else DEFAULT_LAST)
    skipped = watch.Skipped()
    printer = watch.event_printer(out, as_json)
    shown = 0

    def emit(event: Event) -> None:
        nonlocal shown
        shown += 1
        printer(event)

    async def main() -> None:
        nc = await watch.connect_counting(watch.settings(nats, credentials), skipped)
        try:
            await watch.watch_events(
                nc, jetstream(nc), filters, follow=follow_, last=newest, emit=emit, skipped=skipped
            )
        finally:
            await nc.close()

    watch.run_until_interrupted(main, skipped, console)
    if not shown and not follow_:
        console.print("[dim]no stored events match on this bus[/]", highlight=False)


def _age(ts: float, now: float) -> str:
    seconds = max(0.0, now - ts)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


@with_credentials
def executions(  # noqa: PLR0917 (typer options)
    action: Annotated[str | None, typer.Argument(help="rm: delete the executions named.")] = None,
    ids: Annotated[list[str] | None, typer.Argument(help="With rm: " + ID_HELP)] = None,
    status: Annotated[
        list[str] | None, typer.Option("--status", "-s", help="Only this status (repeatable).")
    ] = None,
    flow: Annotated[str | None, typer.Option(help="Only executions of this flow.")] = None,
    node: Annotated[str | None, typer.Option(help="Only executions on this node.")] = None,
    launcher: Annotated[str | None, typer.Option(help="Only executions of this user.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows, newest first.")] = 50,
    nats: NatsOpt = None,
    credentials: Credentials | None = None,
    as_json: JsonOpt = False,
) -> None:
    """Executions on the bus, newest first (from the KODO_EXECUTIONS bucket); `executions rm
    ID...` deletes ended ones for good: files, events, record."""
    if action is not None:
        from .files_cmd import remove

        if action != "rm" or not ids:
            raise ConfigError(f"'executions {action}': the only action is 'rm ID...'")
        remove(ids, nats, credentials, as_json)
        return

    async def work(kb: Client) -> tuple[list[Any], dict[str, str]]:
        records = await kb.executions(
            status=status or None, flow=flow, node=node, launcher=launcher, limit=limit
        )
        if as_json:
            return records, {}
        # Unique among every execution of the launcher, as `kodo-bus events PREFIX` resolves.
        every = await kb.executions(launcher=launcher, limit=sys.maxsize)
        return records, short_ids(r.execution for r in [*every, *records])

    records, shown = _run(nats, credentials, work)
    if as_json:
        items = [r.model_dump(mode="json") for r in records]
        print(json.dumps({"total": len(items), "items": items}, indent=2))
        return
    now = time.time()
    table = Table(title=f"{len(records)} executions")
    for col in ("execution", "flow", "node", "launcher", "status", "age", "updated"):
        table.add_column(col)
    for r in records:
        table.add_row(
            shown.get(r.execution, r.execution),
            r.flow,
            r.node,
            r.launcher,
            status_text(r.status),
            _age(r.created, now),
            _age(r.updated, now),
        )
    out.print(table)


@with_credentials
def cancel(
    execution: Annotated[str, typer.Argument(help=ID_HELP)],
    nats: NatsOpt = None,
    credentials: Credentials | None = None,
    as_json: JsonReplyOpt = False,
) -> None:
    """Stop an execution; it ends `cancelled` within about two seconds."""

    async def work(kb: Client) -> str:
        handle = kb.execution(await kb.resolve(execution))
        await handle.cancel()
        return handle.id

    full = _run(nats, credentials, work)
    if as_json:
        print(json.dumps({"ok": True, "execution": full}))
    else:
        out.print(f"cancel requested for {full}", highlight=False)


async def _pending_lock(kb: Client, handle: Execution) -> dict[str, Any]:
    """The question an awaiting execution asked (its last `lock` event)."""
    limit = await _events_so_far(kb, handle.id)
    lock: dict[str, Any] = {}
    async with _closing(handle.events()) as stream:
        async for event in stream:
            if event.kind == "lock" and isinstance(event.data, dict):
                lock = event.data
            if event.seq >= limit:
                break
    return lock


@with_credentials
def answer(  # noqa: PLR0917 (typer options)
    execution: Annotated[str, typer.Argument(help=ID_HELP)],
    value: Annotated[
        str | None, typer.Argument(help="The answer as a JSON object ('-': stdin).")
    ] = None,
    pairs: PairsOpt = None,
    nats: NatsOpt = None,
    credentials: Credentials | None = None,
    as_json: JsonReplyOpt = False,
) -> None:
    """Answer the question an `awaiting` execution asked; without a value, prompt for it."""

    async def work(kb: Client) -> str:
        handle = kb.execution(await kb.resolve(execution))
        record = await handle.record()
        if record.status != "awaiting":
            raise ConfigError(
                f"execution {handle.id} is not awaiting an answer (it is {record.status})"
            )
        lock = await _pending_lock(kb, handle)
        schema = lock.get("schema") if isinstance(lock.get("schema"), dict) else {}
        assert isinstance(schema, dict)
        data: dict[str, Any] = {}
        if value is not None:
            data = _read_inputs(value) if value == "-" else _parse_json_object(value)
        data.update(parse_pairs(pairs or [], schema))
        if value is None and not pairs:
            if not _interactive():
                raise ConfigError("give the answer as a JSON argument or -i key=value")
            if lock.get("prompt"):
                console.print(f"[bold]? {escape(str(lock['prompt']))}[/]")
            data = await asyncio.to_thread(
                ask_fields, schema, data, _checker(schema, "answer"), console
            )
        try:
            await handle.answer(data)
        except InputsInvalid as exc:  # the node checks an answer as it checks inputs
            raise InputsInvalid(exc.problems, what="answer") from None
        return handle.id

    full = _run(nats, credentials, work)
    if as_json:
        print(json.dumps({"ok": True, "execution": full}))
    else:
        out.print(f"answer sent to {full}", highlight=False)


def _parse_json_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"answer: not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError("answer: expected a JSON object")
    return data


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """`30s`, `5m`, `2h`, `1d` ago, an ISO date-time, or epoch seconds → epoch seconds."""
    now = time.time() if now is None else now
    if m := _DURATION.match(text.strip()):
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: use 30s, 5m, 2h, 1d, an ISO date-time or epoch seconds"
        ) from None


@with_credentials
def logs(  # noqa: PLR0917 (typer options)
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep listening.")] = False,
    level: Annotated[str, typer.Option(help="Lowest level shown.")] = "debug",
    node: Annotated[str | None, typer.Option(help="Only logs from this node.")] = None,
    flow: Annotated[str | None, typer.Option(help="Only logs of this flow.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Start at: 30s, 5m, 2h, 1d ago, ISO time or epoch.")
    ] = None,
    nats: NatsOpt = None,
    credentials: Credentials | None = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    """Log events of every execution on the bus, oldest first (the central log)."""
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"--level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    start = parse_since(since) if since else None

    async def work(kb: Client) -> int:
        shown = 0
        stream = kb.logs(level=level, node=node, flow=flow, since=start, follow=follow_)
        async with _closing(stream) as entries:
            async for event in entries:
                shown += 1
                if as_json:
                    print(event_json(event), flush=True)
                else:
                    out.print(log_line(event, with_source=True), highlight=False)
        return shown

    if not _run(nats, credentials, work):
        console.print("[dim]no log events (yet) on this bus[/]", highlight=False)


def register(app: typer.Typer) -> None:
    app.command(help=LAUNCH_HELP)(launch)
    app.command(help=EVENTS_HELP)(events)
    app.command()(executions)
    app.command()(cancel)
    app.command()(answer)
    app.command()(logs)
