"""`kodo-bus auth init | add-user | remove-user | users`: the secure profile's users and config.

A generated password is printed once, when it is made, and stored nowhere but as a bcrypt hash:
losing it means `add-user` again (which replaces the hash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..auth import AUTH_ROLES, UserStore
from .app import console, out

auth_app = typer.Typer(help="Users, roles and the nats-server config of the secure profile.")

DirOpt = Annotated[
    Path,
    typer.Option("--dir", help="Profile directory (users.yaml + nats-server.conf)."),
]
DEFAULT_DIR = Path("deploy/secure")


def _show_secret(name: str, password: str | None) -> None:
    if password is not None:
        console.print(f"password of [bold]{name}[/] (shown once, store it now):", highlight=False)
        print(password)


@auth_app.command("init")
def init(  # noqa: PLR0917 (typer options)
    directory: DirOpt = DEFAULT_DIR,
    admin: Annotated[str, typer.Option(help="Name of the first admin user.")] = "admin",
    host: Annotated[str, typer.Option(help="Address clients connect to.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Client port.")] = 4222,
    http: Annotated[str, typer.Option(help="Monitoring address ('' for none).")] = "127.0.0.1:8222",
    force: Annotated[
        bool, typer.Option("--force", help="Start over: drop existing users.")
    ] = False,
) -> None:
    """Create a secure profile with one admin user; prints the admin password once."""
    store = UserStore(directory)
    if store.users_file.exists() and not force:
        raise typer.BadParameter(
            f"{store.users_file} exists — add users with 'kodo-bus auth add-user' or use --force",
            param_hint="--dir",
        )
    if force:
        store.users_file.unlink(missing_ok=True)
    store.save([], host=host, port=port, http=http or None)
    _show_secret(admin, store.add(admin, "admin"))
    console.print(f"wrote {store.conf_file} and {store.users_file}", highlight=False)


@auth_app.command("add-user")
def add_user(
    name: Annotated[str, typer.Argument(help="User name (a node or registry: its service id).")],
    role: Annotated[str, typer.Option(help=" | ".join(AUTH_ROLES))] = "client",
    directory: DirOpt = DEFAULT_DIR,
    nkey: Annotated[
        str | None, typer.Option(help="Public nkey (U...) instead of a password.")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
) -> None:
    """Add or replace a user; a generated password is printed once."""
    if role not in AUTH_ROLES:
        raise typer.BadParameter(f"must be one of {', '.join(AUTH_ROLES)}", param_hint="--role")
    password = input().strip() if password_stdin else None
    generated = UserStore(directory).add(name, role, password=password, nkey=nkey)
    _show_secret(name, generated)
    console.print(f"{name}: {role} — config rendered again; reload nats-server", highlight=False)


@auth_app.command("remove-user")
def remove_user(
    name: Annotated[str, typer.Argument(help="User name to remove.")],
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """Remove a user and render the config again."""
    if not UserStore(directory).remove(name):
        raise typer.BadParameter(f"no user {name!r}", param_hint="NAME")
    console.print(f"removed {name} — reload nats-server", highlight=False)


@auth_app.command("users")
def users(directory: DirOpt = DEFAULT_DIR) -> None:
    """List users and roles (never secrets)."""
    t = Table(title=str(UserStore(directory).users_file))
    for col in ("user", "role", "auth"):
        t.add_column(col)
    for u in UserStore(directory).load():
        t.add_row(u.name, u.role, "nkey" if u.nkey else "password (bcrypt)")
    out.print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(auth_app, name="auth")
