"""Flows of the second node of the chained-workflow test."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from kodo_bus.flows import flow


class Number(BaseModel):
    value: int = 0


@flow(summary="Step 2 of the chain (on another node)")
async def step2(inputs: Number, tracer: Any) -> tuple[list[str], dict[str, Any], str]:
    await tracer.log("info", "step 2 running", value=inputs.value)
    return ["step3"], {"value": inputs.value + 1}, "to step 3"
