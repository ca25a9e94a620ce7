"""Declaring flows: the `@flow` decorator, input validation, and loading flows named in config.

A flow is a plain function `(inputs: SomeModel, tracer: Tracer) -> Any`, async or sync. The
decorator only attaches a `FlowSpec` to it (the function stays callable as written), so flow
modules import cheaply and the same spec can be rebuilt inside a Ray worker from its `entry`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import inspect
import os
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, TypeVar, get_type_hints

from pydantic import AliasChoices, AliasPath, BaseModel, ValidationError

from .config import FlowDecl
from .errors import ConfigError, FieldProblem, InputsInvalid, problems_from
from .models import FlowInfo
from .subjects import check_token

F = TypeVar("F", bound=Callable[..., Any])
SPEC_ATTR = "__kodo_flow__"


@dataclass(frozen=True)
class FlowSpec:
    """Everything a node needs to announce, validate and run one flow."""

    name: str
    func: Callable[..., Any] = field(repr=False, compare=False)
    entry: str
    """`module:function`, so a Ray worker can import the function by name."""
    inputs: type[BaseModel] | None = None
    summary: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    version: str = ""
    author: str = ""
    timeout: float | None = None
    retention: float | None = None
    """Seconds this flow's executions (events and record) are kept after they are written;
    None: the bus's `events_max_age`. Sent as per-message TTLs (`Nats-TTL`)."""

    @property
    def is_async(self) -> bool:
        """Async flows run on the worker's event loop; sync ones in a thread beside it."""
        return inspect.iscoroutinefunction(self.func)

    def info(self) -> FlowInfo:
        """The catalog entry: metadata plus the input model's JSON schema, which says whether
        unknown inputs are refused (`additionalProperties: false`, the default) or taken."""
        return FlowInfo(
            name=self.name,
            summary=self.summary,
            description=self.description,
            tags=list(self.tags),
            version=self.version,
            author=self.author,
            input_schema=input_schema(self.inputs) if self.inputs else {},
            timeout=self.timeout,
        )

    def validate(self, data: Mapping[str, Any] | BaseModel) -> BaseModel | dict[str, Any]:
        """Inputs as the flow will receive them; InputsInvalid lists every bad field, unknown
        ones included (unless the input model takes extra inputs: `extra="allow"`)."""
        if self.inputs is None:
            return data.model_dump() if isinstance(data, BaseModel) else dict(data)
        if isinstance(data, BaseModel):
            data = data.model_dump()
        accepted = _accepted_keys(self.inputs)
        unknown: list[FieldProblem] = []
        if accepted is not None:
            unknown = unknown_inputs(data, accepted)
            if unknown:  # validated without them: each is reported once, as unknown
                data = {k: v for k, v in data.items() if k in accepted}
        try:
            value = self.inputs.model_validate(data)
        except ValidationError as exc:
            raise InputsInvalid(unknown + problems_from(exc), flow=self.name) from None
        if unknown:
            raise InputsInvalid(unknown, flow=self.name)
        return value


def input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of an input model as the catalog publishes it: closed to unknown inputs
    (`additionalProperties: false`) unless the model takes extra ones, so a client in any
    language applies the node's rule from the schema alone."""
    schema = model.model_json_schema()
    if _accepted_keys(model) is not None:
        schema["additionalProperties"] = False
    return schema


def unknown_inputs(data: Mapping[str, Any], accepted: Collection[str]) -> list[FieldProblem]:
    """One problem per input key the flow does not have, with a "did you mean".

    Shared by the node (`FlowSpec.validate`) and the client (`Flow.validate`, from the
    schema's properties), so both refuse the same keys with the same message.
    """
    problems = []
    for key in data:
        if key in accepted:
            continue
        close = difflib.get_close_matches(key, list(accepted), n=1, cutoff=0.6)
        hint = f"'{close[0]}'" if close else f"one of {', '.join(sorted(accepted)) or '(none)'}"
        problems.append(FieldProblem(key, f"the flow has no input {key!r}; did you mean {hint}?"))
    return problems


@functools.cache
def _accepted_keys(model: type[BaseModel]) -> frozenset[str] | None:
    """Top-level keys the model validates (aliases, and names when allowed by its config);
    None when it takes extra keys (`extra="allow"`)."""
    config = model.model_config
    if config.get("extra") == "allow":
        return None
    by_name = bool(config.get("populate_by_name") or config.get("validate_by_name"))
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        alias = info.validation_alias if info.validation_alias is not None else info.alias
        if alias is None or by_name:
            keys.add(name)
        if isinstance(alias, str):
            keys.add(alias)
        elif isinstance(alias, AliasChoices | AliasPath):
            choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
            for choice in choices:
                path = choice.path if isinstance(choice, AliasPath) else [choice]
                if path and isinstance(path[0], str):
                    keys.add(path[0])
    return frozenset(keys)


