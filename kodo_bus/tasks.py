"""Supervised background tasks: kept, logged when they die, cancelled and awaited at stop.

A bare `create_task` can be garbage-collected mid-flight and its exception vanishes; every
long-lived part of a service owns one `TaskSet` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    """The background tasks of one component."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)

    async def close(self) -> None:
        """Cancel every task and wait until each has finished."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        # return_exceptions: the children's CancelledError become results, while a cancel of
        # the caller itself still propagates out of gather.
        await asyncio.gather(*tasks, return_exceptions=True)
