"""Prompts built from a JSON schema: flow inputs on `launch`, answers to `tracer.ask`.

The client only has the flow's JSON schema, so types, defaults, choices and descriptions come
from it; validation messages come from the caller's `check` (the flow's rebuilt pydantic model),
so a user sees the same message the node would give, right after typing the value.
Prompts block on stdin: callers run them in a thread (`in_thread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.prompt import Confirm, FloatPrompt, IntPrompt, InvalidResponse, Prompt

from ..errors import ConfigError, FieldProblem

Check = Callable[[dict[str, Any]], list[FieldProblem]]
T = TypeVar("T")
_SKIP = object()


async def in_thread(ask: Callable[..., T], *args: Any) -> T:
    """Run a blocking prompt in a daemon thread; Ctrl-C cancels the wait at once.

    Not `asyncio.to_thread`: `asyncio.run` joins its executor's threads before it returns, and
    a thread blocked on stdin never ends, so Ctrl-C at a prompt did nothing. A daemon thread left
    waiting on stdin does not keep the process from exiting.
    """
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if answer.done():  # cancelled meanwhile: nobody waits for this answer
            return
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(value)  # type: ignore[arg-type]

    def work() -> None:
        value: T | None = None
        error: BaseException | None = None
        try:
            value = ask(*args)
        except BaseException as exc:  # EOFError (Ctrl-D) included: the caller decides
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: the command has ended
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name="kodo-prompt", daemon=True).start()
    return await answer


def resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """A property's schema with `$ref`, single `allOf` and `Optional` (anyOf with null) undone."""
    sub = dict(schema)
    for _ in range(10):
        if "$ref" in sub:
            name = str(sub.pop("$ref")).rsplit("/", 1)[-1]
            sub = {**root.get("$defs", {}).get(name, {}), **sub}
        elif "allOf" in sub and len(sub["allOf"]) == 1:
            sub = {**sub.pop("allOf")[0], **sub}
        elif "anyOf" in sub:
            options = [o for o in sub["anyOf"] if o.get("type") != "null"]
            if len(options) != 1:
                break
            sub.pop("anyOf")
            sub = {**options[0], **sub, "nullable": True}
        else:
            break
    return sub


def _is_text(sub: Mapping[str, Any]) -> bool:
    if "enum" in sub:
        return all(isinstance(v, str) for v in sub["enum"])
    if "const" in sub:
        return isinstance(sub["const"], str)
    return sub.get("type") == "string"


def parse_pairs(pairs: Iterable[str], schema: Mapping[str, Any]) -> dict[str, Any]:
    """`key=value` options as inputs: text fields keep the raw text, others are read as JSON."""
    props = schema.get("properties", {})
    data: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"-i {pair!r}: expected key=value")
        sub = resolve(props.get(key, {}), schema)
        if _is_text(sub):
            data[key] = raw
            continue
        try:
            data[key] = json.loads(raw)
        except json.JSONDecodeError:
            data[key] = raw
    return data


class _JsonPrompt(Prompt):
    """A prompt whose answer is any JSON value (lists, objects)."""

    def process_response(self, value: str) -> Any:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise InvalidResponse("[prompt.invalid]enter a JSON value") from None


def _label(name: str, sub: Mapping[str, Any], required: bool) -> str:
    title = escape(str(sub.get("title") or name))
    parts = [f"[bold]{title}[/]"]
    if sub.get("description"):
        parts.append(f"[dim]({escape(str(sub['description']))})[/]")
    if not required and "default" not in sub:
        parts.append("[dim][optional, Enter to skip][/]")
    return " ".join(parts)


def ask_value(name: str, sub: Mapping[str, Any], required: bool, console: Console) -> Any:
    """Ask for one value of the type `sub` describes; `_SKIP` when an optional one is left out."""
    label = _label(name, sub, required)
    has_default = "default" in sub and sub["default"] is not None
    default = sub.get("default")
    if "enum" in sub or "const" in sub:
        choices = [str(v) for v in sub.get("enum", [sub.get("const")])]
        answer = Prompt.ask(
            label,
            choices=choices,
            default=str(default) if has_default else None,
            console=console,
        )
        for value in sub.get("enum", [sub.get("const")]):
            if str(value) == answer:
                return value
        return answer
    kind = sub.get("type")
    if kind == "boolean":
        return Confirm.ask(label, default=bool(default), console=console)
    prompts: dict[str, type[Prompt] | type[IntPrompt] | type[FloatPrompt]] = {
        "integer": IntPrompt,
        "number": FloatPrompt,
        "string": Prompt,
    }
    prompt_type = prompts.get(str(kind), _JsonPrompt)
    if has_default:
        shown = default if prompt_type is not _JsonPrompt else json.dumps(default)
        return prompt_type.ask(label, default=shown, console=console)
    while True:
        answer = Prompt.ask(label, default="", show_default=False, console=console)
        if answer == "":
            if not required:
                return _SKIP
            console.print("[prompt.invalid]a value is required")
            continue
        try:
            return prompt_type(label, console=console).process_response(answer)
        except InvalidResponse as exc:
            console.print(exc)


def ask_fields(
    schema: Mapping[str, Any],
    given: Mapping[str, Any],
    check: Check,
    console: Console,
) -> dict[str, Any]:
    """Ask for every property of `schema` missing from `given`, re-asking while one is invalid.

    A field's problems are shown right after its answer; a field that was given on the command
    line and is invalid is asked again too.
    """
    data = dict(given)
    props: dict[str, Any] = dict(schema.get("properties", {}))
    required = set(schema.get("required", []))
    if not props:
        return data
    title = schema.get("title")
    if title:
        console.print(f"[dim]{escape(str(title))}[/]")

    def problems_of(name: str) -> list[FieldProblem]:
        return [p for p in check(data) if p.field == name or p.field.startswith(name + ".")]

    todo = [name for name in props if name not in data]
    todo += [name for name in props if name in data and problems_of(name)]
    for name in todo:
        sub = resolve(props[name], schema)
        for problem in problems_of(name) if name in data else []:
            console.print(f"[red]{escape(name)}: {escape(problem.message)}[/]")
        while True:
            value = ask_value(name, sub, name in required, console)
            if value is _SKIP:
                data.pop(name, None)
                break
            data[name] = value
            problems = problems_of(name)
            if not problems:
                break
            for problem in problems:
                console.print(f"[red]{escape(problem.message)}[/]")
    return data
