"""`kodo-bus server`, `kodo-bus up` and `kodo-bus version`."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from ..config import ServerSettings
from ..server import NatsServer, find_binary, is_loopback
from ..version import __version__
from .app import console, out


def _serve_until_signal(
    server: NatsServer, on_ready: Callable[[], Callable[[], None]] | None = None
) -> int:
    """Run `server` until SIGINT/SIGTERM or until it exits by itself; returns its exit code.

    `on_ready` runs once the server is up and returns what to call before the server stops.
    """
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
        if server.host and not is_loopback(server.host):
            console.print(
                f"[yellow]note:[/] listening on {server.host}: other machines can connect — "
                "give them users and TLS (deploy/secure/README.md)",
                highlight=False,
            )
        console.print(f"store: {server.settings.store}   (Ctrl-C to stop)", highlight=False)
        cleanup = on_ready() if on_ready else None
        try:
            stop.wait()
        finally:
            if cleanup is not None:
                cleanup()
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


HOST_HELP = (
    "Client address [default: the --config file's own `host`, else 127.0.0.1]. Given, it "
    "overrides the config's. Loopback (127.0.0.1) is the default because the default config has "
    "no authentication: any other address lets other machines in, so use it only with a config "
    "that has users and TLS (deploy/secure/README.md)."
)


def server(  # noqa: PLR0917 (typer options)
    port: Annotated[int, typer.Option("--port", "-p", help="Client port (0: a free one).")] = 4222,
    host: Annotated[str | None, typer.Option("--host", help=HOST_HELP)] = None,
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
    """Run a real nats-server (JetStream on) in the foreground until Ctrl-C or SIGTERM.

    Listens on 127.0.0.1 unless `--host` or the `--config` file says otherwise; `--port`,
    `--http-port` and `--store` always override the config file.
    """
    settings = ServerSettings(host=host, port=port, http_port=http_port, store=store, config=config)
    echo = (lambda line: console.print(line, highlight=False, markup=False)) if verbose else None
    raise typer.Exit(_serve_until_signal(NatsServer(settings, echo=echo)))


def up(
    port: Annotated[int, typer.Option("--port", "-p", help="Client port of the server.")] = 4222,
    store: Annotated[Path, typer.Option(help="JetStream store directory.")] = Path("data/nats"),
    http_port: Annotated[
        int, typer.Option("--http-port", help="Monitoring port (0: a free one).")
    ] = 8222,
    examples: Annotated[
        Path, typer.Option(help="Directory holding up-node.yaml and hello.py.")
    ] = Path("examples"),
) -> None:
    """Run the whole bus on this machine: embedded nats-server, a registry and an example node."""
    settings = ServerSettings(port=port, http_port=http_port, store=store)
    server = NatsServer(settings)

    def start_services() -> Callable[[], None]:
        base = [sys.executable, "-m", "kodo_bus", "run", "--nats", server.url, "--retry", "-1"]
        node_config = examples / "up-node.yaml"
        node_args = (
            ["--config", str(node_config.resolve())]
            if node_config.exists()
            else ["--id", "up-node"]
        )
        if not node_config.exists():
            console.print(f"[yellow]note:[/] {node_config} not found; the node serves no flows")
        children = [
            subprocess.Popen([*base, "--role", "registry", "--id", "up-registry"]),
            subprocess.Popen([*base, "--role", "node", *node_args], cwd=examples.resolve().parent),
        ]
        console.print("registry [bold]up-registry[/] and node [bold]up-node[/] starting")

        def stop_services() -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

        return stop_services

    raise typer.Exit(_serve_until_signal(server, start_services))


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
