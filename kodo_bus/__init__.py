"""kodo-bus: a federation of agentic flows over NATS, run on Ray.

The public API is what `__all__` lists; every other module is private.
"""

from .config import ConnectSettings, Credentials, ServerSettings, ServiceSettings
from .errors import (
    AmbiguousFlow,
    AuthError,
    Busy,
    ConfigError,
    ConnectError,
    ExecutionCancelled,
    ExecutionError,
    ExecutionFailed,
    ExecutionLost,
    ExecutionTimeout,
    FlowNotFound,
    InputsInvalid,
    KodoError,
    KodoTimeout,
    NoResponders,
    RemoteError,
    ServerError,
    WireError,
)
from .server import NatsServer
from .version import __version__

__all__ = [
    "AmbiguousFlow",
    "AuthError",
    "Busy",
    "ConfigError",
    "ConnectError",
    "ConnectSettings",
    "Credentials",
    "ExecutionCancelled",
    "ExecutionError",
    "ExecutionFailed",
    "ExecutionLost",
    "ExecutionTimeout",
    "FlowNotFound",
    "InputsInvalid",
    "KodoError",
    "KodoTimeout",
    "NatsServer",
    "NoResponders",
    "RemoteError",
    "ServerError",
    "ServerSettings",
    "ServiceSettings",
    "WireError",
    "__version__",
]
