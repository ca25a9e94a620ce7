"""Client-side validation reports exactly what the node's own pydantic model would."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from kodo_bus.errors import problems_from
from kodo_bus.schema_model import model_from_schema


class Color(StrEnum):
    red = "red"
    blue = "blue"


class Inner(BaseModel):
    depth: int = Field(ge=0, le=3)
    label: str = Field(default="x", min_length=1, max_length=5)


class Rich(BaseModel):
    tasks: int = Field(default=25, ge=1, le=500, description="How many tasks")
    ratio: float = Field(default=0.5, gt=0, lt=1)
    name: str = Field(min_length=2, pattern=r"^[a-z]+$")
    mode: Literal["fast", "slow"] = "fast"
    color: Color = Color.red
    maybe: int | None = None
    tags: list[str] = Field(default_factory=list, max_length=3)
    inner: Inner | None = None
    items: list[Inner] = Field(default_factory=list)
    extra: dict[str, int] = Field(default_factory=dict)
    when: dt.datetime | None = None
    flag: bool = False


def _messages(model: type[BaseModel], data: Any) -> list[tuple[str, str]] | None:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return sorted((p.field, p.message) for p in problems_from(exc))
    return None


REBUILT = model_from_schema(Rich.model_json_schema())

CASES: list[dict[str, Any]] = [
    {"name": "ok"},
    {},
    {"name": "A", "tasks": 501, "ratio": 1.0},
    {"name": "abc", "tasks": "many", "mode": "medium", "color": "green"},
    {"name": "abc", "maybe": "x", "tags": ["a", "b", "c", "d"]},
    {"name": "abc", "inner": {"depth": 9, "label": ""}},
    {"name": "abc", "items": [{"depth": 1}, {"depth": -1}], "extra": {"a": "b"}},
    {"name": "abc", "when": "not a date", "flag": "perhaps"},
    {"name": "abc", "when": "2026-01-01T00:00:00Z", "tasks": "7"},
]


@pytest.mark.parametrize("data", CASES)
def test_same_messages_as_the_original_model(data: dict[str, Any]) -> None:
    assert REBUILT is not None
    assert _messages(REBUILT, data) == _messages(Rich, data)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["tasks", "ratio", "name", "mode", "color", "maybe", "tags", "flag"]),
        st.none()
        | st.integers(-5, 600)
        | st.floats(-1, 2, allow_nan=False)
        | st.text(max_size=4)
        | st.lists(st.text(max_size=2), max_size=5)
        | st.booleans(),
    )
)
def test_same_verdict_on_arbitrary_inputs(data: dict[str, Any]) -> None:
    assert REBUILT is not None
    assert _messages(REBUILT, data) == _messages(Rich, data)


def test_no_schema_means_no_model() -> None:
    assert model_from_schema({}) is None
