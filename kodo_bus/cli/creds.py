"""Credentials options shared by every command: `--user/--password`, `--creds`, `--nkey`, `--tls-*`.

`@with_credentials` adds the seven options (each also read from its `KODO_*` variable) to a
command and hands the command one `Credentials` in its `credentials` parameter, so each command
declares nothing and they all spell the options the same way. Any command module can use it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..config import Credentials

F = TypeVar("F", bound=Callable[..., Any])

_PANEL = "Credentials"
_OPTIONS: dict[str, tuple[type, typer.models.OptionInfo]] = {
    "user": (
        str,
        typer.Option(
            "--user",
            envvar="KODO_USER",
            help="NATS user name (with auth also the launcher identity).",
            rich_help_panel=_PANEL,
        ),
    ),
    "password": (
        str,
        typer.Option(
            "--password", envvar="KODO_PASSWORD", help="NATS password.", rich_help_panel=_PANEL
        ),
    ),
    "creds": (
        Path,
        typer.Option(
            "--creds", envvar="KODO_CREDS", help="NATS .creds file (JWT).", rich_help_panel=_PANEL
        ),
    ),
    "nkey": (
        Path,
        typer.Option(
            "--nkey", envvar="KODO_NKEY", help="File with an nkey seed.", rich_help_panel=_PANEL
        ),
    ),
    "tls_cert": (
        Path,
        typer.Option(
            "--tls-cert",
            envvar="KODO_TLS_CERT",
            help="TLS client certificate.",
            rich_help_panel=_PANEL,
        ),
    ),
    "tls_key": (
        Path,
        typer.Option(
            "--tls-key",
            envvar="KODO_TLS_KEY",
            help="Key of the TLS client certificate.",
            rich_help_panel=_PANEL,
        ),
    ),
    "tls_ca": (
        Path,
        typer.Option(
            "--tls-ca",
            envvar="KODO_TLS_CA",
            help="CA that signed the server.",
            rich_help_panel=_PANEL,
        ),
    ),
}


def build(values: dict[str, Any]) -> Credentials | None:
    """Credentials from option values; None when none was given (keep what a config says)."""
    given = {k: v for k, v in values.items() if v is not None}
    return Credentials.parse(given, "credentials options") if given else None


def with_credentials(command: F) -> F:
    """Add the credentials options to a typer command taking `credentials: Credentials | None`."""
    signature = inspect.signature(command, eval_str=True)
    params = [p for p in signature.parameters.values() if p.name != "credentials"]
    annotations = {k: v for k, v in command.__annotations__.items() if k != "credentials"}
    for name, (kind, option) in _OPTIONS.items():
        annotation = Annotated[kind | None, option]  # type: ignore[valid-type]
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
            )
        )
        annotations[name] = annotation

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name, None) for name in _OPTIONS}
        return command(*args, credentials=build(values), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = annotations
    return wrapper  # type: ignore[return-value]
