"""The typer application object and the state its global options set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console

from ..version import __version__

HELP = f"""kodo-bus {__version__} — a federation of agentic flows over NATS, run on Ray.

Exit codes: 0 success · 1 error (service unreachable, execution failed) · 2 bad input, usage or
config (an unknown flow or execution id included) · 3 execution cancelled, timed out or lost.

Execution ids: any unique prefix of 4 characters or more will do, as tables print them.
"""


@dataclass
class State:
    """Global options, set once by the callback before any command runs."""

    debug: bool = False


state = State()
console = Console(stderr=True)
"""Diagnostics go to stderr so that stdout stays clean for --json output."""
out = Console()

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    state.debug = debug
