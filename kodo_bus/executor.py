"""The Ray side: a pool of long-lived async actors that run executions.

Why actors and not tasks: Ray refuses `async def` tasks, an actor per execution costs ~0.5 s to
start, and a few long-lived async actors (each with its own NATS connection and event loop) ran
no-op executions at ~3 ms and >1,000/s here. Each actor runs many executions at once
(`max_concurrency`); sync flows run in the actor's thread pool so they never block neighbours.

Events go straight from the actor to NATS, in seq order on one connection, as pipelined
JetStream publishes: the actor does not wait for each ack, but checks every one (after each burst)
and re-sends, with the same `Nats-Msg-Id`, any the stream did not confirm — core publishes were
silently dropped while a server restarted or a stream elected a new leader. A re-sent event may
be stored after later ones; readers order by `seq` (`Execution.events`). The execution's end
waits until every event before it is acknowledged, so its terminal events are stored before the
runner hears the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import functools
import inspect
import logging
import os
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

from pydantic import BaseModel

from . import subjects
from .bus import connect, js_retry
from .chain import ChainContext, WorkflowError, launch_next
from .config import ConnectSettings
from .executions import error_data, set_status, update_record
from .flows import Next, import_object, input_model, spec_of
from .tracer import AskTimeout, Emitter, Tracer, current

log = logging.getLogger("kodo_bus.executor")


class Job(BaseModel):
    """What the runner hands an actor: one validated launch."""

    execution: str
    flow: str
    entry: str
    node: str
    launcher: str
    inputs: dict[str, Any]
    seq: int
    """Last seq the runner used; the actor continues from there."""
    timeout: float | None = None
    parent: str | None = None
    root: str | None = None
    depth: int = 0
    max_depth: int = 32
    node_flows: list[str] = []
    """Flows of the same node, so chained flows prefer it without asking a registry."""


class Outcome(BaseModel):
    """How an execution ended, as the actor reports it."""

    status: str
    last_seq: int
    error: str | None = None


class _Stop(BaseException):
    """Raised inside the thread of a cancelled sync flow."""


class _Publisher:
    """Publishes queued events in order on the actor's connection; every one acknowledged."""

    def __init__(self, js: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._js = js
        self._loop = loop
        self._queue: deque[tuple[str, bytes, dict[str, str]] | asyncio.Future[None]] = deque()
        self._inflight: list[tuple[tuple[str, bytes, dict[str, str]], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._thread = threading.get_ident()
        self.task = loop.create_task(self._run())

    def put(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        self._queue.append((subject, body, headers))
        if threading.get_ident() == self._thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def drain(self) -> None:
        """Return once everything queued before this call is stored (acknowledged)."""
        done: asyncio.Future[None] = self._loop.create_future()
        self._queue.append(done)
        self._wake.set()
        await done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, asyncio.Future):
                    await self._settle()
                    if not item.done():
                        item.set_result(None)
                    continue
                try:
                    ack = await self._js.publish_async(item[0], item[1], headers=item[2])
                except Exception as exc:  # not even sent (reconnecting): re-sent at settle
                    ack = self._loop.create_future()
                    ack.set_exception(exc)
                self._inflight.append((item, ack))
                if len(self._inflight) >= ACK_WINDOW:
                    await self._settle()
            await self._settle()

    async def _settle(self) -> None:
        """Wait for the acks of what is in flight; re-send, in order, what was not stored."""
        inflight, self._inflight = self._inflight, []
        for (subject, body, headers), ack in inflight:
            try:
                await asyncio.wait_for(ack, ACK_WAIT)
                continue
            except Exception as exc:
                log.debug("event on %s not acknowledged (%r): re-sending", subject, exc)
            try:
                await js_retry(
                    functools.partial(self._js.publish, subject, body, headers=headers),
                    f"publish on {subject}",
                    RESEND_WITHIN,
                )
            except Exception:
                log.exception("cannot publish event on %s", subject)


ACK_WINDOW = 1000
"""Events in flight before the publisher waits for their acks."""
ACK_WAIT = 2.0
"""Seconds to wait for one event's ack before re-sending it."""
RESEND_WITHIN = 60.0
"""Seconds a re-send is retried (a server restart, a stream leader election) before giving up."""


class _Capture:
    """sys.stdout/sys.stderr replacement: writes go to the current execution, if any."""

    def __init__(self, kind: str, fallback: TextIO) -> None:
        self._kind = kind
        self._fallback = fallback

    def write(self, text: str) -> int:
        emitter = current.get()
        if emitter is None:
            return self._fallback.write(text)
        emitter.write(self._kind, text)
        return len(text)

    def flush(self) -> None:
        self._fallback.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


class ExecActor:
    """One long-lived worker; wrapped with `ray.remote` by `ActorPool`."""

    def __init__(self, connect_settings: dict[str, Any], sys_path: list[str]) -> None:
        for entry in reversed(sys_path):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        self._connect = ConnectSettings.model_validate(connect_settings)
        self._nc: Any = None
        self._kv: Any = None
        self._pub: _Publisher | None = None
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: set[str] = set()
        self._threads = ThreadPoolExecutor(max_workers=64, thread_name_prefix="kodo-flow")

    async def start(self) -> bool:
        loop = asyncio.get_running_loop()
        self._nc = await connect(self._connect)
        js = self._nc.jetstream()
        self._kv = await js.key_value(subjects.BUCKET_EXECUTIONS)
        self._pub = _Publisher(js, loop)
        if not isinstance(sys.stdout, _Capture):
            sys.stdout = _Capture("stdout", sys.stdout)
            sys.stderr = _Capture("stderr", sys.stderr)
        return True

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        if self._pub is not None:
            await self._pub.drain()
            self._pub.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pub.task
        if self._nc is not None:
            await self._nc.drain()

    async def cancel(self, execution: str) -> bool:
        """Cancel a running execution; one not started yet is cancelled when it arrives."""
        task = self._tasks.get(execution)
        if task is None:
            self._cancelled.add(execution)
            return False
        task.cancel()
        return True

    async def run(self, job_data: dict[str, Any]) -> dict[str, Any]:
        job = Job.model_validate(job_data)
        assert self._pub is not None
        base = {
            "execution": job.execution,
            "node": job.node,
            "flow": job.flow,
            "launcher": job.launcher,
            "parent": job.parent,
            "root": job.root,
        }
        emitter = Emitter(base, job.seq, self._pub.put)
        loop = asyncio.get_running_loop()

        async def on_status(status: str) -> None:
            await update_record(
                self._kv, subjects.record_key(job.launcher, job.execution), set_status(status)
            )

        tracer = Tracer(emitter, self._nc, loop, on_status)
        context = contextvars.copy_context()
        context.run(current.set, emitter)
        emitter.emit("status", {"status": "running"})
        await on_status("running")
        task = loop.create_task(self._call(job, tracer), context=context)
        self._tasks[job.execution] = task
        if job.execution in self._cancelled:
            self._cancelled.discard(job.execution)
            task.cancel()
        timed_out = False
        try:
            done, _ = await asyncio.wait({task}, timeout=job.timeout)
            if not done:
                timed_out = True
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
        except asyncio.CancelledError:
            task.cancel()
            await self._end(emitter, job, "cancelled", {"type": "Cancelled", "message": ""})
            raise
        finally:
            self._tasks.pop(job.execution, None)
        emitter.flush_output()
        if timed_out:
            message = f"ran longer than its timeout of {job.timeout:g} s"
            outcome = await self._end(emitter, job, "timeout", _failure("Timeout", message))
        elif task.cancelled() or not task.done():
            outcome = await self._end(emitter, job, "cancelled", _failure("Cancelled", "cancelled"))
        elif (exc := task.exception()) is not None:
            status = "timeout" if isinstance(exc, AskTimeout) else "error"
            outcome = await self._end(emitter, job, status, error_data(exc))
        else:
            outcome = await self._finish(emitter, job, task.result())
        return outcome.model_dump()

    async def _finish(self, emitter: Emitter, job: Job, value: Any) -> Outcome:
        """`final` (after launching the next flows a `Next` names), or `error` if that fails."""
        nxt = Next.from_result(value)
        if nxt is not None:
            ctx = ChainContext(
                execution=job.execution,
                root=job.root,
                depth=job.depth,
                max_depth=job.max_depth,
                launcher=job.launcher,
                node=job.node,
                node_flows=frozenset(job.node_flows),
            )
            try:
                children = await launch_next(self._nc, ctx, nxt)
            except WorkflowError as exc:
                return await self._end(emitter, job, "error", error_data(exc))
            value = {**nxt.model_dump(), "children": children}
        emitter.emit("final", value)
        return await self._end(emitter, job, "finished", None)

    async def _end(
        self, emitter: Emitter, job: Job, status: str, failure: dict[str, str] | None
    ) -> Outcome:
        """The one terminal pair: `final`/`error` (emitted by the caller for final), status."""
        assert self._pub is not None
        if failure is not None:
            emitter.emit("error", failure)
        last = emitter.emit("status", {"status": status})
        emitter.close()
        await self._pub.drain()
        message = failure["message"] if failure else None
        await update_record(
            self._kv,
            subjects.record_key(job.launcher, job.execution),
            set_status(status, last_seq=last, error=message),
        )
        return Outcome(status=status, last_seq=last, error=message)

    async def _call(self, job: Job, tracer: Tracer) -> Any:
        target = import_object(job.entry)
        spec = spec_of(target)
        func = spec.func if spec is not None else target
        model = input_model(func)  # the node validated already; this only shapes what the flow gets
        inputs: Any = model.model_validate(job.inputs) if model else dict(job.inputs)
        if inspect.iscoroutinefunction(func):
            return await func(inputs, tracer)
        return await self._in_thread(func, inputs, tracer)

    async def _in_thread(self, func: Any, inputs: Any, tracer: Tracer) -> Any:
        """Run a sync flow in a thread; on cancel, raise `_Stop` inside that thread."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        ident: list[int] = []

        def call() -> Any:
            ident.append(threading.get_ident())
            return context.run(func, inputs, tracer)

        future = loop.run_in_executor(self._threads, call)
        try:
            return await future
        except asyncio.CancelledError:
            if ident:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(ident[0]), ctypes.py_object(_Stop)
                )
            raise


def _failure(type_name: str, message: str) -> dict[str, str]:
    return {"type": type_name, "message": message, "traceback": ""}


class WorkerDied(Exception):
    """The Ray actor running an execution died (the flow called os._exit, OOM, crash...)."""


class ActorPool:
    """Driver side: starts Ray when first needed, keeps `size` actors, spreads executions."""

    def __init__(
        self, connect_settings: ConnectSettings, ray_address: str | None, size: int | None
    ) -> None:
        self._connect = connect_settings
        self._ray_address = ray_address
        self._size = size
        self._actors: list[Any] = []
        self._load: dict[int, int] = {}
        self._where: dict[str, Any] = {}
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
                self._concurrency = max(4, -(-running // size) * 2)
                self._actors = await asyncio.gather(*(self._new_actor() for _ in range(size)))
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

    async def _new_actor(self) -> Any:
        import ray

        cls = ray.remote(ExecActor)
        actor = cls.options(num_cpus=0, max_concurrency=self._concurrency, max_restarts=0).remote(
            self._connect.model_dump(mode="json"), list(sys.path)
        )
        await actor.start.remote()  # type: ignore[attr-defined]
        self._load[id(actor)] = 0
        return actor

    async def run(self, job: Job) -> Outcome:
        from ray.exceptions import RayActorError

        actor = min(self._actors, key=lambda a: self._load.get(id(a), 0))
        self._load[id(actor)] = self._load.get(id(actor), 0) + 1
        self._where[job.execution] = actor
        try:
            result = await actor.run.remote(job.model_dump())
        except RayActorError as exc:
            await self._replace(actor)
            raise WorkerDied(str(exc).splitlines()[0] if str(exc) else "actor died") from None
        finally:
            self._where.pop(job.execution, None)
            if id(actor) in self._load:
                self._load[id(actor)] -= 1
        return Outcome.model_validate(result)

    async def cancel(self, execution: str) -> None:
        actor = self._where.get(execution)
        if actor is not None:
            await actor.cancel.remote(execution)

    async def _replace(self, dead: Any) -> None:
        async with self._lock:
            if dead not in self._actors:
                return
            self._actors.remove(dead)
            self._load.pop(id(dead), None)
            try:
                self._actors.append(await self._new_actor())
            except Exception:
                log.exception("cannot start a replacement Ray actor")

    async def stop(self) -> None:
        import ray

        async with self._lock:
            actors, self._actors = self._actors, []
            self._started = False
        for actor in actors:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(actor.stop.remote(), 5)
            ray.kill(actor)
