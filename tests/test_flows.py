"""Declaring flows with @flow and loading them from config declarations."""

from __future__ import annotations

import pytest

from kodo_bus.config import FlowDecl
from kodo_bus.errors import ConfigError, FieldProblem, InputsInvalid
from kodo_bus.flows import load_flows, spec_of

from .flowpkg import basic


def test_decorator_builds_catalog_entry_with_schema() -> None:
    spec = spec_of(basic.add)
    assert spec is not None and spec.is_async and spec.entry == "tests.flowpkg.basic:add"
    info = spec.info()
    assert (info.name, info.summary, info.tags, info.version) == (
        "add",
        "Adds two numbers",
        ["math"],
        "1.0",
    )
    assert "Longer description" in info.description
    props = info.input_schema["properties"]
    assert props["a"]["maximum"] == 1000 and props["a"]["description"] == "first addend"
    assert props["b"]["default"] == 1
    assert props["mode"]["enum"] == ["plain", "fancy"]
    assert info.input_schema["required"] == ["a"]


def test_validation_lists_every_bad_field() -> None:
    spec = spec_of(basic.add)
    assert spec is not None
    with pytest.raises(InputsInvalid) as info:
        spec.validate({"a": 5000, "b": "x", "mode": "odd"})
    fields = {p.field for p in info.value.problems}
    assert fields == {"a", "b", "mode"}
    assert FieldProblem("a", "Input should be less than or equal to 1000") in info.value.problems
    assert spec.validate({"a": 1}) == basic.AddInputs(a=1)


def test_module_and_entry_declarations() -> None:
    specs = load_flows([FlowDecl(module="tests.flowpkg.basic")])
    assert [s.name for s in specs] == ["add", "echo-sync"]
    assert not specs[1].is_async and specs[1].inputs is None
    [spec] = load_flows(
        [
            FlowDecl(
                entry="tests.flowpkg.basic:plain",
                name="renamed",
                inputs="tests.flowpkg.basic:AddInputs",
                tags=["x"],
                summary="s",
            )
        ]
    )
    assert (spec.name, spec.inputs, spec.tags, spec.summary) == (
        "renamed",
        basic.AddInputs,
        ("x",),
        "s",
    )


@pytest.mark.parametrize(
    ("decl", "message"),
    [
        (FlowDecl(module="tests.flowpkg.nope"), "cannot import flow module"),
        (FlowDecl(entry="tests.flowpkg.basic:missing"), "has no attribute"),
        (FlowDecl(entry="tests.flowpkg.basic"), "not of the form"),
        (
            FlowDecl(entry="tests.flowpkg.basic:plain", inputs="tests.flowpkg.basic:plain"),
            "not a pydantic model",
        ),
        (FlowDecl(module="tests.flowpkg"), "declares no @flow"),
    ],
)
def test_bad_declarations_are_config_errors(decl: FlowDecl, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_flows([decl])


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="declared twice"):
        load_flows(
            [FlowDecl(module="tests.flowpkg.basic"), FlowDecl(entry="tests.flowpkg.basic:add")]
        )


def test_next_from_flowkit_tuple_and_model() -> None:
    from kodo_bus.flows import Next

    assert Next.from_result((["a", "b"], {"x": 1}, "ok")) == Next(
        flows=["a", "b"], outputs={"x": 1}, message="ok"
    )
    assert Next.from_result(([], {}, "done")) == Next(message="done")
    nxt = Next(flows=["p"])
    assert Next.from_result(nxt) is nxt
    not_next: object
    for not_next in (("a", {}, "m"), ([1], {}, "m"), [["a"], {}, "m"], 42, None, (["a"], {})):
        assert Next.from_result(not_next) is None
