"""Benchmark-only flows: they do as little as possible so the figures measure kodo-bus itself."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..flows import flow
from ..tracer import Tracer


class NoInputs(BaseModel):
    """The no-op flow takes nothing."""


class EmitInputs(BaseModel):
    """How many markdown events to emit."""

    n: int = Field(default=1000, ge=0, le=10_000_000)


@flow(name="bench-noop", summary="Does nothing: measures launch, scheduling and the final event")
async def noop(inputs: NoInputs, tracer: Tracer) -> int:
    return 0


@flow(name="bench-emit", summary="Emits n small markdown events as fast as the tracer takes them")
async def emit(inputs: EmitInputs, tracer: Tracer) -> int:
    for i in range(inputs.n):
        await tracer.markdown(f"event {i}")
    return inputs.n


FLOW_MODULE = __name__
"""What a node's config names to serve these flows (`flows: [{module: ...}]`)."""
