"""A three-step chained workflow across two nodes: extract (node A) → transform (node B) → load.

Each step returns `Next(...)` naming the next flow; kodo-bus launches it with the outputs as its
inputs, as a child of the current execution. Run `examples/pipeline/node_a.yaml` and
`node_b.yaml` (or `kodo-bus up`, which serves all three on one node) and launch `extract`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from kodo_bus import Next, Tracer, flow


class Text(BaseModel):
    text: str = Field(default="kodo bus moves flows", description="Words to process")


class Words(BaseModel):
    words: list[str]


@flow(summary="Step 1: split text into words", tags=["example", "pipeline"])
async def extract(inputs: Text, tracer: Tracer) -> Next:
    words = inputs.text.split()
    await tracer.markdown(f"extracted {len(words)} words")
    return Next(flows=["transform"], outputs={"words": words}, message="extracted")


@flow(summary="Step 2: upper-case the words", tags=["example", "pipeline"])
async def transform(inputs: Words, tracer: Tracer) -> Next:
    await tracer.info("transforming", count=len(inputs.words))
    return Next(flows=["load"], outputs={"words": [w.upper() for w in inputs.words]})


@flow(summary="Step 3: join the words", tags=["example", "pipeline"])
async def load(inputs: Words, tracer: Tracer) -> str:
    result = " ".join(inputs.words)
    await tracer.markdown(f"**{result}**")
    return result
