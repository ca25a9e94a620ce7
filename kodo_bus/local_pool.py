"""The actor pool without Ray: `ExecActor`s in this process, for `kodo-bus try`.

Why the pool's own code and not a plain call of the flow: what a trial shows must be what a
node shows, and the actor is what makes it (it numbers and stores the flow's events, captures
its prints, writes its record, stops a sync flow with `_Stop` in its thread, stores the
traceback the error line is read from). So `LocalPool` is `ActorPool` with the one Ray-specific
step swapped: an actor is an `ExecActor` object on this event loop instead of a Ray actor, and
jobs, cancels and outcomes still go as batches over NATS on the actor's subjects. What it saves
is Ray itself: its start (seconds; more on a loaded machine), its processes, its memory.

What is lost against a node: isolation. The flow runs in this process, so a flow that calls
`os._exit` ends the trial, and a sync flow blocked in C ignores its `_Stop` until it returns
to Python (on a node Ray kills the actor's process). The flow's prints go through the actor's
`sys.stdout`/`sys.stderr` capture while the pool runs (writes of anything but the flow still
reach the terminal), and the originals are back once it stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from nats.aio.client import Client as NATS

from . import subjects
from .config import ConnectSettings
from .executor import ExecActor
from .pool import ActorPool, _Worker

log = logging.getLogger("kodo_bus.local_pool")


class _Method:
    """`handle.method.remote(...)` as on a Ray actor handle: the call, to be awaited."""

    def __init__(self, method: Callable[..., Awaitable[Any]]) -> None:
        self._method = method

    def remote(self, *args: Any) -> Awaitable[Any]:
        return self._method(*args)


class _Handle:
    """An in-process actor behind the part of Ray's handle interface the pool uses."""

    def __init__(self, actor: ExecActor) -> None:
        self.actor = actor
        self.start = _Method(actor.start)
        self.serve = _Method(actor.serve)
        self.stop = _Method(actor.stop)


class LocalPool(ActorPool):
    """`ActorPool` whose actors are `ExecActor`s on this event loop (no Ray is started)."""

    def __init__(self, nc: NATS, node: str, connect_settings: ConnectSettings, size: int) -> None:
        super().__init__(nc, node, connect_settings, None, size)
        self._streams: tuple[TextIO, TextIO] | None = None
        """`sys.stdout`/`sys.stderr` before the first actor replaced them (restored at stop)."""

    def _init_ray(self) -> None:
        self.cpus = os.cpu_count() or 1

    async def _new_worker(self) -> _Worker:
        self._numbered += 1
        subject = subjects.work_jobs(self._node, self._pool, self._numbered)
        actor = ExecActor(
            self._connect.model_dump(mode="json"),
            list(sys.path),
            subject,
            subjects.work_outcomes(self._node, self._pool),
        )
        if self._streams is None:
            self._streams = (sys.stdout, sys.stderr)
        handle = _Handle(actor)
        try:
            await handle.start.remote()
        except BaseException:
            if not self._workers:  # no stop follows a pool that did not start
                self._restore()
            raise
        worker = _Worker(handle, subject)
        worker.watch = self._tasks.spawn(self._watch(worker), "kodo-actor-watch")
        return worker

    async def _stop_worker(self, worker: _Worker) -> None:
        worker.alive = False
        try:  # within 5 s: what still runs then is a sync flow's thread deaf to `_Stop`
            await asyncio.wait_for(worker.handle.stop.remote(), 5)
        except Exception as exc:
            log.debug("an in-process actor did not stop cleanly: %r", exc)
        if worker.watch is not None:
            worker.watch.cancel()
            await asyncio.wait({worker.watch})

    async def stop(self) -> None:
        await super().stop()
        self._restore()

    def _restore(self) -> None:
        if self._streams is not None:
            sys.stdout, sys.stderr = self._streams
            self._streams = None
