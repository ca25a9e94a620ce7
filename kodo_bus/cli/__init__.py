"""The `kodo-bus` command line: one typer app, one module per group of commands.

`main()` is the console-script entry point. It turns every `KodoError` into one red line with a
hint and an exit code (2 for usage, input and config mistakes; 3 for an execution cancelled,
timed out or lost; 1 otherwise); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys

from rich.markup import escape

from ..errors import (
    AmbiguousFlow,
    AuthError,
    ConfigError,
    ExecutionCancelled,
    ExecutionLost,
    ExecutionTimeout,
    FlowNotFound,
    InputsInvalid,
    KodoError,
)
from . import auth_cmd, bench_cmd, dashboard_cmd, exec_cmd, federation_cmd, run_cmd, server_cmd
from .app import app, console, state

__all__ = ["app", "main"]

server_cmd.register(app)
run_cmd.register(app)
federation_cmd.register(app)
exec_cmd.register(app)
dashboard_cmd.register(app)
bench_cmd.register(app)
auth_cmd.register(app)


def exit_code_for(exc: KodoError) -> int:
    """The documented exit code of an error (see `kodo-bus --help`)."""
    if isinstance(exc, ConfigError | InputsInvalid | FlowNotFound | AmbiguousFlow):
        return 2
    if isinstance(exc, ExecutionCancelled | ExecutionTimeout | ExecutionLost):
        return 3
    return 1


def main() -> None:
    """Entry point of the `kodo-bus` console script."""
    try:
        app()
    except KodoError as exc:
        if state.debug:
            console.print_exception()
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        if not state.debug and not isinstance(exc, AuthError):  # auth failure: one line
            console.print("[dim]run with --debug for the traceback[/]", highlight=False)
        sys.exit(exit_code_for(exc))
