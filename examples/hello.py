"""The smallest flow: a pydantic input model in, markdown out (served by `kodo-bus up`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from kodo_bus import Tracer, flow


class HelloInputs(BaseModel):
    name: str = Field(default="World", description="Who to greet", max_length=100)


@flow(summary="Greets someone in markdown", tags=["example"], version="1.0")
async def hello(inputs: HelloInputs, tracer: Tracer) -> str:
    """Says hello. The markdown event shows up live in `kodo-bus` clients and dashboards."""
    greeting = f"Hello, **{inputs.name}**!"
    await tracer.markdown(greeting)
    return greeting
