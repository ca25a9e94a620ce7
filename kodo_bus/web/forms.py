"""HTML forms generated from a JSON schema (a flow's inputs, a question's answer), and the
submitted form turned back into the JSON the node validates.

The browser does not validate (`novalidate`): the node's own field-level messages are the ones
shown, at their fields, so the panel never disagrees with the node. Field names are prefixed
(`in.` + dotted path) so they never collide with the CSRF field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from ..errors import FieldProblem
from ..models import File

PREFIX = "in."
MAX_DEPTH = 8
"""Nested objects rendered as fieldsets at most this deep; deeper ones are a JSON box."""
SCALARS = ("string", "integer", "number", "boolean")
FILE_PROPERTIES = frozenset(File.model_fields)
"""An object schema with exactly these properties is a `File` input: the browser picks a file,
the panel uploads it and puts the reference in its place (top-level fields only, as
`Flow.launch(files=...)` takes them)."""


@dataclass
class FormField:
    """One input of a form: where its value goes (dotted path) and how to ask for it."""

    path: str
    label: str
    kind: str
    """text, integer, number, boolean, enum, list, json, object or file."""
    required: bool = False
    default: Any = None
    has_default: bool = False
    description: str = ""
    schema: dict[str, Any] = field(default_factory=dict)
    options: list[Any] = field(default_factory=list)
    item_kind: str = ""
    """For `list`: the kind of its items (one per line)."""
    children: list[FormField] = field(default_factory=list)


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` with `$ref`, one-item `allOf` and `X | None` unwrapped (pydantic's forms)."""
    out = dict(schema)
    for _ in range(MAX_DEPTH):
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part, {}) if isinstance(target, Mapping) else {}
            out = {**target, **{k: v for k, v in out.items() if k != "$ref"}}
            continue
        all_of = out.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1:
            out = {**all_of[0], **{k: v for k, v in out.items() if k != "allOf"}}
            continue
        any_of = out.get("anyOf")
        if isinstance(any_of, list):
            kept = [s for s in any_of if not (isinstance(s, Mapping) and s.get("type") == "null")]
            if len(kept) == 1:
                out = {**kept[0], **{k: v for k, v in out.items() if k != "anyOf"}}
                out["nullable"] = True
                continue
        break
    return out


