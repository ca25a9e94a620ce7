"""Flows the SDK tests launch on a real node."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, Field

from kodo_bus.flows import Next, flow


class Greeting(BaseModel):
    name: str = Field(min_length=1, description="who to greet")
    times: int = Field(default=1, ge=1, le=5)


@flow(summary="Greets someone", tags=["demo"], version="1.0", author="sdk@test")
async def greet(inputs: Greeting, tracer: Any) -> dict[str, Any]:
    for i in range(inputs.times):
        await tracer.markdown(f"# Hello {inputs.name} ({i + 1})")
    return {"greeting": f"Hello {inputs.name}", "times": inputs.times}


@flow(summary="Always fails")
async def explode(inputs: dict[str, Any], tracer: Any) -> None:
    raise ValueError(f"boom: {inputs.get('why', 'no reason')}")


@flow(summary="Runs until cancelled")
async def forever(inputs: dict[str, Any], tracer: Any) -> None:
    await tracer.markdown("started")
    await asyncio.Event().wait()


class Approval(BaseModel):
    approved: bool
    comment: str = ""


@flow(summary="Asks a human")
async def approve(inputs: dict[str, Any], tracer: Any) -> dict[str, Any]:
    answer = await tracer.ask(Approval, "Approve?", timeout=60)
    return {"approved": answer.approved, "comment": answer.comment}


class Number(BaseModel):
    value: int = 0
    depth: int = 0


@flow(summary="Step 1 of the chain")
async def step1(inputs: Number, tracer: Any) -> Next:
    return Next(flows=["step2"], outputs={"value": inputs.value + 1}, message="to step 2")


@flow(summary="Step 3 of the chain")
async def step3(inputs: Number, tracer: Any) -> dict[str, int]:
    return {"value": inputs.value * 10}


@flow(summary="Chains itself forever")
async def loop(inputs: Number, tracer: Any) -> Next:
    return Next(flows=["loop"], outputs={"value": inputs.value + 1})


class Received(BaseModel):
    result: str = ""


@flow(name="next_node", summary="Downstream of the FlowKit example")
async def next_node(inputs: Received, tracer: Any) -> dict[str, str]:
    return {"received": inputs.result}
