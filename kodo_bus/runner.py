"""Node side of executions: take launches, queue them, run them on the actor pool, control them.

A launch is validated here, before anything runs; a valid one gets a record, its first events
(meta, inputs, its first status) and an immediate reply with the execution id. At most
`max_running` executions run at once; the rest wait first in first out, up to `max_queue`, and a
launch beyond that is refused as `busy` — nothing accepted is ever dropped. The node publishes one
status, for the state the execution is in: `starting` when a slot is free (it goes to a worker at
once: Ray may still be starting), else `pending` (it waits in the queue for a slot); the worker
says `running` next. Each status is a stored event, and at hundreds of launches a second stored
events are what an execution costs.

Ray is started at the first launch, not at `start`, so nodes that never run anything stay light.
The runner publishes only the events before the hand-over and the ending of executions whose
worker died. Launches are accepted concurrently (a launch waits on JetStream round trips, not on
the CPU), at most `ACCEPT_AT_ONCE` at a time, so one slow store does not serialise the node.

Round trips per launch, because they are what a launch costs: the record's create and the first
events' acks go out together before the reply; the record is then written twice more, by the
worker, with the revision it was handed (no read before the compare-and-set).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from . import files, subjects
from .bus import (
    JETSTREAM_TRANSIENT,
    ensure_execution_storage,
    jetstream,
    js_retry,
    respond,
    respond_error,
)
from .codec import MSG_ID, decode_msg
from .config import DUPLICATE_WINDOW, ServiceSettings
from .errors import ConfigError, EventsNotStored, InputsInvalid, RemoteError, WireError
from .execution_id import first_of_its_kind, holder
from .executions import (
    Stored,
    create_record,
    jsonable,
    read_record,
    record_key,
    set_status,
    update_record,
)
from .flows import FlowSpec
from .lifecycle import conclude, end_from_outside, envelope, error_of, repair, stored_ending
from .models import (
    TERMINAL_STATUSES,
    Ack,
    AnswerRequest,
    Empty,
    Event,
    ExecutionRecord,
    LaunchReply,
    LaunchRequest,
)
from .publisher import EventPublisher
from .tracer import Emitter

if TYPE_CHECKING:
    from .pool import ActorPool

log = logging.getLogger("kodo_bus.runner")

ACCEPT_RETRY = 3.0
"""Seconds a launch's first writes are retried while JetStream fails over (requests wait 5 s)."""
ACCEPT_AT_ONCE = 64
"""Launches being accepted concurrently; more wait in the subscription (back-pressure)."""
ANSWER_RELAY = 5.0
"""Seconds the node waits for the worker's reply to an answer it relays (the worker only
validates it, so this bounds a stuck actor, not a human)."""
RELAYS_AT_ONCE = 16
"""Answers being relayed concurrently; more wait in the subscription (back-pressure)."""
FORWARDED = "Kodo-Forwarded-Subject"
"""Header of a cancel or answer one process of a node id hands to the process (replica) that
holds the execution, on `kodo.work.<node>.control.<instance>`: the subject it came on."""
DELETES_AT_ONCE = 4
"""Deletes (`kodo.exec.<user>.<execution>.delete`) done at once, in tasks; one more (or a second
of the same execution) is answered `busy` at once and the SDK retries: the subscription that
takes deletes also takes every public cancel and answer, which must never wait behind them."""
FORWARD_WITHIN = ANSWER_RELAY + 1.0
"""Seconds a node waits for the reply of the node (or process) it handed a request to: that
one may relay an answer to its worker for up to `ANSWER_RELAY`."""


@dataclass
class _Execution:
    record: ExecutionRecord
    spec: FlowSpec
    inputs: dict[str, Any]
    timeout: float | None
    emitter: Emitter
    """Numbers and encodes the events the node publishes (the worker continues the seq)."""
    revision: int = 0
    """The record's revision in the bucket after the runner's last write."""
    state: str = "pending"
    cancel_requested: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def seq(self) -> int:
        """Last seq the node used."""
        return self.emitter.seq


