"""Fifty generated flows for the walkthrough's hybrid (a provider with flows of its own)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from kodo_bus.flows import flow


class Number(BaseModel):
    x: float = 0.0


def _make(i: int) -> Any:
    def scale(inputs: Number, tracer: Any) -> float:
        return inputs.x * i

    scale.__name__ = scale.__qualname__ = f"scale_{i:02d}"
    return flow(summary=f"Multiplies x by {i}", tags=["math", f"group{i % 5}"], version="1.0")(
        scale
    )


for _i in range(1, 51):
    globals()[f"scale_{_i:02d}"] = _make(_i)
