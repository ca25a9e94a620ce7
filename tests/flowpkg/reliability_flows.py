"""Flows of the reliability tests (importable by Ray workers as `tests.flowpkg.reliability_flows`).

They report facts the tests need from inside the worker (its PID, how far it got) as events, so
a test can kill exactly that process or check exactly what was written.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pydantic import BaseModel, Field

from kodo_bus.flows import flow
from kodo_bus.tracer import Tracer


class Emit(BaseModel):
    n: int = Field(default=5000, ge=1, le=100_000)
    batch: int = Field(default=100, ge=1)
    pause: float = Field(default=0.02, ge=0)
    """Seconds between batches, so the run lasts long enough to be interrupted."""


class Hold(BaseModel):
    seconds: float = Field(default=60.0, ge=0)
    tag: str = ""


@flow(summary="Emits n numbered text events, in batches with pauses")
async def emit(inputs: Emit, tracer: Tracer) -> int:
    for i in range(inputs.n):
        await tracer.text(str(i))
        if (i + 1) % inputs.batch == 0:
            await asyncio.sleep(inputs.pause)
    return inputs.n


@flow(summary="Says its worker PID, then sleeps")
async def hold(inputs: Hold, tracer: Tracer) -> str:
    await tracer.result({"pid": os.getpid()})
    await asyncio.sleep(inputs.seconds)
    return inputs.tag


@flow(summary="Says its worker PID, then ticks once per 0.1 s")
async def ticker(inputs: Hold, tracer: Tracer) -> int:
    await tracer.result({"pid": os.getpid()})
    ticks = int(inputs.seconds * 10)
    for i in range(ticks):
        await tracer.progress(i + 1, ticks)
        await asyncio.sleep(0.1)
    return ticks


@flow(summary="Echoes its inputs")
async def echo(inputs: dict[str, Any], tracer: Tracer) -> dict[str, Any]:
    return inputs


class Strict(BaseModel):
    token: str = Field(pattern="^kodo-fuzz-ok$")
    """No generated message can be a valid launch by chance."""


@flow(summary="Accepts one exact input only")
async def strict(inputs: Strict, tracer: Tracer) -> str:
    return inputs.token
