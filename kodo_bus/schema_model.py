"""Rebuild a pydantic model from a flow's input JSON schema, for validation on the client.

A client only has the catalog's JSON schema, not the node's Python model. Rebuilding a pydantic
model from it means the client validates with the same engine and so reports the same
per-field messages as the node would ("Input should be less than or equal to 10", ...), without a
round trip. It covers what pydantic itself emits for input models: scalar types with bounds,
enums and literals, optionals and unions, lists, dicts and nested models through `$defs`.
Anything it does not understand becomes `Any`, so the node stays the final judge.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool}
_FORMATS: dict[str, Any] = {"date-time": dt.datetime, "date": dt.date, "time": dt.time}
_NUMERIC_BOUNDS = {
    "minimum": "ge",
    "maximum": "le",
    "exclusiveMinimum": "gt",
    "exclusiveMaximum": "lt",
    "multipleOf": "multiple_of",
}
_LENGTH_BOUNDS = {
    "minLength": "min_length",
    "maxLength": "max_length",
    "minItems": "min_length",
    "maxItems": "max_length",
    "pattern": "pattern",
}


class _Builder:
    def __init__(self, root: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = root.get("$defs", {})
        self.models: dict[str, type[BaseModel]] = {}

    def model(self, schema: dict[str, Any], name: str) -> type[BaseModel]:
        if name in self.models:
            return self.models[name]
        required = set(schema.get("required", []))
        fields: dict[str, Any] = {}
        for prop, sub in schema.get("properties", {}).items():
            annotation = self.type_of(sub)
            extra = {"description": sub["description"]} if "description" in sub else {}
            if prop in required:
                fields[prop] = (annotation, Field(**extra))
            else:
                fields[prop] = (annotation, Field(default=sub.get("default"), **extra))
        forbid = schema.get("additionalProperties") is False
        model: type[BaseModel] = create_model(
            _identifier(schema.get("title", name)),
            __config__=ConfigDict(extra="forbid" if forbid else "ignore"),
            **fields,
        )
        self.models[name] = model
        return model

    def type_of(self, schema: dict[str, Any]) -> Any:
        if "$ref" in schema:
            ref = schema["$ref"].rsplit("/", 1)[-1]
            target = self.defs.get(ref, {})
            if target.get("type") == "object" or "properties" in target:
                return self.model(target, ref)
            return self.type_of(target)
        if "enum" in schema:
            return Literal[tuple(schema["enum"])]
        if "const" in schema:
            return Literal[schema["const"]]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return Union[tuple(self.type_of(s) for s in schema[key])]  # noqa: UP007
        kind = schema.get("type")
        if isinstance(kind, list):
            return Union[tuple(self.type_of({**schema, "type": k}) for k in kind)]  # noqa: UP007
        if kind == "null":
            return type(None)
        if kind == "array":
            item = self.type_of(schema.get("items", {}))
            return self._bounded(list[item], schema, _LENGTH_BOUNDS)  # type: ignore[valid-type]
        if kind == "object":
            if "properties" in schema:
                return self.model(schema, schema.get("title", "Object"))
            values = schema.get("additionalProperties")
            value_type = self.type_of(values) if isinstance(values, dict) else Any
            return dict[str, value_type]  # type: ignore[valid-type]
        if kind == "string" and schema.get("format") in _FORMATS:
            return _FORMATS[schema["format"]]
        if kind in _SCALARS:
            bounds = _NUMERIC_BOUNDS if kind in ("integer", "number") else _LENGTH_BOUNDS
            return self._bounded(_SCALARS[kind], schema, bounds)
        return Any

    @staticmethod
    def _bounded(base: Any, schema: dict[str, Any], names: dict[str, str]) -> Any:
        constraints = {names[k]: v for k, v in schema.items() if k in names}
        return Annotated[base, Field(**constraints)] if constraints else base


def _identifier(title: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in title)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"M_{cleaned}"


def model_from_schema(schema: dict[str, Any], name: str = "Inputs") -> type[BaseModel] | None:
    """A pydantic model equivalent to `schema`, or None when the flow declared no input model."""
    if not schema or "properties" not in schema:
        return None
    return _Builder(schema).model(schema, name)
