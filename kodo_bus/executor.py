"""The Ray side: a pool of long-lived async actors that run executions.

Why actors and not tasks: Ray refuses `async def` tasks, an actor per execution costs ~0.5 s to
start, and a few long-lived async actors (each with its own NATS connection and event loop) ran
no-op executions at ~3 ms and >1,000/s here. Each actor runs many executions at once
(`max_concurrency`); sync flows run in the actor's thread pool so they never block neighbours.

Events go straight from the actor to NATS, in seq order on one connection, through an
`EventPublisher` (pipelined, every ack checked, re-sent until stored). Nothing on an execution's
way waits for an event's ack but the claim of its ending (`lifecycle.conclude`): the flow starts
as its `running` goes out (`_Start`), and the `final` goes out behind the flow's events.

The record is written here at the end (and `running` only once an execution has run for
`RUNNING_WRITE_AFTER`, so short executions cost one write), each write compare-and-set from the
revision the previous one returned — the runner hands over the one of its create — so a write is
one round trip. The record trails the events by design; readers that need the live status take
it from the events (`Execution.status`).

Jobs and outcomes travel over NATS, not as Ray calls (see `pool.py` for why): each actor takes
`JobBatch`es on its own subject and reports `OutcomeBatch`es to its runner, both acknowledged and
re-sent until they are; an actor remembers the executions it was handed, so a re-sent batch
never runs anything twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import functools
import gc
import inspect
import logging
import sys
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

import nats.errors
from nats.aio.msg import Msg
from pydantic import BaseModel

from . import files, subjects
from .bus import connect, deliver, jetstream, respond
from .chain import ChainContext, WorkflowError, launch_next
from .codec import JSON, decode_msg
from .config import ConnectSettings
from .errors import EventsNotStored, WireError
from .executions import (
    Change,
    Stored,
    error_data,
    read_record,
    record_key,
    set_status,
    update_record,
)
from .flows import Next, import_object, input_model, spec_of
from .lifecycle import (
    NOTHING,
    Message,
    conclude,
    envelope,
    error_of,
    not_ended,
    repair,
    unless_ended,
)
from .models import TERMINAL_STATUSES, Ack, ExecutionRecord
from .publisher import EventPublisher
from .tasks import TaskSet
from .tracer import AskTimeout, Emitter, Tracer, current

log = logging.getLogger("kodo_bus.executor")


class Job(BaseModel):
    """What the runner hands an actor: one validated launch."""

    record: ExecutionRecord
    revision: int
    """Of the record in the bucket, for the actor's first compare-and-set."""
    entry: str
    inputs: dict[str, Any]
    seq: int
    """Last seq the runner used; the actor continues from there."""
    timeout: float | None = None
    max_depth: int = 32
    node_flows: list[str] = []
    """Flows of the same node, so chained flows prefer it without asking a registry."""


class Outcome(BaseModel):
    """How an execution ended, as the actor reports it."""

    status: str
    last_seq: int
    error: str | None = None
    ended: bool = False
    """The worker ended the execution (or learned who did); else the runner must end it."""


class JobBatch(BaseModel):
    """Runner → worker (`subjects.work_jobs`): executions to start, then ones to cancel."""

    jobs: list[Job] = []
    cancel: list[str] = []


class OutcomeBatch(BaseModel):
    """Worker → runner (`subjects.work_outcomes`): executions that ended, by id."""

    outcomes: dict[str, Outcome]


_How = tuple[str, dict[str, str] | None, Any]
"""How a flow ended: terminal status, `error` data (or None), `final` value (or NOTHING)."""

_Entry = tuple[Any, type[BaseModel] | None, bool]
"""A flow's function, its input model (if any), whether it is `async def`."""

KNOWN_JOBS = 100_000
"""Execution ids an actor remembers, to ignore a re-sent batch (a few MB at most)."""


