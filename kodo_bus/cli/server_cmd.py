"""`kodo-bus server`, `kodo-bus up` and `kodo-bus version`."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from .. import procs
from ..config import WEB_PORT, ServerSettings
from ..server import NatsServer, config_ports, default_config, find_binary, is_loopback
from ..version import __version__
from .app import console, out

UP_GRACE = 1.0
"""Seconds `up`'s node gives running executions at Ctrl-C (a stop takes seconds, not 30)."""
NODE_STOP = 5.0
"""Seconds beyond its grace `up`'s node gets to stop (its own Ray's included) before killed."""
FORCED = 130
"""Exit code after a second Ctrl-C (the stop was cut short), as for any Ctrl-C interruption."""
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Each stops the server and its children: SIGHUP too, since the children, in sessions of their
own, would not hear a closing terminal."""
SERVER_STOP = 3.0
"""Seconds the nats-server and the registry get to stop before they are killed."""


def _serve_until_signal(
    server: NatsServer,
    start_children: Callable[[], list[tuple[subprocess.Popen[bytes], float]]] | None = None,
) -> int:
    """Run `server` until SIGINT/SIGTERM/SIGHUP or until it exits by itself; its exit code.

    `start_children` runs once the server is up and returns processes to stop, in that order
    and each with its time limit, before the server. A second signal kills everything left, by
    PID, and the command exits at once with `FORCED`.
    """
    stop = threading.Event()
    force = threading.Event()
    children: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and not force.is_set():
            force.set()  # only os.kill here: the main thread may be inside Popen.wait
            procs.kill_trees([*(c.pid for c in children), *([server.pid] if server.pid else [])])
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in SIGNALS}

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
        limits: list[float] = []
        if start_children is not None:
            for child, limit in start_children():
                children.append(child)
                limits.append(limit)
        stop.wait()
        started = time.monotonic()
        if children and not force.is_set():
            console.print("stopping (Ctrl-C again to kill at once)", highlight=False)
        procs.stop_in_order(children, limits, force)
        exited_alone = not server.running
        code = server.wait() if exited_alone else 0
        server.stop(timeout=SERVER_STOP)
        if force.is_set():
            console.print("[yellow]killed[/] (second Ctrl-C)", highlight=False)
            return FORCED
        if exited_alone and code:
            console.print(f"[red]nats-server exited with code {code}[/]")
        elif children:
            console.print(f"stopped in {time.monotonic() - started:.1f} s", highlight=False)
        return code
    finally:
        if children:  # a failure above must not leave them running
            procs.kill_trees(c.pid for c in children if c.poll() is None)
        server.stop(timeout=SERVER_STOP)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


HOST_HELP = (
    "Client address [default: the --config file's own `host`, else 127.0.0.1]. Given, it "
    "overrides the config's. Loopback (127.0.0.1) is the default because the default config has "
    "no authentication: any other address lets other machines in, so use it only with a config "
    "that has users and TLS (deploy/secure/README.md)."
)


def server(  # noqa: PLR0917 (typer options)
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            "-p",
            help="Client port (0: a free one) [default: the --config file's, else 4222].",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help=HOST_HELP)] = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            "--http-port",
            help="Monitoring port (0: a free one) [default: the --config file's, else 8222].",
        ),
    ] = None,
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

    Listens on 127.0.0.1 unless `--host` or the `--config` file says otherwise, on the config
    file's ports unless `--port` or `--http-port` say otherwise (4222 and 8222 when the file
    sets none); `--store` always overrides the config file.
    """
    file_port, file_http = config_ports(config or default_config())
    defaults = ServerSettings()
    settings = ServerSettings(
        host=host,
        port=port if port is not None else file_port or defaults.port,
        http_port=http_port if http_port is not None else file_http or defaults.http_port,
        store=store,
        config=config,
    )
    echo = (lambda line: console.print(line, highlight=False, markup=False)) if verbose else None
    raise typer.Exit(_serve_until_signal(NatsServer(settings, echo=echo)))


def up(  # noqa: PLR0917 (typer options)
    port: Annotated[int, typer.Option("--port", "-p", help="Client port of the server.")] = 4222,
    store: Annotated[Path, typer.Option(help="JetStream store directory.")] = Path("data/nats"),
    http_port: Annotated[
        int, typer.Option("--http-port", help="Monitoring port (0: a free one).")
    ] = 8222,
    examples: Annotated[
        Path, typer.Option(help="Directory holding up-node.yaml and hello.py.")
    ] = Path("examples"),
    grace: Annotated[
        float, typer.Option(help="Seconds running executions get at Ctrl-C before cancelled.")
    ] = UP_GRACE,
    web: Annotated[bool, typer.Option("--web/--no-web", help="Serve the web panel too.")] = True,
    web_port: Annotated[int, typer.Option("--web-port", help="Port of the web panel.")] = WEB_PORT,
) -> None:
    """Run the whole bus on this machine: embedded nats-server, the example node `up-node` (also
    the bus's registry, in the same process) and the web panel (`kodo-bus web`).

    Ctrl-C (or SIGTERM) stops the panel, then the node, then the server, in a few seconds
    (running executions get `--grace` seconds, then are cancelled); a second Ctrl-C kills what
    is left at once (exit code 130).
    """
    settings = ServerSettings(port=port, http_port=http_port, store=store)
    server = NatsServer(settings)

    def start_services() -> list[tuple[subprocess.Popen[bytes], float]]:
        base = [sys.executable, "-m", "kodo_bus", "run", "--nats", server.url, "--retry", "-1"]
        node_config = examples / "up-node.yaml"
        node_args = (
            ["--config", str(node_config.resolve())]
            if node_config.exists()
            else ["--id", "up-node"]
        )
        if not node_config.exists():
            console.print(f"[yellow]note:[/] {node_config} not found; the node serves no flows")
        # one process is the node and the registry (a hybrid taking in views, as a registry
        # does): a Python process of its own for the registry was ~34 MB PSS of a stack kept
        # under 500 MB (issue 18); `kodo-bus run --role registry` stays for a real bus
        node = procs.spawn(
            [*base, "--role", "hybrid", "--feed", "--grace", str(grace), *node_args],
            cwd=examples.resolve().parent,
        )
        console.print("node and registry [bold]up-node[/] starting")
        panel = [(_spawn_panel(server.url, web_port), SERVER_STOP)] if web else []
        # the node's limit covers its Ray's stop
        return [*panel, (node, grace + NODE_STOP)]

    raise typer.Exit(_serve_until_signal(server, start_services))


def _spawn_panel(nats_url: str, port: int) -> subprocess.Popen[bytes]:
    """The web panel (`kodo-bus web`) as a child of `up`, stopped with its other services; the
    child prints its URL once it listens. (Not imported from cli/web_cmd.py: its imports, the
    SDK's client and models among them, cost the `up` process ~20 MB for one command line.)"""
    argv = [sys.executable, "-m", "kodo_bus", "web", "--nats", nats_url, "--port", str(port)]
    return procs.spawn(argv)


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
