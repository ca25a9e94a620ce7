"""Five small flows for the federation walkthrough's node."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from kodo_bus.flows import flow


class Text(BaseModel):
    text: str = Field(description="Some text")


@flow(summary="Upper-cases a text", tags=["text"], version="1.0", author="examples@kodo")
def upper(inputs: Text, tracer: Any) -> str:
    return inputs.text.upper()


@flow(summary="Lower-cases a text", tags=["text"], version="1.0", author="examples@kodo")
def lower(inputs: Text, tracer: Any) -> str:
    return inputs.text.lower()


@flow(summary="Reverses a text", tags=["text"], version="1.0", author="examples@kodo")
def reverse(inputs: Text, tracer: Any) -> str:
    return inputs.text[::-1]


@flow(summary="Counts the words of a text", tags=["text", "stats"], version="1.0")
def words(inputs: Text, tracer: Any) -> int:
    return len(inputs.text.split())


@flow(summary="Counts the characters of a text", tags=["stats"], version="1.0")
def chars(inputs: Text, tracer: Any) -> int:
    return len(inputs.text)
