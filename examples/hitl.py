"""Human in the loop: the flow asks a question mid-run and carries on with the answer.

Launch it with `kodo-bus launch hitl` (the CLI prompts for the answer) or from Python:
`await execution.answer({"approved": True, "comment": "ship it"})` while it is `awaiting`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from kodo_bus import Tracer, flow


class Draft(BaseModel):
    title: str = Field(default="Quarterly report", description="What to get approved")


class Approval(BaseModel):
    approved: bool = Field(description="Publish the draft?")
    comment: str = Field(default="", description="A note for the author")


@flow(summary="Asks a human to approve a draft", tags=["example", "hitl"], version="1.0")
async def hitl(inputs: Draft, tracer: Tracer) -> dict[str, object]:
    await tracer.markdown(f"## Draft: {inputs.title}\nWaiting for a reviewer…")
    answer = await tracer.ask(Approval, f"Approve '{inputs.title}'?", timeout=600)
    verdict = "approved" if answer.approved else "rejected"
    await tracer.markdown(f"The reviewer **{verdict}** it. {answer.comment}")
    return {"title": inputs.title, "approved": answer.approved, "comment": answer.comment}
