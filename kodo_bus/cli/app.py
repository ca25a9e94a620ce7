"""The typer application object and the state its global options set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup
from typer.models import DefaultPlaceholder

from ..version import __version__

HELP = f"""kodo-bus {__version__} — a federation of agentic flows over NATS, run on Ray.

Exit codes, the same for every command: 0 success · 1 error (service unreachable, execution
failed) · 2 bad input, usage or config (an unknown flow, node or execution id included) · 3
execution cancelled, timed out or lost · 130 interrupted (Ctrl-C).

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


class _Flags:
    """A flag's help without a type (`--json`, not `--json <bool>`), as README writes it."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # typer shows the metavar in place of the type
        return params


class Command(_Flags, TyperCommand):
    """Every `kodo-bus` command (set by `use_house_style`): flags without a type, and arguments
    in the usage line as `FLOW` or `[EXECUTION]` (typer's own reads `{flow}`)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class Group(_Flags, TyperGroup):
    """`kodo-bus` itself and its groups of commands (`auth`, `inspect`)."""


def use_house_style(typer_app: typer.Typer) -> None:
    """Give every command and group registered on `typer_app` (recursively) the help above."""

    def unset(cls: Any, default: type) -> bool:
        return cls is None or cls is default or isinstance(cls, DefaultPlaceholder)

    for command in typer_app.registered_commands:
        if unset(command.cls, TyperCommand):
            command.cls = Command
    for group in typer_app.registered_groups:
        if unset(group.cls, TyperGroup):
            group.cls = Group
        if group.typer_instance is not None:
            if unset(group.typer_instance.info.cls, TyperGroup):
                group.typer_instance.info.cls = Group
            use_house_style(group.typer_instance)


app = typer.Typer(
    cls=Group,
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
