"""The `kodo-bus` command line: one typer app, one module per group of commands.

`main()` is the console-script entry point. It turns every `KodoError` into one red line with a
hint naming the next command to run, and an exit code, the same for every command (the table is
in `kodo-bus --help` and README): 0 success; 1 an error (service unreachable, execution failed);
2 usage, input and config mistakes, an unknown or ambiguous flow, node or execution id, a server
that cannot start with the setup given; 3 an execution cancelled, timed out or lost; 130
interrupted (Ctrl-C). `--debug` shows the traceback too, and is offered only where it could help.
"""

from __future__ import annotations

import importlib
import sys

from rich.markup import escape

from ..errors import (
    AmbiguousExecution,
    AmbiguousFlow,
    ConfigError,
    ConnectError,
    ExecutionCancelled,
    ExecutionError,
    ExecutionLost,
    ExecutionNotFound,
    ExecutionTimeout,
    FlowNotFound,
    InputsInvalid,
    KodoError,
    KodoTimeout,
    LaunchUnanswered,
    NoResponders,
    RemoteError,
    ServerError,
    ServiceNotFound,
    StorageTimeout,
)
from .app import app, console, state, use_house_style

__all__ = ["app", "main"]

COMMANDS = (
    "server_cmd",
    "run_cmd",
    "federation_cmd",
    "exec_cmd",
    "files_cmd",
    "dashboard_cmd",
    "inspect_cmd",
    "bench_cmd",
    "auth_cmd",
    "try_cmd",
    "web_cmd",
)
"""The modules of the commands, registered in this order (`kodo-bus --help` lists them so)."""
SERVICES = {"run": "run_cmd", "web": "web_cmd", "up": "server_cmd"}
"""The long-lived commands of a `kodo-bus up` stack: `up` itself and the `python -m kodo_bus
run` / `web` processes it starts. Each registers its own module alone: the other commands'
imports (rich's markdown, pygments, the SDK's faces...) cost each such process 5-10 MB PSS for
nothing (issue 18). `--help` of such a command is unchanged; `kodo-bus --help` lists them all."""


def _modules(argv: list[str]) -> tuple[str, ...]:
    """Every command module, or only a service's when this process is `kodo-bus <service>` or
    `python -m kodo_bus <service>` (anything else importing this module gets them all)."""
    program = argv[0].replace("\\", "/") if argv else ""
    ours = program.endswith(("/kodo-bus", "kodo_bus/__main__.py")) or program == "kodo-bus"
    if ours and len(argv) > 1 and argv[1] in SERVICES:
        return (SERVICES[argv[1]],)
    return COMMANDS


for _name in _modules(sys.argv):
    importlib.import_module(f"{__name__}.{_name}").register(app)
use_house_style(app)


def exit_code_for(exc: KodoError) -> int:
    """The documented exit code of an error (see `kodo-bus --help`)."""
    if isinstance(exc, ConfigError | InputsInvalid | FlowNotFound | AmbiguousFlow):
        return 2
    if isinstance(exc, ExecutionNotFound | AmbiguousExecution | ServiceNotFound | ServerError):
        return 2
    if isinstance(exc, ExecutionCancelled | ExecutionTimeout | ExecutionLost):
        return 3
    return 1


_NO_TRACEBACK = (
    ConfigError,
    InputsInvalid,
    FlowNotFound,
    AmbiguousFlow,
    ExecutionNotFound,
    AmbiguousExecution,
    ExecutionError,
    ConnectError,
    NoResponders,
    RemoteError,
    ServerError,
    StorageTimeout,
)
"""Errors whose traceback tells a user nothing the message does not: their input, a state of
the bus, or a service's answer (whose traceback, if any, is the service's)."""


def _command(argv: list[str]) -> str:
    """The sub-command being run (for hints), or '' when none is named."""
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    return next((a for a in argv if a in names), "")


def hint_for(exc: KodoError, argv: list[str]) -> str | None:
    """The next command to run after `exc` (None: the message already says it)."""
    command = _command(argv)
    if isinstance(exc, AmbiguousExecution):
        return "give more characters of the id ('kodo-bus executions' lists yours)"
    if isinstance(exc, ExecutionNotFound):
        return "'kodo-bus executions' lists the executions you launched"
    if isinstance(exc, FlowNotFound | AmbiguousFlow):
        return "'kodo-bus flows' lists the flows on the bus (name one as node/flow)"
    if isinstance(exc, InputsInvalid) and exc.what == "answer":
        return "on a terminal, 'kodo-bus answer ID' alone asks for each field with its rules"
    if isinstance(exc, InputsInvalid):
        return "on a terminal, 'kodo-bus launch FLOW' asks for each input with its rules"
    if isinstance(exc, ServiceNotFound):
        return "'kodo-bus nodes' lists the services of this bus and their ids"
    if isinstance(exc, ConfigError):
        return f"'kodo-bus {command} --help' shows its options" if command else None
    if isinstance(exc, ExecutionError):
        return f"'kodo-bus events {exc.execution}' shows what it did"
    if isinstance(exc, NoResponders):
        return "'kodo-bus nodes' shows what runs on the bus; start a node with 'kodo-bus run'"
    if isinstance(exc, RemoteError) and exc.kind in ("not_found", "closed"):
        return "'kodo-bus executions' shows the state of your executions"
    if isinstance(exc, LaunchUnanswered):
        return f"'kodo-bus events {exc.execution}' shows whether it started"
    if isinstance(exc, StorageTimeout):
        return None  # the message says what to look at
    if isinstance(exc, KodoTimeout):
        return "'kodo-bus nodes' shows which services answer"
    return None


def main() -> None:
    """Entry point of the `kodo-bus` console script."""
    try:
        app()
    except KodoError as exc:
        if state.debug:
            console.print_exception()
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        hint = hint_for(exc, sys.argv[1:])
        if hint:
            console.print(f"[dim]{escape(hint)}[/]", highlight=False, soft_wrap=True)
        if not state.debug and not isinstance(exc, _NO_TRACEBACK):
            console.print("[dim]run with --debug for the traceback[/]", highlight=False)
        sys.exit(exit_code_for(exc))