def fields_of(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> list[FormField]:
    """The form fields of an object schema, in its properties' order."""
    return _object_fields(schema, root or schema, "", 0)


def _object_fields(
    schema: Mapping[str, Any], root: Mapping[str, Any], base: str, depth: int
) -> list[FormField]:
    resolved = _resolve(schema, root)
    props = resolved.get("properties")
    if not isinstance(props, Mapping):
        return []
    required = set(resolved.get("required") or [])
    return [
        _field(f"{base}{name}", name, sub, root, name in required, depth)
        for name, sub in props.items()
        if isinstance(sub, Mapping)
    ]


def _kind(schema: Mapping[str, Any]) -> str:
    if isinstance(schema.get("enum"), list):
        return "enum"
    if "const" in schema:
        return "enum"
    kind = schema.get("type")
    return {"string": "text", "integer": "integer", "number": "number", "boolean": "boolean"}.get(
        str(kind), str(kind) if kind in ("array", "object") else "json"
    )


def _field(  # noqa: PLR0917 (one call site, all positional)
    path: str,
    name: str,
    raw: Mapping[str, Any],
    root: Mapping[str, Any],
    required: bool,
    depth: int,
) -> FormField:
    schema = _resolve(raw, root)
    kind = _kind(schema)
    made = FormField(
        path=path,
        label=str(schema.get("title") or name.replace("_", " ").capitalize()),
        kind=kind,
        required=required,
        default=schema.get("default"),
        has_default="default" in schema,
        description=str(schema.get("description") or ""),
        schema=schema,
    )
    if kind == "enum":
        made.options = list(schema["enum"]) if "enum" in schema else [schema["const"]]
    elif kind == "array":
        items = _resolve(schema.get("items") or {}, root)
        item_kind = _kind(items)
        if item_kind in ("text", "integer", "number", "enum"):
            made.kind, made.item_kind = "list", item_kind
        else:
            made.kind = "json"
    elif kind == "object":
        if depth == 0 and is_file(schema):
            made.kind = "file"
        elif depth < MAX_DEPTH and isinstance(schema.get("properties"), Mapping):
            made.children = _object_fields(schema, root, f"{path}.", depth + 1)
        else:
            made.kind = "json"
    return made


def is_file(schema: Mapping[str, Any]) -> bool:
    props = schema.get("properties")
    return isinstance(props, Mapping) and set(props) == FILE_PROPERTIES


def file_fields(fields: Sequence[FormField]) -> list[str]:
    """The names of the form's file inputs (what `Flow.launch(files=...)` maps to paths)."""
    return [f.path for f in fields if f.kind == "file"]


# -- the form back to JSON ---------------------------------------------------------------------
def parse(fields: Sequence[FormField], form: Mapping[str, str]) -> dict[str, Any]:
    """The JSON a submitted form stands for: values converted to their field's type where
    they parse, else left as typed so the node names what is wrong; an empty optional field is
    left out (its default applies)."""
    data: dict[str, Any] = {}
    for f in fields:
        if f.kind == "file":
            continue  # uploaded apart (`uploads.py`), its reference added by the launch
        if f.kind == "object":
            data[f.path.rpartition(".")[2]] = parse(f.children, form)
            continue
        key = PREFIX + f.path
        if f.kind == "boolean":
            data[f.path.rpartition(".")[2]] = form.get(key) == "true"
            continue
        raw = form.get(key)
        if raw is None:
            continue
        value = _value(f, raw)
        if value is not _OMIT:
            data[f.path.rpartition(".")[2]] = value
    return data


_OMIT = object()


def _scalar(kind: str, raw: str) -> Any:
    text = raw.strip()
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            return raw
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            return raw
    return raw


def _value(f: FormField, raw: str) -> Any:
    if f.kind == "text":
        if raw == "" and not f.required:
            return _OMIT
        return raw
    if raw.strip() == "":
        return _OMIT
    if f.kind in ("integer", "number"):
        return _scalar(f.kind, raw)
    if f.kind == "enum":
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    if f.kind == "list":
        lines = [line for line in raw.splitlines() if line.strip()]
        if f.item_kind == "enum":
            return [_enum_item(line) for line in lines]
        return [_scalar(f.item_kind, line.strip()) for line in lines]
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _enum_item(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return line.strip()


# -- rendering -----------------------------------------------------------------------------------
def problems_by_field(
    fields: Sequence[FormField], problems: Sequence[FieldProblem]
) -> tuple[dict[str, list[str]], list[str]]:
    """Each problem placed at the deepest field its dotted path falls in; the rest (unknown
    inputs, whole-form problems) returned apart, to show above the form."""
    paths: list[str] = []

    def collect(fs: Sequence[FormField]) -> None:
        for f in fs:
            paths.append(f.path)
            collect(f.children)

    collect(fields)
    placed: dict[str, list[str]] = {}
    rest: list[str] = []
    for p in problems:
        owner = max(
            (x for x in paths if p.field == x or p.field.startswith(x + ".")),
            key=len,
            default=None,
        )
        if owner is None:
            rest.append(f"{p.field}: {p.message}" if p.field else p.message)
        else:
            placed.setdefault(owner, []).append(p.message)
    return placed, rest


def _bounds(schema: Mapping[str, Any]) -> str:
    """min/max of a number (no maxlength: the browser would cut text silently, where the node
    says what is wrong)."""
    attrs = []
    for key, attr in (("minimum", "min"), ("maximum", "max")):
        if isinstance(schema.get(key), int | float):
            attrs.append(f' {attr}="{schema[key]}"')
    return "".join(attrs)


def _rules(schema: Mapping[str, Any]) -> str:
    """The bounds in words, shown under the field next to its description."""
    said = []
    words = {
        "minimum": "≥",
        "exclusiveMinimum": ">",
        "maximum": "≤",
        "exclusiveMaximum": "<",
        "minLength": "at least {} characters",
        "maxLength": "at most {} characters",
        "minItems": "at least {} items",
        "maxItems": "at most {} items",
        "pattern": "matching {}",
    }
    for key, word in words.items():
        if key in schema:
            said.append(word.format(schema[key]) if "{}" in word else f"{word} {schema[key]}")
    return ", ".join(said)


def _shown(f: FormField, values: Mapping[str, str] | None) -> str:
    """The text a field shows: what was submitted, else its default."""
    if values is not None and PREFIX + f.path in values:
        return values[PREFIX + f.path]
    if not f.has_default or f.default is None:
        return ""
    if f.kind == "list" and isinstance(f.default, list):
        return "\n".join(json.dumps(v) if f.item_kind == "enum" else str(v) for v in f.default)
    if f.kind == "enum":
        return json.dumps(f.default)
    if f.kind == "json":
        return json.dumps(f.default, indent=2)
    return str(f.default)


def render(
    fields: Sequence[FormField],
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, list[str]] | None = None,
) -> str:
    """The fields as HTML (labels, help, current values, errors at their fields)."""
    errors = errors or {}
    return "".join(_render_one(f, values, errors) for f in fields)


def _render_one(
    f: FormField, values: Mapping[str, str] | None, errors: Mapping[str, list[str]]
) -> str:
    name = escape(PREFIX + f.path)
    ident = escape("f-" + f.path.replace(".", "-"))
    problems = errors.get(f.path, [])
    help_parts = [p for p in (f.description, _rules(f.schema)) if p]
    help_html = (
        f'<small class="help" id="{ident}-help">{escape(" — ".join(help_parts))}</small>'
        if help_parts
        else ""
    )
    err_html = "".join(
        f'<span class="field-error" data-field="{escape(f.path)}">{escape(m)}</span>'
        for m in problems
    )
    star = ' <span class="req" title="required">*</span>' if f.required else ""
    label = f'<label for="{ident}">{escape(f.label)}{star}</label>'
    invalid = ' aria-invalid="true"' if problems else ""
    described = f' aria-describedby="{ident}-help"' if help_parts else ""
    if f.kind == "object":
        inner = render(f.children, values, errors)
        return (
            f'<fieldset class="nested"><legend>{escape(f.label)}</legend>{help_html}'
            f"{err_html}{inner}</fieldset>"
        )
    if f.kind == "file":
        box = f'<input type="file" id="{ident}" name="{name}"{invalid}{described}>'
        return (
            f'<div class="field file{" has-error" if problems else ""}">{label}{box}{help_html}'
            f"{err_html}</div>"
        )
    shown = _shown(f, values)
    common = f'id="{ident}" name="{name}"{invalid}{described}'
    if f.kind == "boolean":
        checked = (values.get(PREFIX + f.path) == "true") if values is not None else bool(f.default)
        box = f'<input type="checkbox" {common} value="true"{" checked" if checked else ""}>'
        return (
            f'<div class="field check{" has-error" if problems else ""}">{box} {label}'
            f"{help_html}{err_html}</div>"
        )
    if f.kind == "enum":
        opts = [] if f.required else ['<option value="">—</option>']
        for option in f.options:
            value = json.dumps(option)
            sel = " selected" if value == shown else ""
            opts.append(f'<option value="{escape(value)}"{sel}>{escape(str(option))}</option>')
        control = f"<select {common}>{''.join(opts)}</select>"
    elif f.kind in ("integer", "number"):
        step = "1" if f.kind == "integer" else "any"
        control = (
            f'<input type="number" step="{step}"{_bounds(f.schema)} {common} '
            f'value="{escape(shown)}">'
        )
    elif f.kind == "list":
        control = (
            f'<textarea rows="3" {common} placeholder="one per line">{escape(shown)}</textarea>'
        )
    elif f.kind == "json":
        control = (
            f'<textarea rows="4" class="mono" {common} placeholder="JSON">{escape(shown)}'
            "</textarea>"
        )
    else:
        long_text = isinstance(f.schema.get("maxLength"), int) and f.schema["maxLength"] > 200
        if long_text:
            control = f'<textarea rows="4" {common}>{escape(shown)}</textarea>'
        else:
            control = f'<input type="text"{_bounds(f.schema)} {common} value="{escape(shown)}">'
    return (
        f'<div class="field{" has-error" if problems else ""}">{label}{control}{help_html}'
        f"{err_html}</div>"
    )
