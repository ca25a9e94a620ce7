"""Flows `kodo-bus try` runs in tests/test_try_local.py (no Ray here: this module must not
refer to it, or the trial would start one for it)."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from kodo_bus import Tracer, flow


class Show(BaseModel):
    """The same fields as tests/test_cli_exec.py's `show`, whose prompts `launch` is tested on."""

    name: str = Field(min_length=1, description="who to greet")
    count: int = Field(default=2, ge=1, le=5)
    colour: Literal["red", "blue"] = "red"


class Pick(BaseModel):
    colour: str
    count: int = Field(ge=1)


@flow(summary="Greets, prints and logs")
async def show(inputs: Show, tracer: Tracer) -> dict[str, Any]:
    await tracer.markdown(f"# Hello {inputs.name}")
    await tracer.info("greeting done", name=inputs.name)
    print(f"printed for {inputs.name}")
    return {"hello": inputs.name, "count": inputs.count, "colour": inputs.colour}


@flow(summary="Asks a human")
async def ask(inputs: dict[str, Any], tracer: Tracer) -> dict[str, Any]:
    answer = await tracer.ask(Pick, "pick a colour", timeout=60)
    return answer.model_dump()


SPUN = [0]
"""Turns of `spin`'s loop (read by a test running it in its own process)."""


@flow(summary="A sync flow that prints, then works until stopped")
def spin(inputs: dict[str, Any], tracer: Tracer) -> None:
    print("spinning")
    tracer.markdown_sync("spinning")
    while True:
        SPUN[0] += 1
        time.sleep(0.05)


@flow(summary="A sync flow blocked in C: deaf to its stop until the sleep returns")
def blocked(inputs: dict[str, Any], tracer: Tracer) -> None:
    sys.stdout.write("blocked\n")
    sys.stdout.flush()
    time.sleep(600)


@flow(summary="Waits until cancelled")
async def wait(inputs: dict[str, Any], tracer: Tracer) -> None:
    await tracer.markdown("waiting")
    await asyncio.Event().wait()
