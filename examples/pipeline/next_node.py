"""The downstream flow FlowKit's complete example names (`return ["next_node"], ...`)."""

from __future__ import annotations

from pydantic import BaseModel

from kodo_bus import Tracer, flow


class Processed(BaseModel):
    result: str = ""


@flow(name="next_node", summary="Receives the FlowKit example's result", tags=["example"])
async def next_node(inputs: Processed, tracer: Tracer) -> dict[str, str]:
    await tracer.markdown(f"received `{inputs.result}`")
    return {"received": inputs.result}