def flow(
    name: str | None = None,
    *,
    summary: str = "",
    description: str = "",
    tags: Iterable[str] = (),
    version: str = "",
    author: str = "",
    inputs: type[BaseModel] | None = None,
    timeout: float | None = None,
    retention: float | timedelta | None = None,
) -> Callable[[F], F]:
    """Mark a function as a flow. The input model defaults to the first parameter's annotation.

    `retention` (seconds or a timedelta, at least 1 s) keeps this flow's executions shorter
    than the bus's `events_max_age`: results "obsolete once downloaded" need not fill the store.
    """
    kept = _retention(retention)

    def mark(func: F) -> F:
        spec = FlowSpec(
            name=check_token(name or func.__name__, "flow name"),
            func=func,
            entry=f"{func.__module__}:{func.__qualname__}",
            inputs=inputs or input_model(func),
            summary=summary or _first_line(func.__doc__),
            description=description or inspect.cleandoc(func.__doc__ or ""),
            tags=tuple(tags),
            version=version,
            author=author,
            timeout=timeout,
            retention=kept,
        )
        setattr(func, SPEC_ATTR, spec)
        return func

    return mark


def _retention(value: float | timedelta | None) -> float | None:
    """Seconds from `@flow(retention=...)`; JetStream's per-message TTL counts whole seconds."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds >= 1:
        raise ConfigError(f"retention must be at least 1 second, not {value!r}")
    return seconds


def spec_of(func: Callable[..., Any]) -> FlowSpec | None:
    """The spec `@flow` attached to `func`, if any."""
    spec = getattr(func, SPEC_ATTR, None)
    return spec if isinstance(spec, FlowSpec) else None


def _first_line(doc: str | None) -> str:
    return inspect.cleandoc(doc).splitlines()[0] if doc and doc.strip() else ""


_MODELS: weakref.WeakKeyDictionary[Callable[..., Any], type[BaseModel] | None] = (
    weakref.WeakKeyDictionary()
)
"""input_model per function: the runner and the worker ask on every launch and execution, and
`get_type_hints` + `inspect.signature` cost ~0.3 ms each time (found by `kodo-bus bench`)."""


def input_model(func: Callable[..., Any]) -> type[BaseModel] | None:
    try:
        return _MODELS[func]
    except (KeyError, TypeError):  # TypeError: not weak-referenceable, never cached
        pass
    try:
        hints = get_type_hints(func)
    except Exception:  # unresolvable forward references: the flow takes raw dict inputs
        return None  # not cached: the names may resolve later
    params = [p for p in inspect.signature(func).parameters if p != "return"]
    hint = hints.get(params[0]) if params else None
    model = hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None
    with contextlib.suppress(TypeError):
        _MODELS[func] = model
    return model


def import_object(path: str) -> Any:
    """Import `module:attribute` (attribute may be dotted); ConfigError names what failed."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{path!r} is not of the form 'module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} for {path!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def flows_in_module(module_name: str) -> list[FlowSpec]:
    """Every `@flow` function defined in a module, in definition order."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import flow module {module_name!r}: {exc}") from None
    specs = [s for obj in vars(module).values() if callable(obj) and (s := spec_of(obj))]
    if not specs:
        raise ConfigError(f"module {module_name!r} declares no @flow function")
    return specs


def _from_decl(decl: FlowDecl) -> list[FlowSpec]:
    if decl.module is not None:
        specs = flows_in_module(decl.module)
    else:
        assert decl.entry is not None
        from . import crew  # the crew kind: a crewai Crew or Flow, or a crew YAML file

        found = crew.entry_spec(decl.entry)
        if found is not None:
            spec = found
        else:
            func = import_object(decl.entry)
            if not callable(func):
                raise ConfigError(f"flow entry {decl.entry!r} is not callable")
            spec = spec_of(func) or FlowSpec(
                name=func.__name__, func=func, entry=decl.entry, inputs=input_model(func)
            )
        if decl.name:
            spec = replace(spec, name=check_token(decl.name, "flow name"))
        if decl.inputs:
            model = import_object(decl.inputs)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise ConfigError(f"flow inputs {decl.inputs!r} is not a pydantic model")
            spec = replace(spec, inputs=model)
        specs = [spec]
    overrides = {
        key: value
        for key in ("summary", "description", "version", "author", "timeout", "retention")
        if (value := getattr(decl, key)) is not None
    }
    if decl.tags is not None:
        overrides["tags"] = tuple(decl.tags)
    return [replace(spec, **overrides) for spec in specs]


def load_flows(decls: Iterable[FlowDecl]) -> list[FlowSpec]:
    """Resolve the `flows:` of a config into specs; duplicate names are a ConfigError."""
    # Ray reads this once, when first imported — which a flow module may do at its top. Without
    # it Ray's driver installs a C-level SIGTERM handler that kills the node at once: no grace.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    specs: list[FlowSpec] = []
    seen: set[str] = set()
    for decl in decls:
        for spec in _from_decl(decl):
            if spec.name in seen:
                raise ConfigError(f"flow {spec.name!r} is declared twice")
            seen.add(spec.name)
            specs.append(spec)
    return specs


class Next(BaseModel):
    """Returned by a flow to chain others: each of `flows` is launched with `outputs` as inputs.

    The FlowKit tuple `(next_flows, outputs, message)` means the same thing.
    """

    flows: list[str] = []
    outputs: dict[str, Any] = {}
    message: str = ""

    @classmethod
    def from_result(cls, value: Any) -> Next | None:
        """The Next a flow's return value stands for, if any (a Next, or a FlowKit tuple)."""
        if isinstance(value, Next):
            return value
        if (
            isinstance(value, tuple)
            and len(value) == 3
            and isinstance(value[0], list | tuple)
            and all(isinstance(name, str) for name in value[0])
            and isinstance(value[1], dict)
            and isinstance(value[2], str)
        ):
            return cls(flows=list(value[0]), outputs=value[1], message=value[2])
        return None
