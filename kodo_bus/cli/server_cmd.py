"""`kodo-bus server`, `kodo-bus up` and `kodo-bus version`."""

from __future__ import annotations

import signal
import subprocess
import threading
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from ..config import ServerSettings
from ..server import NatsServer, find_binary
from ..version import __version__
from .app import console, out


def _serve_until_signal(server: NatsServer) -> int:
    """Run `server` until SIGINT/SIGTERM or until it exits by itself; returns its exit code."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def watch() -> None:
        server.wait()
        stop.set()

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        server.start()
        watcher.start()
        console.print(
            f"nats-server {server.version} ready at [bold]{server.url}[/]", highlight=False
        )
        if server.monitor_url:
            console.print(f"monitoring at {server.monitor_url}", highlight=False)
        console.print(f"store: {server.settings.store}   (Ctrl-C to stop)", highlight=False)
        stop.wait()
        exited_alone = not server.running
        code = server.wait() if exited_alone else 0
        server.stop()
        if exited_alone and code:
            console.print(f"[red]nats-server exited with code {code}[/]")
        return code
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def server(
    port: Annotated[int, typer.Option("--port", "-p", help="Client port (0: a free one).")] = 4222,
    http_port: Annotated[
        int, typer.Option("--http-port", help="Monitoring port (0: a free one).")
    ] = 8222,
    store: Annotated[Path, typer.Option(help="JetStream store directory.")] = Path("data/nats"),
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="nats-server config [default: ./nats-server.conf "
            "if present, else the packaged one].",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Echo the server's log.")
    ] = False,
) -> None:
    """Run a real nats-server (JetStream on) in the foreground until Ctrl-C or SIGTERM."""
    settings = ServerSettings(port=port, http_port=http_port, store=store, config=config)
    echo = (lambda line: console.print(line, highlight=False, markup=False)) if verbose else None
    raise typer.Exit(_serve_until_signal(NatsServer(settings, echo=echo)))


def up(
    port: Annotated[int, typer.Option("--port", "-p", help="Client port of the server.")] = 4222,
    store: Annotated[Path, typer.Option(help="JetStream store directory.")] = Path("data/nats"),
) -> None:
    """Run the whole bus on this machine: embedded nats-server, a registry and an example node."""
    console.print(
        "[yellow]note:[/] the registry and node roles are not built yet — "
        "'up' runs the embedded nats-server alone for now."
    )
    settings = ServerSettings(port=port, store=store)
    raise typer.Exit(_serve_until_signal(NatsServer(settings)))


def version() -> None:
    """Print the versions of kodo-bus, nats-py and the nats-server binary."""
    try:
        binary = find_binary()
        server_version = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
    except Exception as exc:  # a missing binary is worth reporting, not crashing on
        server_version = f"unavailable ({exc})"
    out.print(f"kodo-bus {__version__}", highlight=False)
    out.print(f"nats-py {metadata.version('nats-py')}", highlight=False)
    out.print(server_version, highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(server)
    app.command()(up)
    app.command()(version)
