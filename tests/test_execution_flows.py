"""Flows the execution tests run (importable by Ray workers as `tests.test_execution_flows`)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from pydantic import BaseModel, Field

from kodo_bus.flows import Next, flow
from kodo_bus.tracer import Tracer


class AddInputs(BaseModel):
    a: int = Field(le=1000)
    b: int = Field(default=1, ge=0)


class Answer(BaseModel):
    colour: str
    count: int = Field(ge=1)


class Many(BaseModel):
    n: int = Field(ge=1, le=100_000)


class Sleep(BaseModel):
    seconds: float = 0.0
    tag: str = ""


@flow()
async def add(inputs: AddInputs, tracer: Tracer) -> int:
    await tracer.markdown(f"adding {inputs.a} and {inputs.b}")
    await tracer.progress(1, 1, "done")
    return inputs.a + inputs.b


@flow(name="add-sync")
def add_sync(inputs: AddInputs, tracer: Tracer) -> int:
    tracer.markdown_sync("sync adding")
    return inputs.a + inputs.b


@flow()
async def boom(inputs: dict[str, Any], tracer: Tracer) -> None:
    raise ValueError("bad things")


@flow()
async def die(inputs: dict[str, Any], tracer: Tracer) -> None:
    await tracer.text("about to die")
    await asyncio.sleep(0.2)
    os._exit(1)


@flow()
async def sleeper(inputs: Sleep, tracer: Tracer) -> str:
    await asyncio.sleep(inputs.seconds)
    return inputs.tag


@flow(name="sleeper-sync")
def sleeper_sync(inputs: Sleep, tracer: Tracer) -> str:
    time.sleep(inputs.seconds)
    return inputs.tag


@flow(timeout=1.0)
async def slow(inputs: dict[str, Any], tracer: Tracer) -> None:
    await asyncio.sleep(60)


@flow()
async def chatty(inputs: Sleep, tracer: Tracer) -> str:
    """Prints lines tagged with its own tag, interleaved with another execution's."""
    for i in range(20):
        print(f"{inputs.tag} out {i}")
        print(f"{inputs.tag} err {i}", file=sys.stderr)
        await asyncio.sleep(0.01)
    return inputs.tag


@flow(name="chatty-sync")
def chatty_sync(inputs: Sleep, tracer: Tracer) -> str:
    for i in range(20):
        print(f"{inputs.tag} out {i}")
        time.sleep(0.01)
    return inputs.tag


@flow()
async def many(inputs: Many, tracer: Tracer) -> int:
    for i in range(inputs.n):
        await tracer.text(str(i))
    return inputs.n


@flow()
async def asker(inputs: dict[str, Any], tracer: Tracer) -> dict[str, Any]:
    answer = await tracer.ask(Answer, "pick a colour", timeout=float(inputs.get("timeout", 30)))
    return answer.model_dump()


@flow(name="chain-nowhere")
async def chain_nowhere(inputs: dict[str, Any], tracer: Tracer) -> Next:
    """Chains a flow no node offers and no registry can find."""
    return Next(flows=["no-such-flow-anywhere"], outputs={})
