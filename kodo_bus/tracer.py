"""Events from inside a flow: the `Tracer` a flow receives, and the per-execution `Emitter`.

The emitter numbers events 1, 2, 3... without gaps and hands them, encoded, to a sink (the Ray
actor's publisher) in that order. It is thread-safe, because sync flows run in threads and their
`print` calls land here too. Once the execution has ended the emitter is closed and drops
anything a straggling thread still writes, so an execution never gets events after its end.

Every tracer method exists as a coroutine (for async flows) and as a `*_sync` twin (for sync
flows); both only enqueue, and never wait on the network itself — but a flow that emits faster
than the publisher stores is slowed (see `publisher` for the bounds): a thread waits for room,
a coroutine awaits it, and the event loop's own thread (a `print` in an async flow) is refused
an output event past a hard cap, with `EventsNotStored` raised in the flow, so the execution
ends `error` rather than the actor's memory growing without end.

`ask` ends with its execution: the emitter's `close()` cancels every question still open (its
answer subscription goes with it), and `ask_sync` waits in slices, so the `_Stop` the worker
raises in a cancelled sync flow's thread lands within `ASK_SLICE`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from . import files, subjects
from .bus import jetstream, respond, respond_error
from .codec import CONTENT_TYPE, JSON, MSG_ID, decode_msg
from .errors import EventsNotStored, KodoTimeout, WireError, problems_from
from .executions import error_data
from .models import EVENT_KINDS, SCHEMA_VERSION, Ack, AnswerRequest, File
from .publisher import QUEUE_HARD, EventPublisher

log = logging.getLogger("kodo_bus.tracer")

M = TypeVar("M", bound=BaseModel)
Sink = Callable[[str, bytes, dict[str, str]], None]
Message = tuple[str, bytes, dict[str, str]]
"""Subject, body and headers of one event."""

current: contextvars.ContextVar[Emitter | None] = contextvars.ContextVar(
    "kodo_execution", default=None
)
"""The emitter of the execution the running code belongs to (routes stdout/stderr)."""

OUTPUT_KINDS = frozenset(
    {"markdown", "text", "html", "result", "action", "progress", "log", "stdout", "stderr"}
)
"""What a flow emits as often as it likes; the only kinds refused on the loop's thread past the
publisher's hard cap (statuses, `final`, `error`, questions and the node's events are a handful
per execution, and the ending must never be refused)."""
ASK_SLICE = 0.1
"""Seconds `ask_sync` waits at a time: how late a cancel raised in its thread lands."""


class AskTimeout(KodoTimeout):
    """Nobody answered `tracer.ask` in time; uncaught, it ends the execution `timeout`."""


class Emitter:
    """Numbers and encodes the events of one execution; safe to call from any thread.

    Why not an `Event` model per event: building, validating and dumping one cost more than
    publishing it. The fields that never change are serialised once (`_head`), and each event
    appends seq, ts, kind and data — the same JSON `Event.model_dump_json` writes (a test holds
    the two equal).
    """

    def __init__(self, base: dict[str, Any], seq: int, sink: Sink | EventPublisher) -> None:
        """`sink` is the publisher (or its bound `put`): then emitting is bounded and slowed as
        the `publisher` module says. Any other callable takes every event at once (tests)."""
        self.base = base
        """execution, node, flow, launcher, parent, root: the same on every event."""
        self.seq = seq
        owner = getattr(sink, "__self__", None)
        self._outlet: EventPublisher | None = None
        if isinstance(sink, EventPublisher):
            self._outlet, sink = sink, sink.put
        elif isinstance(owner, EventPublisher) and getattr(sink, "__func__", None) is (
            EventPublisher.put
        ):
            self._outlet = owner
        self._sink: Sink = sink
        self._lock = threading.Lock()
        self._closed = False
        self._on_close: set[Callable[[], None]] = set()
        self.refused = 0
        """Events refused to bound the actor's memory (each raised `EventsNotStored`)."""
        self._partial: dict[str, str] = {}
        # The envelope fields are plain strings (from a validated record), so no model is
        # built here: one per execution cost as much as a no-op flow's events.
        envelope = {"v": SCHEMA_VERSION, **{k: v for k, v in base.items() if v is not None}}
        self._head = to_json(envelope)[:-1]
        self._subjects: dict[str, str] = {}
        self._id = f"{base['execution']}:"

    @property
    def execution(self) -> str:
        return str(self.base["execution"])

    def emit(self, kind: str, data: Any = None) -> int:
        """Send one event; its seq (0 when the execution already ended).

        Waits while the publisher's queue is full when called from a thread; on the event
        loop's thread an output event past the hard cap raises `EventsNotStored`.
        """
        subject, tail = self._parts(kind, data)
        outlet = self._outlet
        if outlet is not None and outlet.full:  # waited for outside the lock: the loop's own
            self._make_room(outlet, kind)  # events of this execution must never wait on it
        return self._queue(subject, kind, tail)

    async def emit_async(self, kind: str, data: Any = None) -> int:
        """`emit` for coroutines on the loop: awaits room in a full queue instead of taking
        more."""
        outlet = self._outlet
        if outlet is not None and outlet.full and outlet.on_loop_thread():
            await outlet.wait_room()
        return self.emit(kind, data)

    def _queue(self, subject: str, kind: str, tail: bytes) -> int:
        with self._lock:  # numbered and queued together: the sink sees seq order
            if self._closed:
                return 0
            self._sink(*self._numbered(subject, kind, tail))
            return self.seq

    def _make_room(self, outlet: EventPublisher, kind: str) -> None:
        if not outlet.on_loop_thread():
            outlet.wait_room_sync(lambda: self._closed)
        elif kind in OUTPUT_KINDS and outlet.overflowing:
            reason = (
                f"a {kind} event of execution {self.execution} was refused: more than "
                f"{QUEUE_HARD // 2**20} MiB of events wait to be stored, and the event loop's "
                "thread cannot wait for them (a print or *_sync call in an async flow); "
                "await the tracer's coroutines, or await between prints, to be slowed instead"
            )
            self.refused += 1
            outlet.refused(self.execution, reason)
            raise EventsNotStored(reason, [self.execution])

    def message(self, kind: str, data: Any = None) -> Message | None:
        """Number and encode one event without sending it; None once the execution ended."""
        subject, tail = self._parts(kind, data)
        with self._lock:
            return None if self._closed else self._numbered(subject, kind, tail)

    def _parts(self, kind: str, data: Any) -> tuple[str, bytes]:
        subject = self._subjects.get(kind)
        if subject is None:
            if kind not in EVENT_KINDS:
                raise ValueError(f"not an event kind: {kind!r}")
            subject = self._subjects[kind] = subjects.events(
                self.base["launcher"], self.base["execution"], kind
            )
        tail = b"}" if data is None else b',"data":' + to_json(data, fallback=str) + b"}"
        return subject, tail

    def _numbered(self, subject: str, kind: str, tail: bytes) -> Message:
        """The next seq's message (called under the lock)."""
        self.seq += 1
        head = b'%s,"seq":%d,"ts":%r,"kind":"%s"' % (
            self._head,
            self.seq,
            time.time(),
            kind.encode(),
        )
        return subject, head + tail, {CONTENT_TYPE: JSON, MSG_ID: f"{self._id}{self.seq}"}

    def write(self, kind: str, text: str) -> None:
        """Captured stdout/stderr: one event per chunk of complete lines."""
        with self._lock:
            buffered = self._partial.get(kind, "") + text
            head, sep, tail = buffered.rpartition("\n")
            self._partial[kind] = tail
        if sep:
            self.emit(kind, head + sep)

    def flush_output(self) -> None:
        """Send what is left of partial lines; never refused (one chunk per kind, at the end)."""
        with self._lock:
            rest, self._partial = self._partial, {}
        for kind, text in rest.items():
            if text:
                subject, tail = self._parts(kind, text)
                self._queue(subject, kind, tail)

    def when_closed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when the emitter closes (at once if it has); returns its undo."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._on_close.add(callback)
        if closed:
            callback()
        return lambda: self._on_close.discard(callback)

    def close(self) -> int:
        """Take no more events (a straggling thread's are dropped), end the questions still
        open; the last seq used."""
        with self._lock:
            self._closed = True
            seq = self.seq
            callbacks, self._on_close = self._on_close, set()
        for callback in callbacks:
            callback()
        return seq


