"""Flows the web panel's browser tests launch (served by a real node; Ray workers import them
as `tests.web_flows`)."""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel, Field

from kodo_bus import Tracer, flow
from kodo_bus.flows import Next

PAYLOAD = "window.__pwned = 1"
"""What every hostile snippet below tries to run: the test asserts it never did."""


class Address(BaseModel):
    city: str = Field(default="Berlin", description="Where the letter goes")
    zip: int = Field(default=10115, ge=1000, le=99999)


class Greeting(BaseModel):
    name: str = Field(description="Who to greet", max_length=40)
    times: int = Field(default=1, ge=1, le=5, description="How many greetings")
    loud: bool = Field(default=False, description="Shout it")
    tone: Literal["warm", "formal"] = Field(default="warm", description="How it sounds")
    extras: list[str] = Field(default_factory=list, description="Words to add")
    ratio: float = Field(default=0.5, ge=0, le=1)
    address: Address = Field(default_factory=Address)


@flow(summary="Greets, with every kind of form field", tags=["web"], version="2.1", author="QA")
async def greet(inputs: Greeting, tracer: Tracer) -> dict[str, object]:
    """Exercises the launch form: text, bounded numbers, a boolean, an enum, a list, an
    object — then progress, a log line, stdout and markdown on the execution page."""
    for i in range(inputs.times):
        await tracer.progress(i + 1, inputs.times, f"greeting {i + 1}")
    await tracer.info(f"greeting {inputs.name}")
    print(f"printed for {inputs.name}")
    word = "HELLO" if inputs.loud else "Hello"
    await tracer.markdown(" ".join([f"{word}, **{inputs.name}**!"] * inputs.times))
    return inputs.model_dump()


@flow(summary="Emits hostile markdown and html", tags=["web"])
async def xss(inputs: dict[str, object], tracer: Tracer) -> str:
    await tracer.markdown(
        f'# Title\n\n<script>{PAYLOAD}</script>\n\n<img src=x onerror="{PAYLOAD}">\n\n'
        f'[click](javascript:{PAYLOAD}) and <a href="javascript:{PAYLOAD}">this</a>'
    )
    await tracer.html(
        f'<p>html <b>kept</b></p><script>{PAYLOAD}</script><img src="x" onerror="{PAYLOAD}">'
        f'<svg onload="{PAYLOAD}"></svg><iframe src="javascript:{PAYLOAD}"></iframe>'
        f'<a href="  jav&#x09;ascript:{PAYLOAD}">tab</a><div style="x" onclick="{PAYLOAD}">d</div>'
    )
    await tracer.text(f"<script>{PAYLOAD}</script>")
    return f"<img src=x onerror='{PAYLOAD}'>"


@flow(summary="Waits until cancelled", tags=["web"])
async def linger(inputs: dict[str, object], tracer: Tracer) -> None:
    await tracer.markdown("lingering")
    await asyncio.Event().wait()


class Leaf(BaseModel):
    word: str = "leaf"


@flow(summary="Chains a next flow", tags=["web"])
async def trunk(inputs: dict[str, object], tracer: Tracer) -> Next:
    await tracer.markdown("trunk ran")
    return Next(flows=["leaf"], outputs={"word": "from trunk"})


@flow(summary="The next flow of trunk", tags=["web"])
async def leaf(inputs: Leaf, tracer: Tracer) -> str:
    return inputs.word
