"""`kodo-bus run`: one service (node, registry, provider or hybrid) until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import logs, procs
from ..config import Credentials, ServiceSettings, split_urls
from ..flows import load_flows
from .creds import with_credentials

ROLES = ("node", "registry", "provider", "hybrid")
log = logging.getLogger("kodo_bus.run")


def _importable(config: Path | None) -> None:
    """Flow modules named in a config resolve against its directory and the current one."""
    for place in (Path.cwd(), config.resolve().parent if config else None):
        if place is not None and str(place) not in sys.path:
            sys.path.insert(0, str(place))


FORCED = 130
"""Exit code after a second Ctrl-C cut the grace period short."""


async def serve(settings: ServiceSettings, flows: list[Any]) -> None:
    """Run the service until a signal; stop gracefully; a second signal forces the exit.

    Forced: this process's children (its own Ray: GCS, raylet, agents, workers) are killed by
    PID and the process ends at once with `FORCED` — running executions are not waited for
    (registries judge them lost).
    """
    from ..service import KodoService

    if settings.is_node and not settings.ray_address:
        await asyncio.to_thread(procs.clean_left)  # a SIGKILLed node's Ray agents run on
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            _force()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    service = KodoService(settings, flows)
    starting = asyncio.create_task(service.start(), name="kodo-start")
    signalled = asyncio.create_task(stop.wait(), name="kodo-signal")
    try:
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a start that failed raises its error, with nothing to stop
            await signalled
            log.info("stopping (Ctrl-C again to stop at once)")
        else:
            # A signal while starting: a bus whose JetStream does not answer keeps a start in
            # bounded retries (30 s per step); Ctrl-C stops now, not after them.
            log.info("stopping while starting (Ctrl-C again to stop at once)")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
    finally:
        signalled.cancel()
    await service.stop()


def _force() -> None:
    """Leave now: kill our Ray by PID (the recorded processes and anything below us), exit."""
    log.warning("second signal: stopping at once")
    record = procs.RayRecord.read(procs.RayRecord().path)
    killed = procs.kill([*record.processes(), *procs.tree(os.getpid())[1:]])
    record.forget()
    log.info("killed %d processes", killed)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stdout.flush()
    os._exit(FORCED)


@with_credentials
def run(  # noqa: PLR0917 (typer options)
    role: Annotated[
        str | None, typer.Option(help="node | registry | provider | hybrid [default: node].")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
    id: Annotated[
        str | None, typer.Option("--id", help="Service id, stable across restarts.")
    ] = None,
    nats: Annotated[
        list[str] | None,
        typer.Option(
            "--nats",
            help="NATS URL (repeatable, or comma-separated) [default: $KODO_NATS, else the "
            "config's `nats`, else nats://127.0.0.1:4222].",
        ),
    ] = None,
    organization: Annotated[str | None, typer.Option(help="Organization name.")] = None,
    connect: Annotated[
        list[str] | None,
        typer.Option("--connect", help="URL of an independent bus to federate with (repeatable)."),
    ] = None,
    feed: Annotated[
        bool | None, typer.Option("--feed/--no-feed", help="Take in other registries' views.")
    ] = None,
    cache_reset: Annotated[
        bool | None, typer.Option("--cache-reset", help="Forget the stored view at start.")
    ] = None,
    heartbeat: Annotated[
        float | None, typer.Option(help="Seconds between heartbeats [default: 5].")
    ] = None,
    ttl: Annotated[
        float | None, typer.Option(help="Seconds of silence before offline [default: 3 beats].")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="Screen log level.")] = None,
    log_file: Annotated[Path | None, typer.Option(help="Log file (DEBUG).")] = None,
    retry: Annotated[
        int | None, typer.Option(help="NATS connection retries at start (-1: forever).")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to run flows on [default: a local Ray, started lazily]."),
    ] = None,
    max_running: Annotated[
        int | None, typer.Option(help="Executions running at once [default: Ray's CPU count].")
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Launches waiting beyond max_running [default: 10000].")
    ] = None,
    grace: Annotated[
        float | None, typer.Option(help="Seconds running executions get on SIGTERM [default: 30].")
    ] = None,
    credentials: Credentials | None = None,
) -> None:
    """Run a kodo-bus service: serve flows (node), broker them (registry/provider), or both.

    A node serves the flows listed under `flows:` in its `--config` file (`module: my_flows`
    for every `@flow` of a module, or `entry: my_flows:greet` for one); modules are found in
    the config file's directory and the current one. Other keys of that file can also come
    from `KODO_<KEY>` variables (`KODO_NATS`, `KODO_RAY_ADDRESS`...); flags override both.
    Ctrl-C or SIGTERM stops it (running executions get `--grace` seconds to finish).
    """
    if role is not None and role not in ROLES:
        raise typer.BadParameter(f"must be one of {', '.join(ROLES)}", param_hint="--role")
    overrides: dict[str, Any] = {
        "role": role,
        "id": id,
        "nats": split_urls(nats) if nats else None,
        "organization": organization,
        "connect": connect or None,
        "feed": feed,
        "cache_reset": cache_reset,
        "heartbeat": heartbeat,
        "ttl": ttl,
        "log_level": log_level,
        "log_file": log_file,
        "retry": retry,
        "ray_address": ray_address,
        "max_running": max_running,
        "max_queue": max_queue,
        "grace": grace,
        "credentials": credentials,
    }
    settings = ServiceSettings.build(config, overrides=overrides)
    logs.setup(settings.log_level, settings.log_file)
    _importable(config)
    flows = load_flows(settings.flows)
    asyncio.run(serve(settings, flows))


def register(app: typer.Typer) -> None:
    app.command()(run)
