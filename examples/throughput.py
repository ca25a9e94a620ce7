"""Event pressure on demand: emits markdown events at a set rate for a set time.

Watch it with `kodo-bus dashboard` while it runs, e.g. `kodo-bus launch throughput -i rate=2000`.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, Field

from kodo_bus import Tracer, flow


class Pressure(BaseModel):
    rate: float = Field(default=100.0, gt=0, le=100_000, description="Events per second")
    duration: float = Field(default=5.0, gt=0, le=3600, description="Seconds to run")


@flow(summary="Emits events at a given rate", tags=["example", "load"], version="1.0")
async def throughput(inputs: Pressure, tracer: Tracer) -> dict[str, float]:
    total = int(inputs.rate * inputs.duration)
    started = time.monotonic()
    for i in range(total):
        # Every event waits for its planned time (checking only every 100th let a low rate's
        # events out all at once); behind the plan, none waits, so a high rate catches up.
        await _until(started + i / inputs.rate)
        await tracer.markdown(f"event {i + 1} of {total}")
        if i % 100 == 0:
            await tracer.progress(i, total, "emitting")
    await _until(started + total / inputs.rate)  # the last event's share of the time, too
    await tracer.progress(total, total, "done")
    elapsed = time.monotonic() - started
    return {"events": total, "seconds": round(elapsed, 3), "rate": round(total / elapsed, 1)}


async def _until(moment: float) -> None:
    if (delay := moment - time.monotonic()) > 0:
        await asyncio.sleep(delay)