class _Stop(BaseException):
    """Raised inside the thread of a cancelled sync flow."""


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

    def __init__(
        self,
        connect_settings: dict[str, Any],
        sys_path: list[str],
        jobs_subject: str,
        outcomes_subject: str,
    ) -> None:
        self._jobs_subject = jobs_subject
        self._outcomes_subject = outcomes_subject
        for entry in reversed(sys_path):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        self._connect = ConnectSettings.model_validate(connect_settings)
        self._nc: Any = None
        self._js: Any = None
        self._kv: Any = None
        self._fenced_runs = True
        """Every event of a run carries the fence's condition (`_Start`): not on a replicated
        events stream, which refuses a second conditional publish on one check subject while
        the first is being replicated (nats-server's expected-per-subject in process)."""
        self._pub: EventPublisher | None = None
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        """Cancels that arrived before their job (bounded: a cancel for a job that never comes
        must not stay forever)."""
        self._work = TaskSet(log)
        """Executions being run, and their records' delayed writes."""
        self._known: OrderedDict[str, None] = OrderedDict()
        self._ended: dict[str, Outcome] = {}
        self._reports = TaskSet(log)
        """The outcome batch being delivered to the runner (one at a time: the outcomes that
        end meanwhile go together in the next one, so batches grow with the load)."""
        self._reporting = False
        self._stopped = asyncio.Event()
        self._threads = ThreadPoolExecutor(max_workers=64, thread_name_prefix="kodo-flow")
        self._entries: dict[str, _Entry] = {}

    async def start(self) -> bool:
        loop = asyncio.get_running_loop()
        self._nc = await connect(self._connect)
        js = jetstream(self._nc)
        self._js = js
        self._kv = await js.key_value(subjects.BUCKET_EXECUTIONS)
        self._fenced_runs = await _solo_events_stream(js)
        self._pub = EventPublisher(self._nc, loop)
        await self._nc.subscribe(self._jobs_subject, cb=self._on_jobs)
        if not isinstance(sys.stdout, _Capture):
            sys.stdout = _Capture("stdout", sys.stdout)
            sys.stderr = _Capture("stderr", sys.stderr)
        gc.freeze()  # Ray's and the flows' modules live as long as the actor: no GC walks them
        return True

    async def serve(self) -> None:
        """Returns when the actor stops; the runner's outstanding call raises if it dies."""
        await self._stopped.wait()

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
        for task in list(self._tasks.values()):
            task.cancel()
        if self._work.tasks:
            await asyncio.wait(self._work.tasks, timeout=5)
        # A delivery that ends starts the next one (what ended meanwhile): wait for the chain.
        deadline = asyncio.get_running_loop().time() + 5
        self._report()
        while self._reports.tasks and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await asyncio.wait(self._reports.tasks, timeout=left)
        await self._reports.close()  # what is still undelivered after 5 s
        if self._pub is not None:
            await self._pub.stop()
        if self._nc is not None:
            await self._nc.drain()
        self._stopped.set()

    def _cancel(self, execution: str) -> None:
        """Cancel a running execution; one not started yet is cancelled when it arrives."""
        task = self._tasks.get(execution)
        if task is not None:
            task.cancel()
        else:
            self._cancelled[execution] = None
            if len(self._cancelled) > KNOWN_JOBS:
                self._cancelled.popitem(last=False)

    async def _on_jobs(self, msg: Msg) -> None:
        try:
            batch = decode_msg(msg, JobBatch)
        except WireError as exc:
            log.error("dropping a job batch: %s", exc)
            return
        await respond(msg, Ack())
        for job in batch.jobs:
            execution = job.record.execution
            if execution in self._known:
                continue  # a re-sent batch whose first copy arrived
            self._known[execution] = None
            if len(self._known) > KNOWN_JOBS:
                self._known.popitem(last=False)
            self._work.spawn(self._run_reporting(job), f"run-{execution}")
        for execution in batch.cancel:
            self._cancel(execution)

    async def _run_reporting(self, job: Job) -> None:
        try:
            outcome = await self.run(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not even the ending could be stored: the runner ends it
            log.exception("execution %s could not be ended by its worker", job.record.execution)
            outcome = Outcome(status="error", last_seq=0, error=f"worker failure: {exc!r}")
        if not self._ended and not self._reporting:
            asyncio.get_running_loop().call_soon(self._report)
        self._ended[job.record.execution] = outcome

    def _report(self) -> None:
        """Send what ended since the last report, as one batch."""
        if self._reporting or not self._ended:
            return
        ended, self._ended = self._ended, {}
        self._reporting = True
        self._reports.spawn(self._deliver(OutcomeBatch(outcomes=ended)), "report-outcomes")

    async def _deliver(self, batch: OutcomeBatch) -> None:
        try:
            await deliver(self._nc, self._outcomes_subject, batch, content_type=JSON)
        finally:
            self._reporting = False
            if not self._stopped.is_set():
                self._report()

    async def run(self, job: Job) -> Outcome:
        """Run one execution to its end: events, record, the flow itself."""
        assert self._pub is not None
        r = job.record
        execution = r.execution
        emitter = Emitter(envelope(r), job.seq, self._pub.put)
        self._pub.retain(execution, r.retention)
        loop = asyncio.get_running_loop()
        record = _RecordWriter(self._kv, (r, job.revision), self._work)

        async def on_status(status: str) -> None:
            await record.write(set_status(status))

        tracer = Tracer(emitter, self._nc, loop, on_status)
        context = contextvars.copy_context()
        context.run(current.set, emitter)
        running = emitter.message("status", {"status": "running"})
        if running is None:
            return await self._ended_elsewhere(r)
        start = _Start(self._pub, r, running, whole_run=self._fenced_runs)
        try:
            record.write_later(set_status("running"), RUNNING_WRITE_AFTER)
            task = loop.create_task(self._call(job, tracer), context=context)
            start.watch(task)
            self._tasks[execution] = task
            if execution in self._cancelled:
                del self._cancelled[execution]
                task.cancel()
            try:
                try:
                    how = await self._outcome_of(job, task)
                finally:
                    self._tasks.pop(execution, None)
            except asyncio.CancelledError:  # the actor is stopping
                task.cancel()
                stopped = ("cancelled", error_of("Cancelled", "the worker stopped"), NOTHING)
                await self._end(job, emitter, record, stopped, start)
                raise
            except Exception as exc:  # a failure of ours, not the flow's: still one ending
                log.exception("execution %s failed in the worker", execution)
                how = ("error", error_data(exc, "WorkerFailure"), NOTHING)
            if start.refused:
                emitter.close()
                return await self._ended_elsewhere(r)
            emitter.flush_output()
            return await self._end(job, emitter, record, how, start)
        finally:
            self._pub.unguard(execution)

    async def _ended_elsewhere(self, r: ExecutionRecord) -> Outcome:
        """Its events were refused: someone else ended it. Repair their ending (they may have
        died after the fence), or, when the record is live (a fence left by an ending long
        gone), say it is not ended, so the runner ends it."""
        log.warning("execution %s was ended by someone else than its worker", r.execution)
        current = await read_record(self._kv, record_key(r))
        if current is None or current[0].status not in TERMINAL_STATUSES:
            return Outcome(
                status=r.status, last_seq=0, ended=False, error="its events were refused"
            )
        ending = await repair(self._js, self._kv, current[0])
        return Outcome(status=ending.status, last_seq=ending.last_seq, ended=True)

    async def _outcome_of(self, job: Job, task: asyncio.Task[Any]) -> _How:
        """Wait for the flow (within its timeout): status, failure and final value."""
        done, _ = await asyncio.wait({task}, timeout=job.timeout)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
            message = f"ran longer than its timeout of {job.timeout:g} s"
            return "timeout", error_of("Timeout", message), NOTHING
        if task.cancelled():
            return "cancelled", error_of("Cancelled", "cancelled"), NOTHING
        if (exc := task.exception()) is not None:
            status = "timeout" if isinstance(exc, AskTimeout) else "error"
            return status, error_data(exc), NOTHING
        return await self._finish(job, task.result())

    async def _finish(self, job: Job, value: Any) -> _How:
        """`final` (after launching the next flows a `Next` names), or `error` if that fails."""
        nxt = Next.from_result(value)
        if nxt is None:
            return "finished", None, value
        r = job.record
        ctx = ChainContext(
            execution=r.execution,
            root=r.root,
            depth=r.depth,
            max_depth=job.max_depth,
            launcher=r.launcher,
            node=r.node,
            node_flows=frozenset(job.node_flows),
        )
        try:
            children = await launch_next(self._nc, ctx, nxt)
        except asyncio.CancelledError:
            raise
        except WorkflowError as exc:
            return "error", error_data(exc), NOTHING
        except Exception as exc:  # no registry answers, a timeout...: the chain did not start
            names = ", ".join(nxt.flows)
            failed = WorkflowError(f"could not launch the next flows ({names}): {exc}")
            return "error", error_data(failed), NOTHING
        return "finished", None, {**nxt.model_dump(), "children": children}

    async def _end(
        self, job: Job, emitter: Emitter, record: _RecordWriter, how: _How, start: _Start
    ) -> Outcome:
        """The one ending (`lifecycle.conclude`), after every event the flow emitted.

        If events of the flow were given up on (`EventsNotStored`, the server gone longer than
        the publisher retries), the execution ends `error` with that reason instead.
        """
        assert self._pub is not None
        status, failure, final = how
        after = emitter.close()
        execution = job.record.execution
        pub = self._pub
        store = functools.partial(pub.store, execution=execution)
        known = await record.settle()
        end = functools.partial(
            conclude,
            self._js,
            self._kv,
            job.record,
            store=store,
            send=pub.send,
            settled=start.settled,
            written=pub.written,
        )
        try:
            pub.raise_lost(execution)  # events of the flow given up on: it ends `error`
        except EventsNotStored as exc:
            log.error("execution %s: %s", execution, exc)
            status, failure, final = "error", error_data(exc), NOTHING
        ending = await end(after, status, error=failure, final=final, known=known)
        message = failure["message"] if failure and ending.won else None
        return Outcome(status=ending.status, last_seq=ending.last_seq, error=message, ended=True)

    async def _call(self, job: Job, tracer: Tracer) -> Any:
        func, model, is_async = self._entries.get(job.entry) or self._resolve(job.entry)
        # The node validated already; the model only shapes what the flow gets.
        inputs: Any = model.model_validate(job.inputs) if model else dict(job.inputs)
        refs = list(files.refs_in(inputs))
        if not refs:
            return await self._invoke(func, is_async, inputs, tracer)
        local = files.InputFiles(self._js, job.record.launcher)
        try:
            await local.fetch(refs)
            return await self._invoke(func, is_async, inputs, tracer)
        finally:
            await local.remove()

    async def _invoke(self, func: Any, is_async: bool, inputs: Any, tracer: Tracer) -> Any:
        if is_async:
            return await func(inputs, tracer)
        return await self._in_thread(func, inputs, tracer)

    def _resolve(self, entry: str) -> _Entry:
        """A flow's function, input model and kind, looked up once per actor (not per run)."""
        target = import_object(entry)
        spec = spec_of(target)
        func = spec.func if spec is not None else target
        resolved = self._entries[entry] = (
            func,
            input_model(func),
            inspect.iscoroutinefunction(func),
        )
        return resolved

    async def _in_thread(self, func: Any, inputs: Any, tracer: Tracer) -> Any:
        """Run a sync flow in a thread; on cancel, raise `_Stop` inside that thread — only while
        the flow runs there (the pool thread goes on to other jobs once it returned)."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        lock = threading.Lock()
        running: list[int] = []

        def call() -> Any:
            with lock:
                running.append(threading.get_ident())
            try:
                return context.run(func, inputs, tracer)
            finally:
                with lock:
                    running.clear()

        future = loop.run_in_executor(self._threads, call)
        try:
            return await future
        except asyncio.CancelledError:
            with lock:
                if running:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(running[0]), ctypes.py_object(_Stop)
                    )
            raise


class _Start:
    """An execution's `running`, and the condition every event of its run carries: stored only
    while nobody else ended the execution (`lifecycle.not_ended`).

    Nobody else should, but an outsider can: a job that reaches the worker after its node was
    declared lost, or a registry that judges a node lost while it is only frozen and its Ray
    actor runs on. Whoever ends an execution other than its worker claims the record, then
    stores an `error` (`lifecycle.end_from_outside`); from then on every event of this worker
    is refused — its `running` (then the flow is not even started for good), an output event,
    its `final` — and the first refusal cancels the flow: its claim would lose anyway. So
    nothing of the worker is stored behind an ending that came first.

    The `running` is not waited for: the flow starts at once. Waiting for that ack put a
    round trip before every flow and, for a short one, before its ending (issue 18).
    """

    def __init__(
        self, pub: EventPublisher, record: ExecutionRecord, running: Message, *, whole_run: bool
    ) -> None:
        self._pub = pub
        self._whole_run = whole_run
        self._execution = record.execution
        self._task: asyncio.Task[Any] | None = None
        self.refused = False
        """An event was refused: someone else ended the execution."""
        pub.guard(record.execution, not_ended(record), self._refuse)
        self._confirmed = pub.confirm(unless_ended(running, record))
        self._confirmed.add_done_callback(self._on_confirmed)

    def watch(self, task: asyncio.Task[Any]) -> None:
        """The flow's task: cancelled once an event is refused."""
        self._task = task
        if self.refused:
            task.cancel()

    def _on_confirmed(self, future: asyncio.Future[bool]) -> None:
        # Given up on (EventsNotStored): the flow runs, and its ending reports the loss.
        if future.cancelled() or future.exception() is not None:
            return
        if not future.result():
            self._refuse()
        elif not self._whole_run:  # a replicated stream: the run's events go as they are
            self._pub.unguard(self._execution)

    def _refuse(self) -> None:
        if not self.refused:
            log.warning("execution %s was ended by someone else: stopping it", self._execution)
        self.refused = True
        if self._task is not None:
            self._task.cancel()

    async def settled(self) -> None:
        """Wait for `running`'s ack (`conclude`, after a won claim; long in by then, as a rule:
        it was sent before the ending), then drop the condition so the status goes as it is
        (the worker's own `error` would fail it)."""
        try:
            stored = await self._confirmed
        except EventsNotStored:
            stored = True  # the flow ran; its ending reports the loss
        if not stored:  # an `error` stored, yet this worker's claim won: not by the protocol
            log.error("execution %s: its running was refused, yet its ending won", self._execution)
        self._pub.unguard(self._execution)


async def _solo_events_stream(js: Any) -> bool:
    """Whether the events stream has one replica (a worker's events can all carry the fence's
    condition, pipelined). On a replicated one they cannot: only the `running` and what is
    sent before its ack carry it, so a worker that runs on after an outsider ended its
    execution can store events after the ending there (ARCHITECTURE, "Who may end")."""
    try:
        info = await js.stream_info(subjects.STREAM_EVENTS)
    except nats.errors.Error:  # no right to look, or not there yet: the solo case, the usual one
        return True
    return int(info.config.num_replicas or 1) <= 1


class _RecordWriter:
    """Writes one execution's record in order, each write from the revision the last returned."""

    def __init__(self, kv: Any, known: Stored, tasks: TaskSet) -> None:
        self._kv = kv
        self._key = record_key(known[0])
        self._known: Stored | None = known
        self._lock = asyncio.Lock()
        self._tasks = tasks
        self._later: asyncio.TimerHandle | None = None

    async def write(self, change: Change) -> None:
        if self._later is not None:
            self._later.cancel()  # a later write supersedes it (and must not be overwritten)
            self._later = None
        async with self._lock:
            # None (nothing written, or the record ended elsewhere): the next write reads first.
            self._known = await update_record(self._kv, self._key, change, self._known)

    async def settle(self) -> Stored | None:
        """No more writes: cancel a delayed one, wait for the one under way; the last known."""
        if self._later is not None:
            self._later.cancel()
            self._later = None
        async with self._lock:
            return self._known

    def write_later(self, change: Change, delay: float) -> None:
        """Write after `delay` seconds unless another write comes first."""
        self._later = asyncio.get_running_loop().call_later(delay, self._fire, change)

    def _fire(self, change: Change) -> None:
        self._later = None
        # Not waited for: a later write still comes after it (the lock is FIFO).
        self._tasks.spawn(self.write(change), f"write-{self._key}")


RUNNING_WRITE_AFTER = 0.5
"""Seconds an execution runs before its record says `running` (most no-op ones are done)."""
