"""FlowKit compatibility: `Node` and `Logger` with the semantics FlowKit documents.

A FlowKit script works two ways without edits beyond its import line:

- standalone, `python script.py input.json runner_id self_addr node_name`: `node.run()` executes
  the registered main once with the inputs of `input.json` and prints its `(nodes, outputs,
  message)` as one JSON line; logs go to stderr;
- as a kodo-bus flow (`flows: [{entry: "my_script:node"}]` or `{module: my_script}`): importing
  the script registers the main without running it, and each execution calls it with that
  execution's inputs; logs become `log` events (the central log), and a returned tuple with
  node names launches those flows with `outputs` as their inputs.

The current execution is held in a context variable, so concurrent executions of the same
script in one worker never see each other's inputs.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import sys
import traceback
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError
from .flows import SPEC_ATTR, FlowSpec

MainFunc = Callable[[], Coroutine[Any, Any, Any]]
_LEVELS = {"debug", "info", "warning", "error", "critical"}


class _LogSink(Protocol):
    """What a kodo-bus tracer offers FlowKit's logger."""

    async def log(self, level: str, message: str, **context: Any) -> None: ...


@dataclass
class _Run:
    inputs: dict[str, Any]
    runner_id: str
    tracer: _LogSink | None


_current: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("flowkit_run", default=None)


class Node:
    """A FlowKit node: inputs, an async main returning `(nodes, outputs, message)`, and run()."""

    def __init__(self, name: str | None = None) -> None:
        caller = inspect.stack()[1].frame.f_globals
        self._module: str = caller.get("__name__", "__main__")
        self._main: MainFunc | None = None
        self._standalone: _Run | None = None
        self.name = name or self._module.rsplit(".", 1)[-1]
        argv = sys.argv[1:]
        if self._module == "__main__" and len(argv) >= 1:
            self._standalone = _Run(
                inputs=_read_inputs(Path(argv[0])),
                runner_id=argv[1] if len(argv) > 1 else str(uuid.uuid4()),
                tracer=None,
            )
            self.self_addr = argv[2] if len(argv) > 2 else ""
            if len(argv) > 3:
                self.name = argv[3]

    # -- FlowKit API -------------------------------------------------------------------------
    def get_inputs(self) -> dict[str, Any]:
        """The inputs of the current run (the execution's, or input.json's when standalone)."""
        run = self._run()
        return run.inputs

    def get_id(self) -> str:
        """Unique id of the current run (the execution id under kodo-bus)."""
        return self._run().runner_id

    def register_main(self, func: MainFunc) -> None:
        """Register the async entry point; under kodo-bus this makes the node a flow."""
        if not inspect.iscoroutinefunction(func):
            raise ConfigError(f"FlowKit main {func.__name__!r} must be 'async def'")
        self._main = func
        variable = (
            next((k for k, v in vars(sys.modules[self._module]).items() if v is self), "node")
            if self._module in sys.modules
            else "node"
        )
        spec = FlowSpec(name=self.name, func=self.__call__, entry=f"{self._module}:{variable}")
        setattr(self, SPEC_ATTR, spec)

    def run(self) -> None:
        """Standalone: execute once and print the result. Imported by kodo-bus: nothing to do."""
        if self._standalone is None:
            return
        if self._main is None:
            raise ConfigError("call node.register_main(main) before node.run()")
        token = _current.set(self._standalone)
        try:
            result = asyncio.run(self._main())
        finally:
            _current.reset(token)
        nodes, outputs, message = _check_result(result)
        print(json.dumps({"nodes": nodes, "outputs": outputs, "message": message}, default=str))

    # -- kodo-bus side -------------------------------------------------------------------------
    async def __call__(self, inputs: dict[str, Any], tracer: Any) -> Any:
        """One execution of the node as a kodo-bus flow."""
        if self._main is None:
            raise ConfigError(f"FlowKit node {self.name!r} has no registered main")
        runner_id = str(getattr(tracer, "execution", "") or uuid.uuid4())
        token = _current.set(_Run(inputs=dict(inputs), runner_id=runner_id, tracer=tracer))
        try:
            return _check_result(await self._main())
        finally:
            _current.reset(token)

    def _run(self) -> _Run:
        run = _current.get() or self._standalone
        if run is None:
            raise ConfigError(
                "no FlowKit run is active: run the script as 'python script.py input.json ...' "
                "or launch it as a kodo-bus flow"
            )
        return run


class Logger:
    """FlowKit's logger: awaitable methods; under kodo-bus each call is a `log` event."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def log_with_context(
        self, level: str, message: str, context: dict[str, Any] | None = None
    ) -> None:
        """Under kodo-bus a `log` event of the execution; standalone, a JSON line on stderr."""
        level = level.lower() if level.lower() in _LEVELS else "info"
        run = _current.get() or self.node._standalone
        if run is not None and run.tracer is not None:
            await run.tracer.log(level, message, **(context or {}))
            return
        record = {"level": level, "message": message, "node": self.node.name, **(context or {})}
        print(json.dumps(record, default=str), file=sys.stderr)

    async def info(self, message: str) -> None:
        """FlowKit's `info`, kept so FlowKit scripts run unchanged."""
        await self.log_with_context("info", message)

    async def warning(self, message: str) -> None:
        """FlowKit's `warning`, kept so FlowKit scripts run unchanged."""
        await self.log_with_context("warning", message)

    async def debug(self, message: str) -> None:
        """FlowKit's `debug`, kept so FlowKit scripts run unchanged."""
        await self.log_with_context("debug", message)

    async def error(self, message: str, include_traceback: bool = False) -> None:
        """FlowKit's `error`; `include_traceback` attaches the exception being handled."""
        context = {"traceback": traceback.format_exc()} if include_traceback else None
        await self.log_with_context("error", message, context)

    async def flush(self) -> None:
        """Logs are sent as they are written; nothing is held back."""


def _read_inputs(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read FlowKit inputs from {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: FlowKit inputs must be a JSON object")
    return data


def _check_result(result: Any) -> tuple[list[str], dict[str, Any], str]:
    if (
        isinstance(result, tuple)
        and len(result) == 3
        and isinstance(result[0], list)
        and isinstance(result[1], dict)
        and isinstance(result[2], str)
    ):
        return result[0], result[1], result[2]
    raise ConfigError(
        f"a FlowKit main must return (nodes: list, outputs: dict, message: str), got {result!r}"
    )
