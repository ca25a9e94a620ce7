"""kodo-bus: a federation of agentic flows over NATS, run on Ray.

The public API is what `__all__` lists; every other module is private.
"""

from . import nats_import  # noqa: F401  (first: nats-py without aiohttp, ~15 MB per process)
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
from .version import __version__

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