class Runner:
    """Runs the executions of one node (every replica of the node id has one)."""

    def __init__(
        self,
        nc: NATS,
        settings: ServiceSettings,
        flows: list[FlowSpec],
        instance: str = "",
        pool: ActorPool | None = None,
    ) -> None:
        self._nc = nc
        self._instance = instance or secrets.token_hex(4)
        """This process among the replicas of its node id (stored in every record it creates,
        so the death of one replica ends its executions only)."""
        self._settings = settings
        self._flows = {spec.name: spec for spec in flows}
        self._capacity = settings.max_running or os.cpu_count() or 1
        self._queue: deque[_Execution] = deque()
        self._live: dict[str, _Execution] = {}
        self._running = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._launching: set[asyncio.Task[Any]] = set()
        self._accept_slots = asyncio.Semaphore(ACCEPT_AT_ONCE)
        self._admitted = 0
        """Launches past the busy check and not queued yet."""
        self._reserved = 0
        """Slots held by launches being accepted that start at once."""
        self._launch_sub: Subscription | None = None
        self._public_sub: Subscription | None = None
        """Cancels and answers on the public subjects, in the queue group all nodes share: one
        node gets each, answers it if it holds the execution, else from the record or by
        handing it to the node the record names. Not one subscription per execution: that
        cost more CPU (SUB, UNSUB, a task) than a no-op execution's events."""
        self._addressed_sub: Subscription | None = None
        """Cancels and answers addressed to this node id (`EXEC_CONTROL_AT_NODE`, the SDK's
        way), in the queue group of the id: no other node hears them, one process of the id
        gets each."""
        self._forwarded_sub: Subscription | None = None
        """Cancels and answers another process of this node id got for an execution this one
        holds (`WORK_CONTROL`)."""
        self._relay_slots = asyncio.Semaphore(RELAYS_AT_ONCE)
        self._hand_slots = asyncio.Semaphore(RELAYS_AT_ONCE)
        """Requests being handed to their holder at once; more wait in the subscription."""
        self._deleting: set[tuple[str, str]] = set()
        """(user, execution) of the deletes under way: at most `DELETES_AT_ONCE`."""
        self._pub: EventPublisher | None = None
        self._pool: ActorPool | None = pool  # `kodo-bus try`: local_pool.LocalPool, no Ray
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._stopping = False
        self.rejected = 0

    async def __aenter__(self) -> Runner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._js = jetstream(self._nc)
        self._kv = await ensure_execution_storage(
            self._js,
            max_age=self._settings.events_max_age,
            replicas=self._settings.replicas,
            max_bytes=self._settings.events_max_bytes,
            records_max_bytes=self._settings.records_max_bytes,
        )
        self._pub = EventPublisher(self._nc, asyncio.get_running_loop())
        node = self._settings.id
        self._public_sub = await self._nc.subscribe(
            subjects.EXEC_CONTROL_ALL, queue=subjects.EXEC_QUEUE, cb=self._on_control
        )
        self._addressed_sub = await self._nc.subscribe(
            subjects.exec_control_at_node(node), queue=node, cb=self._on_control
        )
        self._forwarded_sub = await self._nc.subscribe(
            subjects.work_control(node, self._instance or "-"), cb=self._on_forwarded
        )
        self._launch_sub = await self._nc.subscribe(
            subjects.launch_node(node), queue=node, cb=self._on_launch
        )
        # started means answering: a request sent right after (from another account too, on
        # the secure profile) found no responder while the subscriptions were still on their
        # way to the server (a fresh-clone run under load)
        await self._nc.flush()

    async def stop(self) -> None:
        """Refuse new launches, give running ones `grace` seconds, then cancel them."""
        self._stopping = True
        if self._launch_sub is not None:
            with contextlib.suppress(Exception):  # launches already received are told "busy"
                await self._launch_sub.drain()  # type: ignore[no-untyped-call]
            self._launch_sub = None
        if self._launching:
            await asyncio.wait(self._launching, timeout=ACCEPT_RETRY * 2)
        while self._queue:
            await self._end_pending(self._queue.popleft(), "node stopped before it ran")
        running = [ex for ex in self._live.values() if ex.state != "done"]
        if running:
            waits = [asyncio.create_task(ex.ended.wait()) for ex in running]
            _, late = await asyncio.wait(waits, timeout=self._settings.grace)
            for task in late:
                task.cancel()
            for ex in running:
                if ex.state != "done":
                    await self._cancel_running(ex)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ex in list(self._live.values()):  # whatever did not end in time (Ray still starting)
            with contextlib.suppress(Exception):
                await self._end_outside(ex, "cancelled", "Cancelled", "the node stopped")
        for sub in (self._public_sub, self._addressed_sub, self._forwarded_sub):
            if sub is not None:  # cancels and answers were honoured through the grace period
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self._public_sub = self._addressed_sub = self._forwarded_sub = None
        if self._pool is not None:
            await self._pool.stop()
            self._pool = None
        if self._pub is not None:
            await self._pub.stop()
            self._pub = None

    def load(self) -> tuple[int, int, int]:
        """(running, queued, capacity) for heartbeats."""
        return self._running, len(self._queue), self._capacity

    # -- launches ----------------------------------------------------------------------------
    async def _on_launch(self, msg: Msg) -> None:
        await self._accept_slots.acquire()
        task = asyncio.create_task(self._launch_guarded(msg), name=f"launch-{msg.subject}")
        self._launching.add(task)
        task.add_done_callback(self._launched)

    def _launched(self, task: asyncio.Task[Any]) -> None:
        self._launching.discard(task)
        self._accept_slots.release()
        self._done(task)

    async def _launch_guarded(self, msg: Msg) -> None:
        try:
            await self._launch(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("launch on %s failed", msg.subject)
            await respond_error(msg, "internal", f"the node failed to accept the launch: {exc}")

    async def _launch(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        if len(parts) != 5:
            self.rejected += 1
            await respond_error(msg, "invalid_request", f"bad launch subject {msg.subject!r}")
            return
        launcher, flow_name = parts[2], parts[4]
        spec = self._flows.get(flow_name)
        if spec is None:
            names = ", ".join(sorted(self._flows)) or "none"
            await respond_error(
                msg, "not_found", f"node {self._settings.id!r} has no flow {flow_name!r} ({names})"
            )
            return
        try:
            request = decode_msg(msg, LaunchRequest)
        except WireError as exc:  # invalid_request, or unsupported_version
            self.rejected += 1
            await respond_error(msg, exc.kind, str(exc))
            return
        if request.depth >= self._settings.max_depth:
            await respond_error(
                msg, "invalid_request", f"launch depth {request.depth} exceeds max_depth"
            )
            return
        try:
            validated = spec.validate(request.inputs)
        except InputsInvalid as exc:
            await respond_error(msg, "invalid_inputs", str(exc), exc.problems)
            return
        if self._stopping:
            await respond_error(msg, "busy", f"node {self._settings.id!r} is stopping")
            return
        free = max(0, self._capacity - self._running)
        if len(self._queue) + self._admitted >= self._settings.max_queue + free:
            await respond_error(
                msg,
                "busy",
                f"node {self._settings.id!r} is busy: {self._running} running and "
                f"{len(self._queue)} queued (max_queue {self._settings.max_queue}); retry later",
            )
            return
        inputs = jsonable(validated)
        # FIFO: only a launch with nobody queued before it may take a free slot directly.
        now = not self._queue and self._running + self._reserved < self._capacity
        self._admitted += 1
        self._reserved += now
        try:
            ex = await self._accept(spec, launcher, request, inputs, now)
        except RemoteError as exc:  # the id is somebody else's
            await respond_error(msg, exc.kind, exc.message)
            return
        finally:
            self._admitted -= 1
            self._reserved -= now
        if isinstance(ex, LaunchReply):  # launched before: the same execution
            await respond(msg, ex)
            return
        if now:
            self._start(ex)
        else:
            self._queue.append(ex)
            self._pump()
        await respond(msg, _reply(ex.record))

    async def _accept(
        self,
        spec: FlowSpec,
        launcher: str,
        request: LaunchRequest,
        inputs: dict[str, Any],
        start_now: bool,
    ) -> _Execution | LaunchReply:
        """Record and first events of a new execution, stored before the launch is answered —
        or the reply for an execution that already holds the id.

        The record's create and the first events go out together (one round trip). The first
        events claim the id (`execution_id`): a launch that finds them stored already is the
        same execution launched again (same user) or is refused (another user's id).
        """
        assert self._js is not None and self._kv is not None and self._pub is not None
        execution = request.execution or secrets.token_hex(16)  # 128 random bits
        now = time.time()
        record = ExecutionRecord(
            execution=execution,
            flow=spec.name,
            node=self._settings.id,
            launcher=launcher,
            status="starting" if start_now else "pending",
            created=now,
            updated=now,
            parent=request.parent,
            root=request.root or (execution if request.parent is None else None),
            depth=request.depth,
            instance=self._instance,
            retention=spec.retention,
        )
        self._pub.retain(execution, spec.retention)
        timeout = request.timeout or spec.timeout
        emitter = Emitter(envelope(record), 0, self._pub.put)
        ex = _Execution(record=record, spec=spec, inputs=inputs, timeout=timeout, emitter=emitter)
        meta = {
            "flow": spec.name,
            "node": self._settings.id,
            "entry": spec.entry,
            "summary": spec.summary,
            "version": spec.version,
            "timeout": timeout,
            "depth": request.depth,
        }
        first = [
            (kind, emitter.message(kind, data))
            for kind, data in (
                ("meta", meta),
                ("inputs", inputs),
                ("status", {"status": record.status}),
            )
        ]
        attempt = secrets.token_hex(4)
        claims = [
            first_of_its_kind(message, execution, kind, attempt)
            for kind, message in first
            if message is not None
        ]
        # The record's create first, then the first events: all five messages (the index
        # entry too) go out in one socket write, instead of the events alone and the record a
        # loop turn later — a write is a loopback send, among the dearest steps of a launch.
        creating = asyncio.ensure_future(self._create(self._kv, record))
        for message in claims:
            self._pub.put(*message)
        created, drained = await asyncio.gather(
            creating, self._pub.drain(execution), return_exceptions=True
        )
        meta_id = claims[0][2][MSG_ID]
        if self._pub.preceded(meta_id):  # the `meta` decides
            stored = await holder(self._js, execution)
            if stored is None or stored[1] != meta_id:  # (else: our own, re-sent)
                return await self._taken(record, created, stored)
        if isinstance(created, RemoteError):  # the id is held: leave no trail under it
            with contextlib.suppress(Exception):
                await self._pub.drain(execution)
            with contextlib.suppress(nats.errors.Error):
                subject = subjects.events(launcher, execution, "*")
                await self._js.purge_stream(subjects.STREAM_EVENTS, subject=subject)
            raise created
        if isinstance(created, BaseException):
            # No record, so nobody else can end it: end the trail already stored, then fail.
            failure = error_of(type(created).__name__, f"not accepted: {created}")
            self._publish(ex, "error", failure)
            self._publish(ex, "status", {"status": "error"})
            with contextlib.suppress(Exception):
                await self._pub.drain(execution)
            raise created
        if isinstance(created, tuple):  # a copy of this launch created it first: adopt it
            adopted = await update_record(
                self._kv,
                record_key(record),
                set_status(record.status, instance=self._instance),
                known=created,
            )
            if adopted is None:
                raise WireError(record_key(record), "the execution's record ended meanwhile")
            created = adopted[1]
        ex.revision = created
        self._live[execution] = ex
        if isinstance(drained, BaseException):
            # Not accepted: the launcher gets an error reply; end what was claimed.
            self._forget(ex)
            error = error_of(type(drained).__name__, f"not accepted: {drained}")
            await self._conclude(ex, "error", error)
            raise drained
        return ex

    async def _taken(
        self,
        record: ExecutionRecord,
        created: int | Stored | BaseException,
        held: tuple[Event, str] | None,
    ) -> LaunchReply:
        """The id is claimed already: this execution again, or somebody else's id (refused)."""
        assert self._kv is not None
        stored = None if held is None else held[0]
        if stored is None or stored.launcher != record.launcher:
            if isinstance(created, int):  # a record of ours for an id that is not ours
                with contextlib.suppress(nats.js.errors.Error):
                    await self._kv.delete(record_key(record))
            raise RemoteError("invalid_request", f"execution id {record.execution!r} is taken")
        if stored.flow != record.flow:
            raise RemoteError(
                "invalid_request",
                f"execution id {record.execution!r} is taken by a launch of {stored.flow!r}",
            )
        return _reply(stored, existing=True)

    async def _create(self, kv: KeyValue, record: ExecutionRecord) -> int | Stored:
        """Create the record (retried briefly while a cluster elects a stream leader, within the
        launcher's request timeout); its revision, or the record that holds the key already."""
        key = record_key(record)
        try:
            return await js_retry(
                lambda: create_record(kv, record), "create a record", ACCEPT_RETRY
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        stored = await read_record(kv, key)
        if stored is None:  # `files.forget` holds a deleted id (or the record is unreadable)
            raise RemoteError(
                "invalid_request",
                f"execution id {record.execution!r} is taken (deleted less than "
                f"{DUPLICATE_WINDOW:.0f} s ago, or its record cannot be read): launch with a "
                f"new id",
            )
        if stored[0] == record:  # our own create, whose first reply was lost: it is ours
            return stored[1]
        return stored

    def _publish(self, ex: _Execution, kind: str, data: Any) -> None:
        """Queue an event from the node (`self._pub.drain()` waits until it is stored)."""
        ex.emitter.emit(kind, data)

    # -- running -----------------------------------------------------------------------------
    def _pump(self) -> None:
        """Start queued executions while there is room, oldest first."""
        while (
            self._queue and self._running + self._reserved < self._capacity and not self._stopping
        ):
            self._start(self._queue.popleft())

    def _start(self, ex: _Execution) -> None:
        self._running += 1
        ex.state = "starting"
        self._spawn(self._run(ex), f"run-{ex.record.execution}")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)

    async def _run(self, ex: _Execution) -> None:
        from .executor import Job
        from .pool import ActorPool, JobTooLarge, WorkerDied

        try:
            if self._pool is None:
                self._pool = ActorPool(
                    self._nc,
                    self._settings.id,
                    self._settings.connect_settings(),
                    self._settings.ray_address,
                    self._settings.actors,
                    on_death=self._repair_endings,
                )
            try:
                capacity = await self._pool.start(self._settings.max_running)
            except Exception as exc:  # Ray did not start (or its actors did not): retry later
                log.exception("cannot start the Ray actors")
                self._pool = None
                message = f"the node could not start Ray: {exc}"
                await self._end_outside(ex, "error", "RayUnavailable", message)
                return
            if capacity != self._capacity:
                self._capacity = capacity
                self._pump()
            if ex.cancel_requested:
                await self._end_pending(ex, "cancelled before it started")
                return
            r = ex.record
            job = Job(
                record=r,
                revision=ex.revision,
                entry=ex.spec.entry,
                inputs=ex.inputs,
                seq=ex.seq,
                timeout=ex.timeout,
                max_depth=self._settings.max_depth,
                node_flows=sorted(self._flows),
            )
            ex.state = "running"
            try:
                outcome = await self._pool.run(job, cancel=ex.cancel_requested)
            except WorkerDied as exc:
                await self._end_outside(ex, "error", "WorkerDied", f"the Ray worker died: {exc}")
            except JobTooLarge as exc:
                await self._end_outside(ex, "error", "JobTooLarge", str(exc))
            else:
                if not outcome.ended:  # a claim, not an ending: the worker could not end it
                    reason = outcome.error or "the worker did not end the execution"
                    await self._end_outside(ex, "error", "WorkerFailure", reason)
        finally:
            ex.state = "done"
            ex.ended.set()
            self._running -= 1
            self._pump()
            self._forget(ex)

    def _repair_endings(self, records: list[ExecutionRecord]) -> None:
        """An actor died soon after reporting these ended: store the terminal status of each
        whose status died with it (`pool.ENDED_WITHIN`)."""
        self._spawn(self._repair_all(records), "repair-endings")

    async def _repair_all(self, records: list[ExecutionRecord]) -> None:
        assert self._js is not None and self._kv is not None
        for record in records:
            current = await read_record(self._kv, record_key(record))
            if current is not None and current[0].status in TERMINAL_STATUSES:
                await repair(self._js, self._kv, current[0])

    async def _end_outside(self, ex: _Execution, status: str, type_name: str, message: str) -> None:
        """End an execution its worker cannot end (it died, or never got it)."""
        assert self._js is not None and self._kv is not None and self._pub is not None
        with contextlib.suppress(EventsNotStored):  # the ending numbers after what is stored
            await self._pub.drain(ex.record.execution)
        await end_from_outside(self._js, self._kv, ex.record, status, error_of(type_name, message))

    async def _end_pending(self, ex: _Execution, message: str) -> None:
        """End an execution that never reached a worker as `cancelled`."""
        await self._conclude(ex, "cancelled", error_of("Cancelled", message))
        ex.state = "done"
        ex.ended.set()
        self._forget(ex)

    async def _conclude(self, ex: _Execution, status: str, error: dict[str, str]) -> None:
        """End, as its owner, an execution the runner still numbers (before the hand-over)."""
        assert self._js is not None and self._kv is not None and self._pub is not None
        await conclude(
            self._js,
            self._kv,
            ex.record,
            ex.emitter.close(),
            status,
            error=error,
            known=(ex.record, ex.revision),
            store=functools.partial(self._pub.store, execution=ex.record.execution),
            send=self._pub.send,
            written=self._pub.written,
        )

    def _forget(self, ex: _Execution) -> None:
        self._live.pop(ex.record.execution, None)

    # -- control -----------------------------------------------------------------------------
    # Every cancel and answer gets exactly one reply, from one process: each request reaches one
    # process through a queue group — on the public subjects (`EXEC_CONTROL_ALL`) one node of
    # all, on the subjects addressed to a node (`EXEC_CONTROL_AT_NODE`, the SDK's way) one
    # process of that node id, so no other node hears it. That process answers from memory if
    # it holds the execution; else from the record — `not_found` when there is none,
    # `not_found` (cancel) or `closed` (answer) when it ended — or, when the record says it is
    # live, hands the request to its holder: the node the record names (its addressed subject)
    # or the replica of this id it names (`WORK_CONTROL`), and passes the reply back. A holder
    # that is gone leaves the request unanswered, until a registry ends its executions `lost`.
    #
    # One subscription per request, never a plain one beside a queue one on the same subject:
    # on the secure profile a request from another account delivered to two subscriptions of
    # one connection has its reply refused (seen with nats-server 2.15.1).
    def _held(self, subject: str) -> _Execution | None:
        """The execution this process holds for a control subject, if any."""
        parts = subject.split(".")
        if len(parts) not in (5, 6):
            return None
        ex = self._live.get(parts[3])
        # The user in the subject is what NATS permissions checked: it must be the launcher's.
        if ex is None or ex.state == "done" or ex.record.launcher != parts[2]:
            return None
        return ex

    async def _on_control(self, msg: Msg) -> None:
        """A cancel, answer or delete this process got, of all nodes' or of this node id's."""
        await self._control(msg, msg.subject, forward=True)

    async def _on_forwarded(self, msg: Msg) -> None:
        """A cancel or answer another process of this id got for an execution held here."""
        await self._control(msg, (msg.headers or {}).get(FORWARDED, ""), forward=False)

    async def _control(self, msg: Msg, subject: str, *, forward: bool) -> None:
        parts = subject.split(".")
        if len(parts) not in (5, 6) or parts[4] not in ("cancel", "answer", "delete"):
            return  # not a documented subject
        if parts[4] == "delete":
            # Only as a client sent it: no form addressed to a node (`subjects.EXEC_DELETE`),
            # none passed on by another node.
            if len(parts) == 5 and forward:
                await self._on_delete(msg, parts[2], parts[3])
            return
        ex = self._held(subject)
        if ex is None:
            await self._from_record(msg, subject, forward=forward)
        elif parts[4] == "cancel":
            await self._on_cancel(msg, ex)
        else:
            await self._on_answer(msg, ex)

    async def _on_cancel(self, msg: Msg, ex: _Execution) -> None:
        try:
            decode_msg(msg, Empty)
        except WireError as exc:
            await respond_error(msg, exc.kind, str(exc))
            return
        if ex.state == "pending":
            with contextlib.suppress(ValueError):
                self._queue.remove(ex)
            await self._end_pending(ex, "cancelled while pending")
        elif (status := await self._ended(ex)) is not None:
            # Its worker ended it and its outcome is on the way: a client that saw the
            # terminal status is told so, as by the nodes that read the record.
            execution = ex.record.execution
            await respond_error(msg, "not_found", f"execution {execution} already ended ({status})")
            return
        else:
            await self._cancel_running(ex)
        await respond(msg, Ack(message="cancel requested"))

    async def _ended(self, ex: _Execution) -> str | None:
        """The terminal status the record of a held execution already says, if any."""
        if self._kv is None:
            return None
        try:
            stored = await read_record(self._kv, record_key(ex.record))
        except Exception as exc:  # cancelled anyway: a cancel of an ended execution is a no-op
            log.debug("cancel of %s: cannot read its record: %r", ex.record.execution, exc)
            return None
        if stored is not None and stored[0].status in TERMINAL_STATUSES:
            return stored[0].status
        return None

    async def _on_answer(self, msg: Msg, ex: _Execution) -> None:
        """Relay an answer to the held execution's open question (the worker validates and
        replies); its no responders is the answer `closed`. Relayed in tasks: a stuck actor
        must not hold up the answers to the node's other executions."""
        await self._relay_slots.acquire()
        task = asyncio.create_task(self._relay(msg, ex), name=f"answer-{ex.record.execution}")
        self._tasks.add(task)
        task.add_done_callback(self._relayed)

    def _relayed(self, task: asyncio.Task[Any]) -> None:
        self._relay_slots.release()
        self._done(task)

    async def _relay(self, msg: Msg, ex: _Execution) -> None:
        execution = ex.record.execution
        try:
            decode_msg(msg, AnswerRequest)
        except WireError as exc:
            await respond_error(msg, exc.kind, str(exc))
            return
        try:
            reply = await self._nc.request(
                subjects.work_ask(self._settings.id, execution),
                msg.data,
                timeout=ANSWER_RELAY,
                headers=msg.headers,
            )
        except nats.errors.NoRespondersError:
            await respond_error(msg, "closed", f"execution {execution} has no open question")
            return
        except (TimeoutError, nats.errors.TimeoutError):
            message = f"the worker of {execution} did not take the answer in {ANSWER_RELAY:g} s"
            await respond_error(msg, "internal", message)
            return
        if msg.reply:
            await self._nc.publish(msg.reply, reply.data, headers=reply.headers)

    async def _from_record(self, msg: Msg, subject: str, *, forward: bool) -> None:
        """Answer, from its record, for an execution this process does not hold; with
        `forward`, hand a live one to its holder."""
        parts = subject.split(".")
        user, execution, action = parts[2], parts[3], parts[4]
        try:
            key = subjects.record_key(
                subjects.check_token(user, "user"), subjects.check_token(execution, "execution")
            )
        except ConfigError:
            key = None
        stored = None
        if key is not None and self._kv is not None:
            try:
                stored = await read_record(self._kv, key)
            except Exception as exc:  # the request times out: better than a wrong answer
                log.warning("%s of %s: cannot read its record: %r", action, execution, exc)
                return
        if stored is not None and stored[0].status not in TERMINAL_STATUSES:
            if forward:  # live: its holder answers (a dead one's is ended `lost` by a registry)
                await self._hand_over(msg, subject, stored[0])
            return
        try:
            decode_msg(msg, Empty if action == "cancel" else AnswerRequest)
        except WireError as exc:
            await respond_error(msg, exc.kind, str(exc))
            return
        if stored is None:
            await respond_error(msg, "not_found", f"no execution {execution} of {user}")
        elif action == "cancel":
            status = stored[0].status
            await respond_error(msg, "not_found", f"execution {execution} already ended ({status})")
        else:
            status = stored[0].status
            await respond_error(msg, "closed", f"execution {execution} already ended ({status})")

    async def _hand_over(self, msg: Msg, subject: str, record: ExecutionRecord) -> None:
        """Hand a request for a live execution to the process that holds it, in a task (a
        holder slow to reply must not hold up this node's other requests)."""
        user, execution, action = subject.split(".")[2:5]
        headers = dict(msg.headers or {})
        if record.node != self._settings.id:
            at = subjects.exec_cancel_at if action == "cancel" else subjects.exec_answer_at
            target = at(user, execution, record.node)
        elif record.instance != self._instance:
            target = subjects.work_control(record.node, record.instance or "-")
            headers[FORWARDED] = subject
        else:
            return  # this process's, not held (yet, or any more): nothing to hand on
        await self._hand_slots.acquire()  # apart from the relays: two nodes handing requests
        # to each other must not wait for each other's slots
        task = asyncio.create_task(self._forward(msg, target, headers), name=f"hand-{execution}")
        self._tasks.add(task)
        task.add_done_callback(self._handed)

    def _handed(self, task: asyncio.Task[Any]) -> None:
        self._hand_slots.release()
        self._done(task)

    async def _forward(self, msg: Msg, target: str, headers: dict[str, str]) -> None:
        try:
            reply = await self._nc.request(
                target, msg.data, timeout=FORWARD_WITHIN, headers=headers
            )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
            return  # its holder is gone: unanswered, as if it had been asked itself
        if msg.reply:
            await self._nc.publish(msg.reply, reply.data, headers=reply.headers)

    # A delete is answered from the record by whichever node gets it, never by the holder: only
    # an ended execution is deleted, and a live one's holder would only say "cancel it first".
    # The user is the subject's (what NATS permissions checked), never the body's.
    async def _on_delete(self, msg: Msg, user: str, execution: str) -> None:
        try:
            decode_msg(msg, Empty)
        except WireError as exc:
            await respond_error(msg, exc.kind, str(exc))
            return
        # Never wait here: this callback also takes every public cancel and answer.
        key = (user, execution)
        if len(self._deleting) >= DELETES_AT_ONCE or key in self._deleting:
            message = f"this node is deleting other executions (or {execution}): retry shortly"
            await respond_error(msg, "busy", message)
            return
        self._deleting.add(key)
        task = asyncio.create_task(self._delete(msg, user, execution), name=f"delete-{execution}")
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._deleted(done, key))

    def _deleted(self, task: asyncio.Task[Any], key: tuple[str, str]) -> None:
        self._deleting.discard(key)
        self._done(task)

    async def _delete(self, msg: Msg, user: str, execution: str) -> None:
        """Delete an ended execution for good (`files.forget`): its files, events and record."""
        if not (subjects.is_token(user) and subjects.is_token(execution)):
            await respond_error(msg, "not_found", f"no execution {execution} of {user}")
            return
        assert self._js is not None and self._kv is not None
        try:
            stored = await read_record(self._kv, subjects.record_key(user, execution))
        except JETSTREAM_TRANSIENT as exc:  # the store did not answer within js_retry's time
            log.warning("delete of %s: cannot read its record: %r", execution, exc)
            message = f"the store did not answer for execution {execution}: retry shortly"
            await respond_error(msg, "busy", message)
            return
        except Exception as exc:  # nats-py's text is for the node's log, not for the client
            log.warning("delete of %s: cannot read its record: %r", execution, exc)
            message = f"the node cannot read the record of {execution} (see the node's log)"
            await respond_error(msg, "internal", message)
            return
        if stored is None:
            await respond_error(msg, "not_found", f"no execution {execution} of {user}")
            return
        record = stored[0]
        if record.status not in TERMINAL_STATUSES:
            message = f"execution {execution} is {record.status}: cancel it first"
            await respond_error(msg, "invalid_request", message)
            return
        if (
            time.time() - record.updated < DUPLICATE_WINDOW
            and await stored_ending(self._js, record) is None
        ):
            # Its ender claimed the record and may still be storing the terminal status (its
            # publisher re-sends for up to a minute): purged now, that status would be stored
            # after the purge, events of no record.
            message = f"execution {execution} is still storing its ending: retry shortly"
            await respond_error(msg, "busy", message)
            return
        try:
            count = await files.forget(self._js, user, execution, node=record.node)
        except Exception as exc:  # a purge failed: what is left is found by a second delete
            log.warning("delete of %s: %r", execution, exc)
            await respond_error(msg, "internal", f"execution {execution} is not wholly deleted")
            return
        await respond(msg, Ack(message=f"deleted execution {execution} ({count} files)"))

    async def _cancel_running(self, ex: _Execution) -> None:
        ex.cancel_requested = True
        if ex.state == "running" and self._pool is not None:
            self._pool.cancel(ex.record.execution)


def _reply(launched: ExecutionRecord | Event, existing: bool = False) -> LaunchReply:
    """The reply to a launch of the execution a record (or its stored `meta`) describes."""
    return LaunchReply(
        execution=launched.execution,
        node=launched.node,
        flow=launched.flow,
        launcher=launched.launcher,
        subject=subjects.events(launched.launcher, launched.execution, "*"),
        existing=existing,
    )
