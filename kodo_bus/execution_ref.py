"""`Execution`: a handle on one execution, from any process that knows its id.

Everything an execution says travels as events on `kodo.events.<user>.<id>.<kind>`, captured by
the `KODO_EVENTS` stream. Reading them through an ordered JetStream consumer gives history then
live events in one sequence, so `events()` needs no separate "catch up" phase and `result()` is
just the last event of that sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from . import subjects
from .bus import JETSTREAM_TRANSIENT, consumer_config, js_retry
from .codec import decode, decode_many
from .errors import (
    ExecutionCancelled,
    ExecutionError,
    ExecutionFailed,
    ExecutionLost,
    ExecutionNotFound,
    ExecutionTimeout,
    KodoTimeout,
    WireError,
)
from .models import TERMINAL_STATUSES, Ack, AnswerRequest, Empty, Event, ExecutionRecord

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("kodo_bus.client")


def status_of(event: Event) -> str | None:
    """The status a `status` event announces (None for other kinds)."""
    if event.kind != "status":
        return None
    data = event.data
    return str(data.get("status")) if isinstance(data, dict) else str(data)


@dataclass
class WorkflowNode:
    """One execution of a workflow tree, with its ending and its children."""

    execution: str
    flow: str
    node: str
    status: str
    result: Any = None
    error: str | None = None
    children: list[WorkflowNode] = field(default_factory=list)


class Execution:
    """One execution: follow its events, await its result, cancel it or answer its questions."""

    def __init__(
        self,
        client: Client,
        execution: str,
        launcher: str | None = None,
        node: str = "",
        flow: str = "",
    ) -> None:
        self._client = client
        self.id = execution
        self.launcher = launcher
        self.node = node
        self.flow = flow

    def __repr__(self) -> str:
        return f"Execution({self.id!r}, flow={self.flow!r}, node={self.node!r})"

    # -- state ---------------------------------------------------------------------------------
    async def record(self) -> ExecutionRecord:
        """The current record, its status brought up to the last `status` event.

        The node writes the record just after the events it stands for (so a crash in between
        is repaired from the stream), which means a reader may see the events first. The last
        message on the execution's status subject is therefore the truth for `status`.
        """
        record = await self._client._record(self.id, self.launcher)
        if record is None:
            raise ExecutionNotFound(f"no execution {self.id!r} is known to the bus")
        self.launcher, self.node, self.flow = record.launcher, record.node, record.flow
        if record.status in TERMINAL_STATUSES:
            return record
        subject = subjects.events(record.launcher, self.id, "status")
        try:
            msg = await self._client.js.get_last_msg(subjects.STREAM_EVENTS, subject, direct=True)
            event = decode(subject, msg.data or b"", msg.headers, Event)
        except (nats.js.errors.NotFoundError, WireError):
            return record
        status = status_of(event)
        if status is None or status == record.status:
            return record
        return record.model_copy(
            update={"status": status, "last_seq": max(record.last_seq, event.seq)}
        )

    async def status(self) -> str:
        """Current status: pending, starting, running, awaiting, or a terminal one."""
        return (await self.record()).status

    # -- events --------------------------------------------------------------------------------
    async def events(
        self, kinds: Iterable[str] | None = None, replay: bool = True
    ) -> AsyncIterator[Event]:
        """Events in order, without gaps or duplicates: history first (if `replay`), then live.

        Ends after the terminal status event.
        """
        wanted = set(kinds) if kinds else None
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            queue.put_nowait(msg)

        policy = api.DeliverPolicy.ALL if replay else api.DeliverPolicy.NEW
        # The launcher's token in the filter is what a client's permissions allow (its own).
        launcher = self.launcher or self._client.user
        sub = await self._subscribe(launcher, on_msg, policy, 0)
        stream_seq = 0
        order = _InOrder()
        try:
            while True:
                try:
                    if queue.empty():  # a wait_for per message cost more than the message
                        msg = await asyncio.wait_for(queue.get(), STALL_CHECK)
                    else:
                        msg = queue.get_nowait()
                except TimeoutError:
                    if await _stalled(sub):
                        # Its server died and nats-py could not re-create it (no stream leader
                        # yet): a new consumer goes on from the last message received.
                        log.info("events of %s: consumer lost, resubscribing", self.id)
                        with contextlib.suppress(nats.errors.Error):
                            await sub.unsubscribe()
                        sub = await self._subscribe(launcher, on_msg, policy, stream_seq)
                        continue
                    order.skip_gap(self.id)
                else:
                    stream_seq = max(stream_seq, _stream_seq(msg))
                    try:
                        order.add(decode_many(msg.subject, msg.data, msg.headers, Event))
                    except WireError as exc:
                        log.warning("skipping undecodable event: %s", exc)
                        continue
                for event in order.ready():
                    self.launcher, self.node, self.flow = event.launcher, event.node, event.flow
                    if wanted is None or event.kind in wanted:
                        yield event
                    if status_of(event) in TERMINAL_STATUSES:
                        return
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _subscribe(
        self,
        launcher: str,
        on_msg: Callable[[Msg], Awaitable[None]],
        policy: api.DeliverPolicy,
        after: int,
    ) -> JetStreamContext.PushSubscription:
        """A consumer of the execution's events from the start (`policy`), or from stream seq
        `after` + 1; retried while JetStream fails over."""
        js = self._client.js
        start: dict[str, Any] = {}
        if after:
            start = {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE}
            start["opt_start_seq"] = after + 1
        return await js_retry(
            lambda: js.subscribe(
                subjects.events(launcher, self.id, "*"),
                stream=subjects.STREAM_EVENTS,
                cb=on_msg,
                ordered_consumer=True,
                deliver_policy=None if after else policy,
                config=consumer_config(flow_control=True, idle_heartbeat=2.0, **start),
            ),
            f"read the events of {self.id}",
        )

    async def result(self, timeout: float | None = None) -> Any:
        """The final value, or the typed error of how the execution ended."""
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._ending()
        except TimeoutError:
            if not deadline.expired():
                raise  # ExecutionTimeout: the execution itself timed out
            raise KodoTimeout(
                f"execution {self.id} did not end within {timeout:g} s (it goes on running)"
            ) from None

    async def _ending(self) -> Any:
        return self._outcome(*await self._conclusion())

    async def _conclusion(self) -> tuple[str, Any, dict[str, Any]]:
        """Terminal status, final value and failure data, read from the events themselves.

        The events (not the record, which is written just after them) are the truth of how an
        execution ended.
        """
        final: Any = None
        failure: dict[str, Any] = {}
        async for event in self.events(kinds=("final", "error", "status")):
            if event.kind == "final":
                final = event.data
            elif event.kind == "error":
                failure = event.data if isinstance(event.data, dict) else {"message": event.data}
            elif (status := status_of(event)) in TERMINAL_STATUSES:
                return status or "", final, failure
        raise ExecutionLost(self.id, f"execution {self.id} ended without a terminal status")

    def _outcome(self, status: str, final: Any, failure: dict[str, Any]) -> Any:
        message = str(failure.get("message", ""))
        if status == "finished":
            return final
        if status == "cancelled":
            raise ExecutionCancelled(self.id, f"execution {self.id} was cancelled")
        if status == "timeout":
            raise ExecutionTimeout(self.id, f"execution {self.id} timed out: {message}")
        if status == "lost":
            raise ExecutionLost(
                self.id, f"execution {self.id} was lost: its node {self.node!r} went offline"
            )
        raise ExecutionFailed(
            self.id, str(failure.get("type", "Error")), message, str(failure.get("traceback", ""))
        )

    # -- control -------------------------------------------------------------------------------
    async def _launcher(self) -> str:
        if self.launcher is None:
            await self.record()
        assert self.launcher is not None
        return self.launcher

    async def cancel(self) -> None:
        """Ask the node to stop the execution; it ends `cancelled` within about 2 s."""
        subject = subjects.exec_cancel(await self._launcher(), self.id)
        await self._client._request(subject, Empty(), Ack)

    async def answer(self, data: Any) -> None:
        """Answer the question an `awaiting` execution asked (validated by the node)."""
        subject = subjects.exec_answer(await self._launcher(), self.id)
        await self._client._request(subject, AnswerRequest(data=data), Ack)

    # -- workflows -----------------------------------------------------------------------------
    async def children(self) -> list[Execution]:
        """Executions this one launched (its next flows)."""
        records = await self._client._records(lambda r: r.parent == self.id, self.launcher)
        return [Execution(self._client, r.execution, r.launcher, r.node, r.flow) for r in records]

    async def workflow(self, timeout: float | None = None) -> WorkflowNode:
        """The tree under this execution, once every execution in it has ended."""
        async with asyncio.timeout(timeout):
            return await self._tree()

    async def _tree(self) -> WorkflowNode:
        status, final, failure = await self._conclusion()
        error = None
        if status != "finished":
            try:
                self._outcome(status, final, failure)
            except ExecutionError as exc:
                error = str(exc)
        kids = await asyncio.gather(*(child._tree() for child in await self.children()))
        return WorkflowNode(
            execution=self.id,
            flow=self.flow,
            node=self.node,
            status=status,
            result=final if status == "finished" else None,
            error=error,
            children=list(kids),
        )


STALL_CHECK = 5.0
"""Seconds without an event after which `events()` checks that its consumer still exists."""


class _InOrder:
    """Puts events back in seq order, without duplicates (a re-sent event is stored after later
    ones, and JetStream's de-duplication window may miss a copy)."""

    def __init__(self) -> None:
        self.last = 0
        self.early: dict[int, Event] = {}

    def add(self, events: list[Event]) -> None:
        for event in events:
            if event.seq <= self.last or event.seq in self.early:
                continue
            if not self.last and not self.early:
                self.last = event.seq - 1  # the first one read (history may have expired)
            self.early[event.seq] = event

    def ready(self) -> Iterator[Event]:
        while self.last + 1 in self.early:
            event = self.early.pop(self.last + 1)
            self.last = event.seq
            yield event

    def skip_gap(self, execution: str) -> None:
        """The gap is not being filled: go on without it."""
        if self.early:
            first = min(self.early)
            log.warning("execution %s: events %d..%d missing", execution, self.last + 1, first - 1)
            self.last = first - 1


async def _stalled(sub: JetStreamContext.PushSubscription) -> bool:
    """Whether a quiet consumer is gone (or has messages it does not deliver)."""
    try:
        info = await sub.consumer_info()
    except nats.js.errors.NotFoundError:
        return True
    except JETSTREAM_TRANSIENT:
        return True
    return bool(info.num_pending)


def _stream_seq(msg: Msg) -> int:
    """The stream sequence of a JetStream message (0 when it carries none)."""
    try:
        return int(msg.metadata.sequence.stream)
    except (ValueError, AttributeError, nats.errors.Error):
        return 0
