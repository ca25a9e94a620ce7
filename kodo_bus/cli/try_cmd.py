"""`kodo-bus try TARGET`: run one flow once, here, with no bus to start (`kodo_bus/trial.py`).

Inputs, rendering and exit codes are `launch`'s own (`exec_cmd.gather_inputs`, `follow`), so a
flow shows while it is written what it will show once served. Ctrl-C (or SIGTERM) stops the
execution and everything the trial started, and exits 130; a second one kills what is left by
PID at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .. import logs, procs, trial
from ..errors import ConfigError, ExecutionFailed
from ..execution_ref import Execution
from .app import console
from .exec_cmd import (
    EXIT_BY_STATUS,
    INTERRUPTED,
    INTERRUPTED_AT,
    PairsOpt,
    follow,
    gather_inputs,
)

log = logging.getLogger("kodo_bus.try")

STUCK_EXIT = 5.0
"""Seconds the process may still take to exit after the trial ended (`_exit_despite_threads`)."""

TRY_HELP = f"""Run one execution of a flow in this process, with no bus to start first.

TARGET is `module:function` (found from the current directory), `path/to/file.py:function`
(`kodo-bus try examples/hello.py:hello -i name=Ada`), or with `--config node.yaml` the name of
one of that node's flows (run with the node's settings). A crewai Crew or Flow (`module:crew`)
and a crew YAML file (`examples/crew/crew.yaml`) run too: {trial.CREWAI_NEEDED}.

It starts a nats-server of its own (a temporary directory, free loopback ports) and runs the flow
with a node's own worker code, in this process: no Ray, unless the flow uses Ray. The rule: a
flow runs on Ray when its module refers to Ray (`import ray`, `from ray import ...`, a
`@ray.remote` function or class), or with `--ray` (a flow reaching Ray through another module)
or `--ray-address`; `--no-ray` never starts it. On Ray a local one is started (loopback only;
it takes seconds) and stopped at the end, unless `--ray-address` names a running one on this
machine. In this process, a sync flow blocked in C hears its cancel only once back in Python.
Inputs (`-i`, `--inputs`, prompts on a terminal for what they leave out), the rendering of
events and `--json` are those of `kodo-bus launch`. Nothing is left behind: the server, Ray and
the temporary directory go at the end, also on an error or Ctrl-C.

Exit codes: 0 finished · 1 error (the flow failed: the last line names the flow's `file:line`)
· 2 bad target or inputs · 3 cancelled or timed out · 130 interrupted (Ctrl-C: the execution is
cancelled).
"""


def _say_error(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def try_(  # noqa: PLR0917 (typer options)
    target: Annotated[
        str,
        typer.Argument(
            help="module:function, path/to/file.py:function, or a flow name with --config."
        ),
    ],
    pairs: PairsOpt = None,
    inputs: Annotated[
        str | None, typer.Option("--inputs", help="JSON file of inputs ('-': stdin).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Node config (YAML) whose flow TARGET names."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds before the execution is stopped.")
    ] = None,
    ray: Annotated[
        bool | None,
        typer.Option(
            "--ray/--no-ray",
            help="Run the flow on Ray, or in this process [default: on Ray if it uses Ray].",
            show_default=False,
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="A running Ray on this machine [default: a local one of its own]."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    logs.setup("WARNING")  # Ray's start-up INFO lines are no news here
    try:
        found = trial.resolve(target, config)
    except ConfigError as exc:  # one line: what was not found
        _say_error(str(exc))
        raise typer.Exit(2) from None
    if ray is False and ray_address:
        _say_error("--no-ray and --ray-address: choose one")
        raise typer.Exit(2)
    interactive = sys.stdin.isatty() and inputs != "-"
    on = _On(found, ray, ray_address)
    try:
        code = asyncio.run(_main(on, pairs, inputs, timeout, as_json, interactive))
    finally:
        _sweep()
    if code == INTERRUPTED:
        said = INTERRUPTED_AT["asking"] if on.asking else "interrupted: everything it ran stopped"
        console.print(f"[dim]{said}[/]")
    _exit_despite_threads(code)
    raise typer.Exit(code)


@dataclass
class _On:
    """The target, where it runs, and how far the trial got."""

    target: trial.Target
    ray: bool | None
    """`--ray/--no-ray` (None: by `trial.Target.uses_ray`)."""
    ray_address: str | None
    asking: bool = True
    """Its inputs are being gathered (prompts): nothing was started yet."""


async def _main(  # noqa: PLR0917
    on: _On,
    pairs: list[str] | None,
    source: str | None,
    timeout: float | None,
    as_json: bool,
    interactive: bool,
) -> int:
    """The trial as a task of its own: a first signal cancels it (its clean-up runs), a second
    kills what is left at once."""
    job = asyncio.create_task(
        _session(on, pairs, source, timeout, as_json, interactive), name="try"
    )
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            _force()
        job.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await asyncio.wait({job})
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if job.cancelled():
        return INTERRUPTED
    return job.result()


async def _session(  # noqa: PLR0917
    on: _On,
    pairs: list[str] | None,
    source: str | None,
    timeout: float | None,
    as_json: bool,
    interactive: bool,
) -> int:
    found = on.target
    spec = found.spec
    schema: dict[str, Any] = spec.info().input_schema
    data = await gather_inputs(schema, spec.name, pairs, source, interactive)
    on.asking = False
    spec.validate(data)  # InputsInvalid (exit 2) before a server or Ray starts
    async with trial.Trial(found, ray_address=on.ray_address, ray=on.ray) as running:
        execution = await running.flow.launch(data, timeout=timeout)
        code = await follow(execution, as_json, interactive)
        if code == EXIT_BY_STATUS["error"]:
            await _error_line(execution, found)
        return code


async def _error_line(execution: Execution, found: trial.Target) -> None:
    """The failure in one line, at the flow's `file:line` when the traceback passes there."""
    try:
        await execution.result(timeout=5)
    except ExecutionFailed as exc:
        where = trial.flow_line(exc.traceback, found.source)
        text = f"{exc.remote_type}: {exc.remote_message}"
        _say_error(f"{text} ({where})" if where else text)


def _sweep() -> None:
    """Kill whatever is still below this process (a Ray whose start a Ctrl-C interrupted
    finishes starting in its thread, unowned): the trial leaves nothing running."""
    left = procs.tree(os.getpid())[1:]
    if left and (killed := procs.kill(left)):
        log.debug("killed %d processes left after the trial", killed)


def _exit_despite_threads(code: int) -> None:
    """Leave within `STUCK_EXIT` seconds even if a flow's thread still runs: a sync flow run in
    this process and blocked in C (a socket read, a long sleep) hears its `_Stop` only once back
    in Python, and the interpreter waits for the thread pool's threads before it exits. The
    trial's server and Ray are stopped by now; only that thread would be left."""

    def leave() -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(STUCK_EXIT, leave)
    timer.daemon = True  # an exit in time ends it unfired
    timer.start()


def _force() -> None:
    """Second signal: kill our Ray (recorded by PID) and everything below us, leave now."""
    record = procs.RayRecord.read(procs.RayRecord().path)
    procs.kill([*record.processes(), *procs.tree(os.getpid())[1:]])
    record.forget()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(INTERRUPTED)


def register(app: typer.Typer) -> None:
    app.command("try", help=TRY_HELP)(try_)
