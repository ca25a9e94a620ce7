"""The web panel (`kodo-bus web`): flows, launch forms, live executions and questions in a
browser, read from and sent to the bus through the SDK; it keeps no state of its own."""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
