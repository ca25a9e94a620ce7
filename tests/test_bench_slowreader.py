"""`kodo-bus bench slowreader`: the report's shape, the raw reader, and the comparison config.

The figures themselves are the bench's (a shared 2-core machine makes a rate threshold a coin
toss in a test); here: the scenario runs on both configs and reports a rate and a ratio for
each, the raw reader really subscribes and reads at its pace, and the comparison config differs
from the packaged one in `no_fast_producer_stall` only.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from kodo_bus.bench.env import BenchEnv, BenchSettings
from kodo_bus.bench.slowreader import SlowReader, stall_config
from kodo_bus.bench.suite import QUICK, run_one
from kodo_bus.bus import connect
from kodo_bus.config import ConnectSettings
from kodo_bus.server import PACKAGED_CONFIG, NatsServer


def test_the_comparison_config_turns_the_setting_off_and_nothing_else(tmp_path: Path) -> None:
    packaged = PACKAGED_CONFIG.read_text().splitlines()
    off = stall_config(tmp_path).read_text().splitlines()
    changed = [(a, b) for a, b in zip(packaged, off, strict=True) if a != b]
    assert changed == [("no_fast_producer_stall: true", "no_fast_producer_stall: false")]


async def test_the_slow_reader_reads_at_its_pace(nats_server: NatsServer) -> None:
    """2 MB published at once reach the raw reader at about its rate, PINGs answered."""
    assert nats_server.port is not None
    reader = SlowReader(nats_server.host or "127.0.0.1", nats_server.port, "slow.test.>", 200_000)
    reader.start()
    try:
        assert await asyncio.to_thread(reader.ready.wait, 10)
        assert reader.failure is None
        nc = await connect(ConnectSettings(nats=[nats_server.url]))
        try:
            for i in range(200):
                await nc.publish(f"slow.test.{i}", b"x" * 10_000)
            await nc.flush()
        finally:
            await nc.close()
        started = time.monotonic()
        deadline = started + 30
        while reader.bytes_read < 1_000_000:
            assert time.monotonic() < deadline, reader.bytes_read
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        assert took > 3.0, f"1 MB in {took:.1f} s: not paced at 200 KB/s"
        assert reader.messages >= 50
        assert reader.failure is None and not reader.error
    finally:
        reader.stopping.set()
        await asyncio.to_thread(reader.join, 10)
    assert not reader.is_alive()


@pytest.mark.ray
@pytest.mark.slow
async def test_slowreader_scenario_reports_both_configs(ray_address: str) -> None:
    async with BenchEnv(BenchSettings(quick=True)) as env:
        result = await run_one(env, "slowreader", QUICK)
    figures = {f.name: f for f in result.figures}
    for label in ("packaged config", "no_fast_producer_stall off"):
        assert figures[f"{label}: flow alone"].value > 0
        slowed = figures[f"{label}: with a slow reader"]
        assert slowed.value > 0 and slowed.floor is not None
        ratio = figures[f"{label}: with ÷ alone"]
        assert ratio.value == pytest.approx(slowed.value / slowed.floor.value)
    assert figures["packaged config: with ÷ alone"].target == 0.8
    assert figures["no_fast_producer_stall off: with ÷ alone"].target is None
    assert len(result.notes) == 2 and all("the reader read" in n for n in result.notes)
