"""Driver side of the Ray actors: starts Ray when first needed, hands jobs over in batches.

Why batches: a Ray actor call costs about 1.5 ms of CPU (driver and actor together) on a
2-core machine — more than everything else an execution costs. So jobs ready at the same moment
go to an actor in one `submit` call, and each actor returns the outcomes of whatever ended in
one long-polling `outcomes` call that is always outstanding. One job alone still travels at
once (the flush is the next turn of the event loop), so a single launch is not delayed.

The outstanding `outcomes` call doubles as the actor's death notice: when the actor dies it
raises, every execution the actor held ends `WorkerDied`, and a replacement actor is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import Any

from .config import ConnectSettings
from .executor import ExecActor, Job, Outcome

log = logging.getLogger("kodo_bus.pool")

ACTOR_CONCURRENCY = 16
"""Ray calls an actor serves at once: submit, the outcomes poll, cancel, stop (not executions:
those run as tasks in the actor's event loop, as many as the runner hands over)."""


class WorkerDied(Exception):
    """The Ray actor running an execution died (the flow called os._exit, OOM, crash...)."""


class _Worker:
    """One actor, the executions it holds and the jobs about to be sent to it."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.waiting: dict[str, asyncio.Future[Outcome]] = {}
        self.outbox: list[dict[str, Any]] = []
        self.poller: asyncio.Task[None] | None = None


class ActorPool:
    """Keeps `size` actors and spreads executions over them (the least busy first)."""

    def __init__(
        self, connect_settings: ConnectSettings, ray_address: str | None, size: int | None
    ) -> None:
        self._connect = connect_settings
        self._ray_address = ray_address
        self._size = size
        self._workers: list[_Worker] = []
        self._where: dict[str, _Worker] = {}
        self._started = False
        self._lock = asyncio.Lock()
        self.cpus: int | None = None

    async def start(self, max_running: int | None) -> int:
        """Start Ray (if needed) and the actors; the number of executions to run at once."""
        async with self._lock:
            if not self._started:
                await asyncio.to_thread(self._init_ray)
                running = max_running or self.cpus or 1
                size = self._size or max(1, min(running, 4))
                self._workers = list(
                    await asyncio.gather(*(self._new_worker() for _ in range(size)))
                )
                self._started = True
            return max_running or self.cpus or 1

    def _init_ray(self) -> None:
        # Ray's driver otherwise installs a C-level SIGTERM handler that dumps a stack and kills
        # the node at once: no grace period, executions cut off mid-write. Read when `ray` is
        # first imported, hence set before the import.
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        import ray

        if not ray.is_initialized():
            if self._ray_address:
                ray.init(address=self._ray_address, include_dashboard=False)
            else:
                ray.init(include_dashboard=False)
        self.cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]

    async def _new_worker(self) -> _Worker:
        import ray

        cls = ray.remote(ExecActor)
        handle = cls.options(num_cpus=0, max_concurrency=ACTOR_CONCURRENCY, max_restarts=0).remote(
            self._connect.model_dump(mode="json"), list(sys.path)
        )
        await handle.start.remote()  # type: ignore[attr-defined]
        worker = _Worker(handle)
        worker.poller = asyncio.create_task(self._poll(worker), name="kodo-actor-outcomes")
        worker.poller.add_done_callback(_report)
        return worker

    async def run(self, job: Job) -> Outcome:
        """Run one job on the least busy actor; its outcome (`WorkerDied` if the actor died)."""
        worker = min(self._workers, key=lambda w: len(w.waiting))
        execution = job.record.execution
        outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        worker.waiting[execution] = outcome
        self._where[execution] = worker
        worker.outbox.append(job.model_dump(mode="json"))
        if len(worker.outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush, worker)
        try:
            return await outcome
        finally:
            worker.waiting.pop(execution, None)
            self._where.pop(execution, None)

    def _flush(self, worker: _Worker) -> None:
        jobs, worker.outbox = worker.outbox, []
        if jobs:
            # Nothing to wait for: outcomes come back through `_poll`, death too.
            worker.handle.submit.remote(jobs)

    async def _poll(self, worker: _Worker) -> None:
        """Collect the actor's outcomes until it dies or the pool stops."""
        while True:
            try:
                ended = await worker.handle.outcomes.remote()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # RayActorError, mostly: the actor is gone
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                for future in worker.waiting.values():
                    if not future.done():
                        future.set_exception(WorkerDied(reason))
                await self._replace(worker)
                return
            for execution, data in ended:
                waiting = worker.waiting.get(execution)
                if waiting is not None and not waiting.done():
                    waiting.set_result(Outcome.model_validate(data))

    async def cancel(self, execution: str) -> None:
        worker = self._where.get(execution)
        if worker is not None:
            await worker.handle.cancel.remote(execution)

    async def _replace(self, dead: _Worker) -> None:
        async with self._lock:
            if dead not in self._workers:
                return  # stopping, or replaced already
            self._workers.remove(dead)
            try:
                self._workers.append(await self._new_worker())
            except Exception:
                log.exception("cannot start a replacement Ray actor")

    async def stop(self) -> None:
        import ray

        async with self._lock:
            workers, self._workers = self._workers, []
            self._started = False
        for worker in workers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.handle.stop.remote(), 5)
            if worker.poller is not None:
                worker.poller.cancel()
                await asyncio.wait({worker.poller})
            ray.kill(worker.handle)


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("collecting a Ray actor's outcomes failed: %r", exc, exc_info=exc)
