"""`kodo-bus bench soak`: the report's shape, and a store that levels off at its limit.

The soak's own figures (stream bytes, consumers) come from the embedded server's monitoring
endpoints, so a tiny run with tiny limits checks both the instrument and the storage policy:
without a size limit on KODO_EVENTS (before issue 18) the stream of this run grows past 2 MiB
(~3.4 KB per no-op execution, thousands of executions), and the "most bytes" figure fails.
"""

from __future__ import annotations

import json

import pytest

from kodo_bus.bench.common import BenchRecord
from kodo_bus.bench.env import BenchEnv, BenchError, BenchSettings
from kodo_bus.bench.soak import COLUMNS, parse_bytes
from kodo_bus.bench.suite import QUICK, run_one
from kodo_bus.server import NatsServer

from .conftest import run_python

MiB = 2**20


def test_parse_bytes() -> None:
    assert parse_bytes("64MiB") == 64 * MiB
    assert parse_bytes("64M") == 64 * MiB
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30)
    assert parse_bytes("4096") == 4096
    assert parse_bytes("2 kb") == 2048
    for bad in ("", "MiB", "-3", "64 apples"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


async def test_soak_refuses_a_given_bus(nats_server: NatsServer) -> None:
    """It shrinks the store's limits: never on a bus it did not start."""
    async with BenchEnv(BenchSettings(nats=nats_server.url, quick=True)) as env:
        with pytest.raises(BenchError, match="without --nats"):
            await run_one(env, "soak", QUICK)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cli_soak_levels_off_at_its_limits() -> None:
    """12 s at full rate against a 2 MiB events stream and a 1 MiB records bucket."""
    sizes = ["--minutes", "0.2", "--sample-every", "2", "--max-running", "8"]
    limits = ["--events-max-bytes", "2MiB", "--records-max-bytes", "1MiB"]
    done = run_python("-m", "kodo_bus", "bench", "soak", "--json", *sizes, *limits, timeout=220)
    record = BenchRecord.model_validate(json.loads(done.stdout))
    assert [s.scenario for s in record.scenarios] == ["soak"]
    soak = record.scenarios[0]
    assert soak.params["events_max_bytes"] == 2 * MiB
    assert soak.params["records_max_bytes"] == MiB
    # a table over time: a first sample at 0, one every ~2 s, the last after the deadline
    samples = soak.samples
    assert len(samples) >= 5, samples
    keys = {key for key, *_ in COLUMNS}
    assert all(set(p) == keys for p in samples)
    times = [p["t"] for p in samples]
    assert times[0] == 0 and times == sorted(times) and times[-1] >= 12
    assert samples[-1]["executions"] > 500  # enough to fill the limits several times over
    # the store levelled off at its limits (and got there: the run was long enough)
    assert max(p["events_bytes"] for p in samples) <= 2 * MiB
    assert samples[-1]["events_bytes"] >= 1.5 * MiB
    assert max(p["records_bytes"] for p in samples) <= MiB
    figures = {f.name: f for f in soak.figures}
    assert figures["errors (launch, error, unfinished, slow consumers)"].value == 0
    assert figures["JetStream consumers, end - start"].value <= 0
    assert figures["connections, end - start"].value <= 0
    assert all(f.target_met is not False for f in soak.figures), soak.figures
    assert soak.params["verdict"] == "pass"
    assert any(n.startswith("verdict: PASS") for n in soak.notes)
    assert "reached its limit" in " ".join(soak.notes)
