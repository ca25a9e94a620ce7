"""A few small flows for the tests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from kodo_bus.flows import flow


class AddInputs(BaseModel):
    """Two numbers to add."""

    a: int = Field(description="first addend", le=1000)
    b: int = Field(default=1, description="second addend")
    mode: Literal["plain", "fancy"] = "plain"


@flow(summary="Adds two numbers", tags=["math"], version="1.0", author="test@kodo")
async def add(inputs: AddInputs, tracer: Any) -> int:
    """Adds a and b.

    Longer description here."""
    return inputs.a + inputs.b


@flow(name="echo-sync")
def echo(inputs: dict[str, Any], tracer: Any) -> dict[str, Any]:
    """Returns its inputs unchanged."""
    return inputs


def plain(inputs: dict[str, Any], tracer: Any) -> str:
    return "plain"
