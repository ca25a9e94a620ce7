"""`kodo-bus bench SCENARIO`: measure kodo-bus next to its floors (like `nats bench`).

Runs against an embedded nats-server on free loopback ports by default, or the bus given with
`--nats`. The table goes to the terminal as each scenario finishes; `--json` prints one record
(every figure, floor, ratio and target) on stdout instead, for scripts and comparisons.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from ..bench import ON_DEMAND, SCENARIOS
from ..bench.common import ScenarioResult, markdown_table, table
from ..bench.env import BenchSettings
from ..bench.soak import parse_bytes, samples_markdown, samples_table
from ..bench.suite import NAMES, QUICK, Sizes, run_suite
from .app import console, out

HELP = f"""Measure kodo-bus: {", ".join(SCENARIOS)} or all; {", ".join(ON_DEMAND)} on demand.

Every figure is printed with a floor measured in the same run (a bare Ray task, a bare NATS
request, bare nats-py publish→subscribe...). `all` takes about a minute (idle 2-core machine).
`soak --minutes N` launches no-op executions at full rate for N minutes against small store
limits and prints the store, nats-server's RSS, consumers and connections over time.
"""


def _size(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    try:
        return -1 if value.strip() == "-1" else parse_bytes(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def bench(  # noqa: PLR0917 (typer options)
    scenario: Annotated[str, typer.Argument(help=f"all | {' | '.join(NAMES)}")] = "all",
    nats: Annotated[
        str | None, typer.Option("--nats", help="Bus to measure (default: an embedded server).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON record.")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Also print a Markdown table at the end.")
    ] = False,
    save: Annotated[
        Path | None, typer.Option("--save", help="Also write the JSON record to this file.")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes: does it work?")] = False,
    launches: Annotated[int | None, typer.Option(help="launch: sequential launches [500].")] = None,
    executions: Annotated[
        int | None, typer.Option(help="throughput: concurrent executions [2000].")
    ] = None,
    events: Annotated[int | None, typer.Option(help="events: events emitted [100000].")] = None,
    nodes: Annotated[int | None, typer.Option(help="registry, memory: nodes [1000].")] = None,
    flows: Annotated[int | None, typer.Option(help="registry/memory: flows per node [20].")] = None,
    heartbeat: Annotated[
        float | None, typer.Option(help="registry: seconds between heartbeats [5].")
    ] = None,
    load_seconds: Annotated[
        float | None, typer.Option(help="registry: seconds of heartbeat load [10].")
    ] = None,
    buses: Annotated[int | None, typer.Option(help="federation: buses [5].")] = None,
    bus_nodes: Annotated[
        int | None, typer.Option(help="federation: simulated nodes per bus [2000].")
    ] = None,
    slow_events: Annotated[
        int | None, typer.Option(help="slowreader: events the flow emits per run [1000000].")
    ] = None,
    reader_rate: Annotated[
        float | None, typer.Option(help="slowreader: bytes/s the slow reader takes [40000].")
    ] = None,
    minutes: Annotated[
        float | None, typer.Option(help="soak: minutes of launches at full rate [10].")
    ] = None,
    events_max_bytes: Annotated[
        str | None, typer.Option(help="soak: limit of the events stream, e.g. 64MiB [64MiB].")
    ] = None,
    records_max_bytes: Annotated[
        str | None, typer.Option(help="soak: limit of the executions bucket [16MiB].")
    ] = None,
    sample_every: Annotated[
        float | None, typer.Option(help="soak: seconds between samples of the server [5].")
    ] = None,
    max_running: Annotated[
        int, typer.Option(help="Executions the benchmark node runs at once.")
    ] = 32,
    ray_cpus: Annotated[int, typer.Option(help="num_cpus of the local Ray.")] = 2,
) -> None:
    """Benchmark kodo-bus (launch latency, throughput, events, registry, memory)."""
    names = [scenario]
    if scenario != "all" and scenario not in NAMES:
        raise typer.BadParameter(f"choose from all, {', '.join(NAMES)}", param_hint="SCENARIO")
    base = QUICK if quick else Sizes()
    given = {
        "launches": launches,
        "executions": executions,
        "events": events,
        "nodes": nodes,
        "flows": flows,
        "heartbeat": heartbeat,
        "load_seconds": load_seconds,
        "buses": buses,
        "bus_nodes": bus_nodes,
        "slow_events": slow_events,
        "reader_rate": reader_rate,
        "minutes": minutes,
        "events_max_bytes": _size(events_max_bytes, "--events-max-bytes"),
        "records_max_bytes": _size(records_max_bytes, "--records-max-bytes"),
        "sample_every": sample_every,
    }
    try:
        sizes = Sizes.model_validate(
            {**base.model_dump(), **{k: v for k, v in given.items() if v is not None}}
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        name = str(problem["loc"][0]).replace("_", "-")
        raise typer.BadParameter(problem["msg"], param_hint=f"--{name}") from None
    settings = BenchSettings(nats=nats, quick=quick, max_running=max_running, ray_cpus=ray_cpus)

    results: list[ScenarioResult] = []

    def show(result: ScenarioResult) -> None:
        results.append(result)
        if not json_out:
            if result.samples:
                out.print(samples_table(result))
            out.print(table([result], title=f"kodo-bus bench {result.scenario}"))

    if not json_out:
        if not out.is_terminal:
            out.width = max(out.width, 130)  # a pipe or file gets the table unwrapped
        console.print(f"[dim]kodo-bus bench {scenario}: starting…[/]")
    try:
        record = asyncio.run(run_suite(names, settings, sizes, on_result=show))
    except (asyncio.CancelledError, KeyboardInterrupt):
        console.print("[yellow]interrupted[/]: every process the run started was stopped")
        raise typer.Exit(130) from None
    if save is not None:
        save.write_text(record.model_dump_json(indent=2) + "\n")
    if json_out:
        sys.stdout.write(record.model_dump_json(indent=2) + "\n")
        return
    m = record.machine
    console.print(
        f"[dim]{record.date} · {m.host} · {m.cpus} CPUs · {m.memory_gb} GB · Python {m.python}"
        f" · {record.nats} · load before {m.load_before[0]:.2f} · {record.seconds:.0f} s[/]"
    )
    if markdown:
        out.print(markdown_table(record), markup=False, highlight=False, soft_wrap=True)
        for result in results:
            if result.samples:
                md = samples_markdown(result)
                out.print(md, markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command(help=HELP)(bench)
