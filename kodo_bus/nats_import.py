"""nats-py imported without aiohttp, which it loads only for its WebSocket transport.

Why: `import nats` imports aiohttp (and through it yarl, multidict, attrs, http.cookies...) at
once, for `ws://` URLs alone — about 15 MB PSS in every Python process of a stack that never
uses them: the node, the registry, the web panel, `kodo-bus up` and each Ray actor (measured
from /proc/<pid>/smaps_rollup, issue 18). `kodo_bus/__init__.py` imports this module first, so
every process that imports kodo_bus (Ray workers unpickling an actor included) pays aiohttp
only if it uses it. A `ws://` URL still works: nats-py's transport module gets a stand-in that
imports aiohttp at its first use. A process that imported nats or aiohttp before kodo_bus is
left as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

DEFERRED = ("aiohttp", "multidict")
"""What nats-py's transport module imports for WebSockets only (multidict after aiohttp)."""


class OnFirstUse:
    """Stands for a module: imports it at the first attribute read (nats-py reads
    `aiohttp.ClientSession` when a WebSocket transport is created, nothing before)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self.name), attr)


def import_nats() -> None:
    """Import nats-py with `import aiohttp` failing meanwhile (a None in `sys.modules` makes
    an import raise ImportError, which nats-py expects), then hand its transport the
    stand-ins. Nothing else of nats-py imports aiohttp."""
    if "nats" in sys.modules or any(name in sys.modules for name in DEFERRED):
        return
    if importlib.util.find_spec("aiohttp") is None:
        return  # not installed: nats-py handles that itself
    sys.modules["aiohttp"] = None  # type: ignore[assignment]
    try:
        from nats.aio import transport
    finally:
        if "aiohttp" in sys.modules and sys.modules["aiohttp"] is None:
            del sys.modules["aiohttp"]
    for name in DEFERRED:
        if getattr(transport, name, False) is None:
            setattr(transport, name, OnFirstUse(name))


import_nats()
