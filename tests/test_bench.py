"""Smoke variants of every benchmark scenario: tiny sizes, checks that they work — not how fast."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from kodo_bus.bench.common import BenchRecord, ScenarioResult, percentile
from kodo_bus.bench.env import BenchEnv, BenchSettings
from kodo_bus.bench.suite import QUICK, run_one
from kodo_bus.bus import connect
from kodo_bus.config import ConnectSettings
from kodo_bus.server import NatsServer
from kodo_bus.subjects import bucket_view

from .conftest import REPO, run_python


def _check(result: ScenarioResult, scenario: str) -> dict[str, float]:
    """Every figure is a number (not NaN); returns them by name."""
    assert result.scenario == scenario
    assert result.figures
    for f in result.figures:
        assert not math.isnan(f.value), f"{scenario}: {f.name} is NaN"
        if f.floor is not None:
            assert f.floor.value > 0, f"{scenario}: floor of {f.name} is {f.floor.value}"
    return {f.name: f.value for f in result.figures}


async def _bench_views(url: str) -> list[str]:
    """View buckets of benchmark registries left on the bus."""
    nc = await connect(ConnectSettings(nats=[url]))
    try:
        streams = await nc.jetstream().streams_info()
    finally:
        await nc.close()
    prefix = "KV_" + bucket_view("bench-")
    return [name for i in streams if (name := i.config.name or "").startswith(prefix)]


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


@pytest.mark.ray
@pytest.mark.slow
async def test_execution_scenarios(nats_server: NatsServer, ray_address: str) -> None:
    settings = BenchSettings(nats=nats_server.url, quick=True, max_running=4)
    async with BenchEnv(settings) as env:
        launch = _check(await run_one(env, "launch", QUICK), "launch")
        assert launch["launch→final p50"] >= launch["launch→reply p50"] > 0
        throughput = await run_one(env, "throughput", QUICK)
        rates = _check(throughput, "throughput")
        assert rates["executions/s (all final)"] > 0
        assert rates["CPU per execution: SDK + node (this process)"] > 0
        assert rates["executions/s (all final), node in its own process"] > 0
        # 20 executions may cost the node's own process less than one clock tick (10 ms)
        assert rates["CPU per execution, node in its own process: node (its own process)"] >= 0
        # a bus given with --nats: its server is not ours to measure
        assert not any("nats-server" in name for name in rates)
        assert not throughput.notes, throughput.notes
        events = _check(await run_one(env, "events", QUICK), "events")
        assert events["lost (live + replay)"] == 0
        assert events["out of order (live + replay)"] == 0
        assert events["live reader"] > 0 and events["late reader (replay)"] > 0
    assert await _bench_views(nats_server.url) == []  # a given bus is left as it was found


@pytest.mark.slow
async def test_registry_and_memory_scenarios(nats_server: NatsServer) -> None:
    async with BenchEnv(BenchSettings(nats=nats_server.url, quick=True)) as env:
        registry = _check(await run_one(env, "registry", QUICK), "registry")
        flows = QUICK.nodes * QUICK.flows
        assert registry[f"{flows:,} flows complete (burst)"] > 0
        assert registry[f"{flows:,} flows complete (--cache-reset)"] > 0
        assert registry["filtered flows query p50"] > 0
        memory = _check(await run_one(env, "memory", QUICK), "memory")
        assert memory["idle node (no Ray loaded)"] > 10  # MB: a live Python process
        assert memory[f"registry holding {flows:,} flows"] > 10
    # every child process the run started is gone (stopped by PID), no view bucket is left
    assert not env._procs
    assert await _bench_views(nats_server.url) == []


@pytest.mark.slow
def test_cli_json_record(nats_server: NatsServer) -> None:
    """`kodo-bus bench memory --quick --json` prints one valid record (no Ray needed)."""
    done = run_python("-m", "kodo_bus", "bench", "memory", "--quick", "--json")
    record = BenchRecord.model_validate(json.loads(done.stdout))
    assert [s.scenario for s in record.scenarios] == ["memory"]
    assert record.nats.startswith("embedded nats-server")
    node = record.scenarios[0].figures[0]
    assert node.ratio_to_floor is not None and node.target_met is not None


def test_cli_rejects_unknown_scenario() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kodo_bus", "bench", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "choose from all" in done.stderr


def test_indexed_flows_query_matches_the_plain_filter() -> None:
    """`View.flows` (indexed, for the registry query figure) answers exactly like `query_flows`."""
    import time

    from kodo_bus.bench.simnodes import catalog
    from kodo_bus.models import FlowsQuery
    from kodo_bus.view import View, flow_items, query_flows

    view = View("r", local=catalog("local-node", 4))
    for i in range(30):
        view.put_catalog(catalog(f"sim-{i:05d}", 12), time.time())
    view.stopped("sim-00003")
    queries = [
        FlowsQuery(),
        FlowsQuery(q="FLOW1", limit=50, offset=7),
        FlowsQuery(tags=["group3"]),
        FlowsQuery(node="sim-00004"),
        FlowsQuery(node="missing"),
        FlowsQuery(q="simulated", tags=["bench", "group1"], organization="bench"),
        FlowsQuery(q="flow number 3 of sim-00001"),
        FlowsQuery(q="flow11", node="sim-00029"),
        FlowsQuery(q="flow0\0"),
        FlowsQuery(organization="other"),
    ]
    for _ in range(2):  # a second pass answers from the cached index
        for query in queries:
            plain = query_flows((i for e in view.all_entries() for i in flow_items(e)), query)
            assert view.flows(query) == plain, query
        view.put_catalog(catalog("sim-00002", 3), time.time())  # the index must notice
