"""Run scenarios by name in one environment and collect one `BenchRecord`.

Sizes come from `Sizes`: the issue's defaults, or tiny ones with `quick` (the smoke tests), or
whatever the command line overrides. Scenarios share the environment (one nats-server, one Ray,
one benchmark node) so `all` pays the start-up once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

from . import ON_DEMAND, SCENARIOS
from .common import BenchRecord, ScenarioResult, Stopwatch
from .env import BenchEnv, BenchError, BenchSettings


class Sizes(BaseModel):
    """How much work each scenario does (the issue's sizes by default)."""

    launches: int = Field(default=500, ge=1)
    warmup: int = Field(default=30, ge=0)
    executions: int = Field(default=2000, ge=1)
    events: int = Field(default=100_000, ge=2)
    nodes: int = Field(default=1000, ge=1)
    flows: int = Field(default=20, ge=1)
    heartbeat: float = Field(default=5.0, gt=0)
    load_seconds: float = Field(default=10.0, gt=0)
    queries: int = Field(default=300, ge=1)
    buses: int = Field(default=5, ge=2)
    bus_nodes: int = Field(default=2000, ge=2)
    minutes: float = Field(default=10.0, gt=0)
    events_max_bytes: int = Field(default=64 * 2**20, ge=-1)
    records_max_bytes: int = Field(default=16 * 2**20, ge=-1)
    sample_every: float = Field(default=5.0, gt=0)
    slow_events: int = Field(default=1_000_000, ge=4)
    reader_rate: float = Field(default=40_000.0, gt=0)


QUICK = Sizes(
    launches=5,
    warmup=2,
    executions=200,
    events=200,
    nodes=10,
    flows=3,
    heartbeat=0.5,
    load_seconds=1.0,
    queries=5,
    buses=3,
    bus_nodes=20,
    minutes=0.2,
    sample_every=2.0,
    slow_events=2000,
)
"""Tiny sizes for the smoke tests and `--quick`: does every scenario work?"""


async def run_one(env: BenchEnv, name: str, s: Sizes) -> ScenarioResult:
    """One scenario by name, with the sizes given."""
    from . import events, federation, launch, memory, registry, slowreader, soak, throughput

    if name == "launch":
        return await launch.run(env, n=s.launches, warmup=s.warmup)
    if name == "throughput":
        return await throughput.run(env, n=s.executions, warmup=s.warmup)
    if name == "events":
        return await events.run(env, n=s.events)
    if name == "registry":
        return await registry.run(
            env,
            nodes=s.nodes,
            flows=s.flows,
            heartbeat=s.heartbeat,
            load_seconds=s.load_seconds,
            queries=s.queries,
        )
    if name == "memory":
        return await memory.run(env, nodes=s.nodes, flows=s.flows)
    if name == "federation":
        return await federation.run(
            env, buses=s.buses, nodes=s.bus_nodes, flows=s.flows, heartbeat=s.heartbeat
        )
    if name == "slowreader":
        return await slowreader.run(env, n=s.slow_events, reader_rate=s.reader_rate)
    if name == "soak":
        return await soak.run(
            env,
            minutes=s.minutes,
            events_max_bytes=s.events_max_bytes,
            records_max_bytes=s.records_max_bytes,
            sample_every=s.sample_every,
        )
    raise BenchError(f"unknown scenario {name!r}: choose from all, {', '.join(NAMES)}")


NAMES = (*SCENARIOS, *ON_DEMAND)
"""Every scenario a command line may name (`all` runs `SCENARIOS`)."""


async def run_suite(
    names: Sequence[str],
    settings: BenchSettings,
    sizes: Sizes | None = None,
    on_result: Callable[[ScenarioResult], None] | None = None,
) -> BenchRecord:
    """Run `names` (or every scenario for `all`) and return the record of the whole run."""
    chosen = list(SCENARIOS) if "all" in names else list(dict.fromkeys(names))
    for name in chosen:
        if name not in NAMES:
            raise BenchError(f"unknown scenario {name!r}: choose from all, {', '.join(NAMES)}")
    if sizes is None:
        sizes = QUICK if settings.quick else Sizes()
    watch = Stopwatch()
    record = BenchRecord()
    async with BenchEnv(settings) as env:
        record.nats = env.nats_label
        for name in chosen:
            result = await run_one(env, name, sizes)
            record.add(result)
            if on_result is not None:
                on_result(result)
    record.seconds = watch()
    return record
