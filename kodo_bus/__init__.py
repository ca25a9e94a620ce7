"""kodo-bus: a federation of agentic flows over NATS, run on Ray.

The public API is what `__all__` lists; every other module is private.

Each name is imported at its first use (PEP 562), not with the package: every process that
imports any module of kodo_bus runs this file first, and importing the whole API here (the
SDK's client, the models, pydantic's validators) cost each of them ~20 MB, the `kodo-bus up`
supervisor and the CLI's light commands included (issue 18).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import nats_import  # noqa: F401  (first: nats-py without aiohttp, ~15 MB per process)
from .version import __version__

if TYPE_CHECKING:
    from .client import Client
    from .config import ConnectSettings, Credentials, ServerSettings, ServiceSettings
    from .errors import (
        AmbiguousExecution,
        AmbiguousFlow,
        AuthError,
        Busy,
        ConfigError,
        ConnectError,
        ExecutionCancelled,
        ExecutionError,
        ExecutionFailed,
        ExecutionLost,
        ExecutionNotFound,
        ExecutionTimeout,
        FlowNotFound,
        InputsInvalid,
        KodoError,
        KodoTimeout,
        LaunchUnanswered,
        NoResponders,
        RemoteError,
        ServerError,
        WireError,
    )
    from .execution_ref import Execution, WorkflowNode
    from .flow_ref import Flow
    from .flows import FlowSpec, Next, flow
    from .models import Event, ExecutionRecord
    from .server import NatsServer
    from .tracer import Tracer

_HOME = {
    "Client": "client",
    **dict.fromkeys(
        ("ConnectSettings", "Credentials", "ServerSettings", "ServiceSettings"), "config"
    ),
    **dict.fromkeys(
        (
            "AmbiguousExecution",
            "AmbiguousFlow",
            "AuthError",
            "Busy",
            "ConfigError",
            "ConnectError",
            "ExecutionCancelled",
            "ExecutionError",
            "ExecutionFailed",
            "ExecutionLost",
            "ExecutionNotFound",
            "ExecutionTimeout",
            "FlowNotFound",
            "InputsInvalid",
            "KodoError",
            "KodoTimeout",
            "LaunchUnanswered",
            "NoResponders",
            "RemoteError",
            "ServerError",
            "WireError",
        ),
        "errors",
    ),
    "Execution": "execution_ref",
    "WorkflowNode": "execution_ref",
    "Flow": "flow_ref",
    "FlowSpec": "flows",
    "Next": "flows",
    "flow": "flows",
    "Event": "models",
    "ExecutionRecord": "models",
    "NatsServer": "server",
    "Tracer": "tracer",
}
"""Each public name and the module it lives in."""


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'kodo_bus' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # looked up here from now on
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AmbiguousExecution",
    "AmbiguousFlow",
    "AuthError",
    "Busy",
    "Client",
    "ConfigError",
    "ConnectError",
    "ConnectSettings",
    "Credentials",
    "Event",
    "Execution",
    "ExecutionCancelled",
    "ExecutionError",
    "ExecutionFailed",
    "ExecutionLost",
    "ExecutionNotFound",
    "ExecutionRecord",
    "ExecutionTimeout",
    "Flow",
    "FlowNotFound",
    "FlowSpec",
    "InputsInvalid",
    "KodoError",
    "KodoTimeout",
    "LaunchUnanswered",
    "NatsServer",
    "Next",
    "NoResponders",
    "RemoteError",
    "ServerError",
    "ServerSettings",
    "ServiceSettings",
    "Tracer",
    "WireError",
    "WorkflowNode",
    "__version__",
    "flow",
]
