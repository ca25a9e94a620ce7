"""Flows of tests/test_storage.py: one kept for the bus's `events_max_age`, one for 2 s."""

from __future__ import annotations

from pydantic import BaseModel

from kodo_bus import Tracer, flow


class Say(BaseModel):
    text: str = "hi"


@flow(summary="kept for the bus's default age")
async def kept(inputs: Say, tracer: Tracer) -> str:
    await tracer.markdown(inputs.text)
    return inputs.text


@flow(summary="kept for 2 seconds", retention=2)
async def brief(inputs: Say, tracer: Tracer) -> str:
    await tracer.markdown(inputs.text)
    return inputs.text
