"""examples/throughput.py keeps to any rate (issue 17, finding 10): it waited for its schedule
only every 100th event, so 4 events/s for 2 s went out as one burst of 8 at once.

The flow function runs as written with a tracer that notes when each event left; the example's
run through a real node is tests/test_examples.py::test_example_flows_on_up.
"""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from examples.throughput import Pressure, throughput
from kodo_bus import Tracer


class Clock:
    """Stands in for the tracer: the monotonic time of every markdown event."""

    def __init__(self) -> None:
        self.sent: list[float] = []

    async def markdown(self, text: str) -> None:
        self.sent.append(time.monotonic())

    async def progress(self, done: int, total: int, message: str = "") -> None:
        pass


async def run(rate: float, duration: float) -> tuple[list[float], dict[str, Any], float]:
    clock = Clock()
    started = time.monotonic()
    result = await throughput(Pressure(rate=rate, duration=duration), cast(Tracer, clock))
    return [t - started for t in clock.sent], result, time.monotonic() - started


@pytest.mark.parametrize(("rate", "duration"), [(4.0, 2.0), (0.5, 4.0), (50.0, 1.0)])
async def test_a_low_rate_is_kept_event_by_event(rate: float, duration: float) -> None:
    sent, result, took = await run(rate, duration)
    total = int(rate * duration)
    assert len(sent) == result["events"] == total
    for i, at in enumerate(sent):  # never early; late only by scheduling noise
        assert i / rate - 0.01 <= at <= i / rate + 0.25, (i, at, sent)
    assert duration - 0.01 <= took <= duration + 0.5
    assert result["rate"] == pytest.approx(rate, rel=0.15)


async def test_a_high_rate_still_runs_flat_out() -> None:
    """Pacing every event costs no rate: 20,000/s for 0.25 s is 5,000 events in about 0.25 s."""
    sent, _, took = await run(20_000.0, 0.25)
    assert len(sent) == 5_000
    assert took < 1.5, took
