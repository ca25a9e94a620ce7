"""The wire contract, generated: a JSON Schema (2020-12) per message, and `docs/wire.md`.

A client in another language builds on `subjects.md` (which subject carries which message) and
on these files (what each message holds), never on our Python code. Both outputs come from the
pydantic models of `models.py` (and the work batches of `executor.py`), so they cannot drift
from what the code accepts: `tests/test_wire_contract.py` fails when a model changed and the
committed files were not regenerated.

    python -m kodo_bus.schemas            # rewrite schemas/ and docs/wire.md
    python -m kodo_bus.schemas --check    # exit 1, naming the stale files, if they differ

Each schema is self-contained (`$defs` inside), so a validator needs no loader; its `$id`
carries the schema version (`urn:kodo-bus:v<v>:<Message>`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from . import models
from .models import SCHEMA_VERSION

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = "schemas"
WIRE_DOC = "docs/wire.md"
BURST_MAX = 50
"""Events in one burst message at most (the publisher's batch limit, documented in subjects.md)."""


@dataclass(frozen=True)
class Spec:
    """One message of the contract: its name (and file), where it travels, how it is read."""

    name: str
    schema: Callable[[], dict[str, Any]]
    use: str
    """request (strict), reply, broadcast, stored (KV value) or internal (node ↔ its workers)."""
    summary: str
    fields_of: type[BaseModel] | None


def _model(model: type[BaseModel], use: str) -> Spec:
    doc = (model.__doc__ or "").strip()
    return Spec(model.__name__, model.model_json_schema, use, doc, model)


def _burst() -> dict[str, Any]:
    schema = TypeAdapter(list[models.Event]).json_schema()
    schema["title"] = "EventBurst"
    schema["description"] = (
        "Several consecutive events of one execution in one message (output kinds only: "
        "markdown, text, html, stdout, stderr), in seq order; readers take both forms."
    )
    schema["minItems"] = 1
    schema["maxItems"] = BURST_MAX
    return schema


def specs() -> list[Spec]:
    """Every message on every subject, in the order of subjects.md."""
    from .executor import JobBatch, OutcomeBatch  # no Ray import: the batches are plain models

    m = models
    return [
        _model(m.Catalog, "broadcast"),
        _model(m.Heartbeat, "broadcast"),
        _model(m.Bye, "broadcast"),
        _model(m.SyncRequest, "broadcast"),
        _model(m.RegistryView, "broadcast"),
        _model(m.Empty, "request"),
        _model(m.ServiceInfo, "reply"),
        _model(m.FlowsQuery, "request"),
        _model(m.FlowsPage, "reply"),
        _model(m.NodesPage, "reply"),
        _model(m.Ack, "reply"),
        _model(m.ErrorReply, "reply"),
        _model(m.LaunchRequest, "request"),
        _model(m.LaunchReply, "reply"),
        _model(m.AnswerRequest, "request"),
        _model(m.Event, "broadcast"),
        Spec("EventBurst", _burst, "broadcast", str(_burst()["description"]), None),
        _model(m.NodeEntry, "stored"),
        _model(m.ExecutionRecord, "stored"),
        _model(JobBatch, "internal"),
        _model(OutcomeBatch, "internal"),
    ]


def schema_id(name: str) -> str:
    return f"urn:kodo-bus:v{SCHEMA_VERSION}:{name}"


def document(spec: Spec) -> dict[str, Any]:
    """The schema file of one message."""
    return {"$schema": DIALECT, "$id": schema_id(spec.name), **spec.schema()}


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# -- docs/wire.md --------------------------------------------------------------------------------
_USES = {
    "request": "request a client sends to a service — **strict**: an unknown key is refused "
    "(`invalid_request`), another `v` too (`unsupported_version`)",
    "reply": "reply of a service — readers ignore unknown fields",
    "broadcast": "published to listeners — readers ignore unknown fields",
    "stored": "value in a JetStream KV bucket (msgpack, no headers) — readers ignore unknown "
    "fields",
    "internal": "a node and its own Ray workers only (JSON, no `v`)",
}


def _type_of(schema: dict[str, Any]) -> str:
    """A short human reading of a property's schema."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_type_of(s) for s in schema[key])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_type_of(schema.get('items', {}))}"
    if kind == "object":
        values = schema.get("additionalProperties")
        return f"object of {_type_of(values)}" if isinstance(values, dict) else "object"
    if kind is None:
        return "any"
    bounds = [
        f"{word} {schema[key]}"
        for key, word in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"))
        if key in schema
    ]
    if "pattern" in schema:
        bounds.append(f"matching `{schema['pattern']}`")
    return " ".join([str(kind), *bounds])


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(schema: dict[str, Any]) -> list[str]:
    props: dict[str, Any] = schema.get("properties", {})
    if not props:
        return ["No fields."]
    required = set(schema.get("required", []))
    lines = ["| field | type | required | default | meaning |", "|---|---|---|---|---|"]
    for name, sub in props.items():
        default = "" if "default" not in sub else f"`{json.dumps(sub['default'])}`"
        lines.append(
            f"| `{name}` | {_cell(_type_of(sub))} | {'yes' if name in required else ''} | "
            f"{default} | {_cell(str(sub.get('description', '')))} |"
        )
    return lines


def wire_doc(all_specs: list[Spec]) -> str:
    """`docs/wire.md`: per message, what it is for and a table of its fields."""
    out = [
        "# kodo-bus wire messages",
        "",
        "<!-- generated by `python -m kodo_bus.schemas` from kodo_bus/models.py: do not edit -->",
        "",
        "Which subject carries which message: `subjects.md`. The JSON Schema (2020-12) of each",
        "message is `schemas/<Message>.json` (`$id` `urn:kodo-bus:v<v>:<Message>`). Requests",
        "are strict; everything else is read leniently (unknown fields ignored). Timestamps",
        "are float seconds since the Unix epoch. Fields whose value is null are left out on",
        "the wire (an absent `parent` is a top-level execution).",
        "",
    ]
    nested: dict[str, dict[str, Any]] = {}
    for spec in all_specs:
        schema = document(spec)
        out += [f"## {spec.name}", "", f"[`schemas/{spec.name}.json`](../schemas/{spec.name}.json)"]
        out += ["— " + _USES[spec.use] + ".", "", _cell(spec.summary), ""]
        if spec.fields_of is None:
            out += [f"A JSON array of 1 to {BURST_MAX} `Event`s.", ""]
        else:
            out += [*_table(schema), ""]
        nested.update(schema.get("$defs", {}))
    top = {spec.name for spec in all_specs}
    extra = {name: sub for name, sub in nested.items() if name not in top and "properties" in sub}
    if extra:
        out += ["## Parts of messages", ""]
        for name, sub in sorted(extra.items()):
            out += [f"### {name}", "", _cell(str(sub.get("description", ""))), ""]
            out += [*_table(sub), ""]
    return "\n".join(out).rstrip() + "\n"


# -- files ---------------------------------------------------------------------------------------
def generated() -> dict[str, str]:
    """Relative path → content of every generated file."""
    all_specs = specs()
    files = {f"{SCHEMA_DIR}/{s.name}.json": _dump(document(s)) for s in all_specs}
    files[WIRE_DOC] = wire_doc(all_specs)
    return files


def stale(root: Path) -> list[str]:
    """Generated files that are missing or differ under `root`, and stray schema files."""
    files = generated()
    out = [p for p, text in files.items() if _read(root / p) != text]
    folder = root / SCHEMA_DIR
    if folder.is_dir():
        out += [
            f"{SCHEMA_DIR}/{p.name}"
            for p in sorted(folder.glob("*.json"))
            if f"{SCHEMA_DIR}/{p.name}" not in files
        ]
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def write(root: Path) -> list[str]:
    """Write every generated file under `root` (removing stray schemas); the paths changed."""
    changed = stale(root)
    files = generated()
    for rel in changed:
        path = root / rel
        if rel in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[rel], encoding="utf-8")
        else:
            path.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kodo_bus.schemas", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--check", action="store_true", help="only tell whether files are stale")
    args = parser.parse_args(argv)
    if args.check:
        old = stale(args.root)
        for rel in old:
            print(f"stale: {rel} (run: python -m kodo_bus.schemas)")
        return 1 if old else 0
    for rel in write(args.root):
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
