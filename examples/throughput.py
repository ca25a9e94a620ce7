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
        await tracer.markdown(f"event {i + 1} of {total}")
        if i % 100 == 0:
            await tracer.progress(i, total, "emitting")
            # keep to the rate: wait until this event's planned time
            delay = started + i / inputs.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    await tracer.progress(total, total, "done")
    elapsed = time.monotonic() - started
    return {"events": total, "seconds": round(elapsed, 3), "rate": round(total / elapsed, 1)}
