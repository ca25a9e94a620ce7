"""Events from inside a flow: the `Tracer` a flow receives, and the per-execution `Emitter`.

The emitter numbers events 1, 2, 3... without gaps and hands them, encoded, to a sink (the Ray
actor's publisher) in that order. It is thread-safe, because sync flows run in threads and their
`print` calls land here too. Once the execution has ended the emitter is closed and drops
anything a straggling thread still writes, so an execution never gets events after its end.

Every tracer method exists as a coroutine (for async flows) and as a `*_sync` twin (for sync
flows); both only enqueue, so neither ever waits on the network.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from . import subjects
from .bus import respond, respond_error
from .codec import CONTENT_TYPE, JSON, MSG_ID, decode_msg
from .errors import KodoTimeout, WireError, problems_from
from .executions import error_data
from .models import EVENT_KINDS, SCHEMA_VERSION, Ack, AnswerRequest

log = logging.getLogger("kodo_bus.tracer")

M = TypeVar("M", bound=BaseModel)
Sink = Callable[[str, bytes, dict[str, str]], None]
Message = tuple[str, bytes, dict[str, str]]
"""Subject, body and headers of one event."""

current: contextvars.ContextVar[Emitter | None] = contextvars.ContextVar(
    "kodo_execution", default=None
)
"""The emitter of the execution the running code belongs to (routes stdout/stderr)."""


class AskTimeout(KodoTimeout):
    """Nobody answered `tracer.ask` in time; uncaught, it ends the execution `timeout`."""


class Emitter:
    """Numbers and encodes the events of one execution; safe to call from any thread.

    Why not an `Event` model per event: building, validating and dumping one cost more than
    publishing it. The fields that never change are serialised once (`_head`), and each event
    appends seq, ts, kind and data — the same JSON `Event.model_dump_json` writes (a test holds
    the two equal).
    """

    def __init__(self, base: dict[str, Any], seq: int, sink: Sink) -> None:
        self.base = base
        """execution, node, flow, launcher, parent, root: the same on every event."""
        self.seq = seq
        self._sink = sink
        self._lock = threading.Lock()
        self._closed = False
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
        """Send one event; its seq (0 when the execution already ended)."""
        subject, tail = self._parts(kind, data)
        with self._lock:  # numbered and queued together: the sink sees seq order
            if self._closed:
                return 0
            self._sink(*self._numbered(subject, kind, tail))
            return self.seq

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
        with self._lock:
            rest, self._partial = self._partial, {}
        for kind, text in rest.items():
            if text:
                self.emit(kind, text)

    def close(self) -> int:
        """Take no more events (a straggling thread's are dropped); the last seq used."""
        with self._lock:
            self._closed = True
            return self.seq


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
        self._em.emit("markdown", str(body))

    async def text(self, body: str) -> None:
        """For output that must be shown exactly as written (command output, fixed-width tables)."""
        self._em.emit("text", str(body))

    async def html(self, body: str) -> None:
        """For output meant for an HTML front end; the CLI prints it as plain text."""
        self._em.emit("html", str(body))

    async def result(self, data: Any) -> None:
        """Structured data (a pydantic model, dict, list...) as an intermediate result."""
        self._em.emit("result", data)

    async def action(self, data: Any) -> None:
        """For structured data a front end acts on (a link, a button, a next step), not a result."""
        self._em.emit("action", data)

    async def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """For long steps: a bar in `kodo-bus launch` and the dashboard; `total` None if unknown."""
        self._em.emit("progress", {"done": done, "total": total, "message": message})

    async def log(
        self, level: str, message: str, *, exc_info: bool = False, **context: Any
    ) -> None:
        """When the level is only known at run time; otherwise use debug, info, warning or error."""
        self.log_sync(level, message, exc_info=exc_info, **context)

    async def debug(self, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """For details that help diagnose a run; read them with `kodo-bus logs --level debug`."""
        self.log_sync("debug", message, exc_info=exc_info, **context)

    async def info(self, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """For milestones whoever follows the execution or reads `kodo-bus logs` should see."""
        self.log_sync("info", message, exc_info=exc_info, **context)

    async def warning(self, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """For something odd that did not stop the flow; the dashboard lists it."""
        self.log_sync("warning", message, exc_info=exc_info, **context)

    async def error(self, message: str, *, exc_info: bool = False, **context: Any) -> None:
        """For a failure the flow recovered from (raise to fail the run); the dashboard lists it."""
        self.log_sync("error", message, exc_info=exc_info, **context)

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
        data: dict[str, Any] = {"level": level, "message": str(message), "context": context}
        if exc_info:
            import sys

            exc = sys.exc_info()[1]
            if exc is not None:
                data["exception"] = error_data(exc)
        self._em.emit("log", data)

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

        sub = await self._nc.subscribe(subject, cb=on_answer)
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
            await sub.unsubscribe()
        self._em.emit("answer", {"lock": lock, "data": value})
        self._em.emit("status", {"status": "running"})
        await self._on_status("running")
        return value

    def ask_sync(self, model: type[M], prompt: str = "", timeout: float = 300.0) -> M:
        """`ask` for sync flows (which run in a thread, never on the actor's loop)."""
        future = asyncio.run_coroutine_threadsafe(self.ask(model, prompt, timeout), self._loop)
        return future.result()
