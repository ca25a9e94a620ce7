"""Run scenarios by name in one environment and collect one `BenchRecord`.

Sizes come from `Sizes`: the issue's defaults, or tiny ones with `quick` (the smoke tests), or
whatever the command line overrides. Scenarios share the environment (one nats-server, one Ray,
one benchmark node) so `all` pays the start-up once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

from . import SCENARIOS
from .common import BenchRecord, ScenarioResult, Stopwatch
from .env import BenchEnv, BenchError, BenchSettings


class Sizes(BaseModel):
    """How much work each scenario does (None: the scenario's default, or the quick size)."""

    launches: int | None = Field(default=None, ge=1)
    executions: int | None = Field(default=None, ge=1)
    events: int | None = Field(default=None, ge=2)
    nodes: int | None = Field(default=None, ge=1)
    flows: int | None = Field(default=None, ge=1)
    heartbeat: float | None = Field(default=None, gt=0)
    load_seconds: float | None = Field(default=None, gt=0)
    queries: int | None = Field(default=None, ge=1)


QUICK = Sizes(
    launches=5,
    executions=20,
    events=200,
    nodes=10,
    flows=3,
    heartbeat=0.5,
    load_seconds=1.0,
    queries=5,
)


async def run_one(env: BenchEnv, name: str, sizes: Sizes) -> ScenarioResult:
    """One scenario by name, with the sizes given (None fields keep their defaults)."""
    s = sizes
    if name == "launch":
        from . import launch

        return await launch.run(env, **_given(n=s.launches, warmup=5 if s.launches else None))
    if name == "throughput":
        from . import throughput

        return await throughput.run(env, **_given(n=s.executions))
    if name == "events":
        from . import events

        return await events.run(env, **_given(n=s.events))
    if name == "registry":
        from . import registry

        return await registry.run(
            env,
            **_given(
                nodes=s.nodes,
                flows=s.flows,
                heartbeat=s.heartbeat,
                load_seconds=s.load_seconds,
                queries=s.queries,
            ),
        )
    if name == "memory":
        from . import memory

        return await memory.run(env, **_given(nodes=s.nodes, flows=s.flows))
    raise BenchError(f"unknown scenario {name!r}: choose from all, {', '.join(SCENARIOS)}")


def _given(**values: float | int | None) -> dict[str, float | int]:
    return {k: v for k, v in values.items() if v is not None}


async def run_suite(
    names: Sequence[str],
    settings: BenchSettings,
    sizes: Sizes | None = None,
    on_result: Callable[[ScenarioResult], None] | None = None,
) -> BenchRecord:
    """Run `names` (or every scenario for `all`) and return the record of the whole run."""
    chosen = list(SCENARIOS) if "all" in names else list(dict.fromkeys(names))
    for name in chosen:
        if name not in SCENARIOS:
            raise BenchError(f"unknown scenario {name!r}: choose from all, {', '.join(SCENARIOS)}")
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