class Tracer:
    """What a flow uses to report: rich output, results, progress, logs, and questions."""

    def __init__(
        self,
        emitter: Emitter,
        nc: NATS,
        loop: asyncio.AbstractEventLoop,
        on_status: Callable[[str], Awaitable[None]],
    ) -> None:
        self._em = emitter
        self._nc = nc
        self._loop = loop
        self._on_status = on_status

    @property
    def execution(self) -> str:
        """This run's id: for your own logs and records, or `Client.execution(id)` elsewhere."""
        return self._em.execution

    # -- output ------------------------------------------------------------------------------
    async def markdown(self, body: str) -> None:
        """For output meant for people: `kodo-bus launch` renders it as markdown."""
        await self._em.emit_async("markdown", str(body))

    async def text(self, body: str) -> None:
        """For output that must be shown exactly as written (command output, fixed-width tables)."""
        await self._em.emit_async("text", str(body))

    async def html(self, body: str) -> None:
        """For output meant for an HTML front end; the CLI prints it as plain text."""
        await self._em.emit_async("html", str(body))

    async def result(self, data: Any) -> None:
        """Structured data (a pydantic model, dict, list...) as an intermediate result."""
        await self._em.emit_async("result", data)

    async def action(self, data: Any) -> None:
        """For structured data a front end acts on (a link, a button, a next step), not a result."""
        await self._em.emit_async("action", data)

    async def file(self, source: Path | str | bytes | BinaryIO, name: str | None = None) -> File:
        """Hand the launcher a file (a path, bytes or a binary stream): uploaded in chunks to
        their bucket, then a `file` event names it with its size and SHA-256, which
        `Execution.download` and `kodo-bus files` check. `name` defaults to the path's name."""
        if name is None:
            if not isinstance(source, (str, Path)):
                raise ValueError("tracer.file of bytes or a stream needs a name")
            name = Path(source).name
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"a file name is one path part, not {name!r}")
        base = self._em.base
        obj = subjects.file_name(self.execution, "out", name)
        ref = await files.upload(jetstream(self._nc), str(base["launcher"]), obj, source)
        await self._em.emit_async("file", ref.model_dump())
        return ref

    def file_sync(self, source: Path | str | bytes | BinaryIO, name: str | None = None) -> File:
        """`file` for sync flows (run in a thread): waits until the file is stored."""
        future = asyncio.run_coroutine_threadsafe(self.file(source, name), self._loop)
        try:
            return future.result()
        finally:
            future.cancel()

    async def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """For long steps: a bar in `kodo-bus launch` and the dashboard; `total` None if unknown."""
        await self._em.emit_async("progress", {"done": done, "total": total, "message": message})

    async def log(
        self, level: str, message: str, *, exc_info: bool = False, **context: Any
    ) -> None:
        """When the level is only known at run time; otherwise use debug, info, warning or error."""
        await self._log(level, message, exc_info=exc_info, **context)

    async def debug(self, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """For details that help diagnose a run; read them with `kodo-bus logs --level debug`."""
        await self._log("debug", message, exc_info=exc_info, **context)

    async def info(self, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """For milestones whoever follows the execution or reads `kodo-bus logs` should see."""
        await self._log("info", message, exc_info=exc_info, **context)

    async def warning(self, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """For something odd that did not stop the flow; the dashboard lists it."""
        await self._log("warning", message, exc_info=exc_info, **context)

    async def error(self, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """For a failure the flow recovered from (raise to fail the run); the dashboard lists it."""
        await self._log("error", message, exc_info=exc_info, **context)

    # -- sync twins --------------------------------------------------------------------------
    def markdown_sync(self, body: str) -> None:
        """`markdown` for sync flows (run in a thread); never waits on the network."""
        self._em.emit("markdown", str(body))

    def text_sync(self, body: str) -> None:
        """`text` for sync flows (run in a thread); never waits on the network."""
        self._em.emit("text", str(body))

    def html_sync(self, body: str) -> None:
        """`html` for sync flows (run in a thread); never waits on the network."""
        self._em.emit("html", str(body))

    def result_sync(self, data: Any) -> None:
        """`result` for sync flows (run in a thread); never waits on the network."""
        self._em.emit("result", data)

    def action_sync(self, data: Any) -> None:
        """`action` for sync flows (run in a thread); never waits on the network."""
        self._em.emit("action", data)

    def progress_sync(self, done: float, total: float | None = None, message: str = "") -> None:
        """`progress` for sync flows (run in a thread); never waits on the network."""
        self._em.emit("progress", {"done": done, "total": total, "message": message})

    def log_sync(self, level: str, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """`log` for sync flows (run in a thread); never waits on the network."""
        self._em.emit("log", _log_data(level, message, exc_info, context))

    async def _log(
        self, level: str, message: str, *, exc_info: bool = False, **context: Any
    ) -> None:
        await self._em.emit_async("log", _log_data(level, message, exc_info, context))

    def debug_sync(self, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """`debug` for sync flows (run in a thread); never waits on the network."""
        self.log_sync("debug", message, exc_info=exc_info, **context)

    def info_sync(self, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """`info` for sync flows (run in a thread); never waits on the network."""
        self.log_sync("info", message, exc_info=exc_info, **context)

    def warning_sync(self, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """`warning` for sync flows (run in a thread); never waits on the network."""
        self.log_sync("warning", message, exc_info=exc_info, **context)

    def error_sync(self, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """`error` for sync flows (run in a thread); never waits on the network."""
        self.log_sync("error", message, exc_info=exc_info, **context)

    # -- human in the loop -------------------------------------------------------------------
    async def ask(self, model: type[M], prompt: str = "", timeout: float = 300.0) -> M:
        """Wait (status `awaiting`) for an answer that validates against `model`.

        Answers arrive as requests on the execution's answer subject, relayed here by the node
        holding the execution (whose no responders on this subject means no open question); an
        invalid one is told field by field what is wrong and the question stays open.
        """
        subject = subjects.work_ask(str(self._em.base["node"]), self.execution)
        lock = secrets.token_hex(8)
        answered: asyncio.Future[M] = self._loop.create_future()

        async def on_answer(msg: Msg) -> None:
            try:
                request = decode_msg(msg, AnswerRequest)
                value = model.model_validate(request.data)
            except WireError as exc:
                await respond_error(msg, exc.kind, str(exc))
                return
            except ValidationError as exc:
                await respond_error(msg, "invalid_inputs", "invalid answer", problems_from(exc))
                return
            if answered.done():
                await respond_error(msg, "closed", "the question was already answered")
                return
            answered.set_result(value)
            await respond(msg, Ack(message="answer accepted"))

        asking = asyncio.current_task()
        assert asking is not None
        loop = self._loop

        def end_question() -> None:  # the execution ended: so does its question
            if not loop.is_closed():
                loop.call_soon_threadsafe(asking.cancel)

        forget = self._em.when_closed(end_question)
        try:
            sub = await self._nc.subscribe(subject, cb=on_answer)
        except BaseException:
            forget()
            raise
        try:
            await self._nc.flush()
            self._em.emit(
                "lock",
                {
                    "lock": lock,
                    "prompt": prompt,
                    "schema": model.model_json_schema(),
                    "timeout": timeout,
                },
            )
            self._em.emit("status", {"status": "awaiting"})
            await self._on_status("awaiting")
            try:
                async with asyncio.timeout(timeout):
                    value = await answered
            except TimeoutError:
                raise AskTimeout(f"no answer to {prompt!r} within {timeout:g} s") from None
        finally:
            forget()
            await sub.unsubscribe()
        self._em.emit("answer", {"lock": lock, "data": value})
        self._em.emit("status", {"status": "running"})
        await self._on_status("running")
        return value

    def ask_sync(self, model: type[M], prompt: str = "", timeout: float = 300.0) -> M:
        """`ask` for sync flows (which run in a thread, never on the actor's loop).

        Waits in slices, not in one `result()`: a cancel raised in this thread (the worker's
        `_Stop`) only lands between two bytecodes, and then ends the question with it.
        """
        future = asyncio.run_coroutine_threadsafe(self.ask(model, prompt, timeout), self._loop)
        try:
            while not future.done():
                concurrent.futures.wait((future,), timeout=ASK_SLICE)
            return future.result()
        finally:
            future.cancel()  # nothing once done; else the question ends with this thread


def _log_data(level: str, message: str, exc_info: bool, context: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"level": level, "message": str(message), "context": context}
    if exc_info:
        import sys

        exc = sys.exc_info()[1]
        if exc is not None:
            data["exception"] = error_data(exc)
    return data
