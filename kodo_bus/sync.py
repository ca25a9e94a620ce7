"""The blocking twin of the SDK, for scripts and notebooks: same names, no `await`.

Each `Client` runs the asyncio client on an event loop in a daemon thread of its own and hands
every call over with `run_coroutine_threadsafe`. That keeps one implementation of the protocol
and works inside a notebook whose own loop is already running.

    from kodo_bus.sync import Client
    with Client() as kb:
        print(kb.flow("hello").launch({"name": "Ada"}).result())
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import BaseModel

from . import client as _async
from .config import Credentials
from .execution_ref import Execution as AsyncExecution
from .execution_ref import WorkflowNode
from .flow_ref import Flow as AsyncFlow
from .models import Event, ExecutionRecord

T = TypeVar("T")

__all__ = ["Client", "Execution", "Flow"]


class _Loop:
    """An event loop running in a daemon thread; `run` blocks the caller until a coroutine ends."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="kodo-bus-sync", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self.run(agen.__anext__())  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            closer = getattr(agen, "aclose", None)
            if closer is not None:
                self.run(closer())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class Execution:
    """Blocking twin of `kodo_bus.Execution`."""

    def __init__(self, loop: _Loop, inner: AsyncExecution) -> None:
        self._loop = loop
        self._inner = inner

    def __repr__(self) -> str:
        return repr(self._inner)

    @property
    def id(self) -> str:
        """The execution id: enough to re-attach from any process (`client.execution(id)`)."""
        return self._inner.id

    def status(self) -> str:
        """Current status from the record (`pending` ... `finished`), without waiting."""
        return self._loop.run(self._inner.status())

    def record(self) -> ExecutionRecord:
        """The whole stored record: flow, node, launcher, times, status, error."""
        return self._loop.run(self._inner.record())

    def events(self, kinds: Iterable[str] | None = None, replay: bool = True) -> Iterator[Event]:
        """History then live events, in order; the iterator ends after the terminal status."""
        return self._loop.iterate(self._inner.events(kinds, replay))

    def result(self, timeout: float | None = None) -> Any:
        """Block until the end: the final value, or the error the execution ended with."""
        return self._loop.run(self._inner.result(timeout))

    def cancel(self) -> None:
        """Ask the node to stop it; it ends `cancelled` within about two seconds."""
        self._loop.run(self._inner.cancel())

    def answer(self, data: Any) -> None:
        """Answer the question the flow asked (`tracer.ask`); the node validates it."""
        self._loop.run(self._inner.answer(data))

    def children(self) -> list[Execution]:
        """Executions this one chained (`Next`), as handles of their own."""
        return [Execution(self._loop, c) for c in self._loop.run(self._inner.children())]

    def workflow(self, timeout: float | None = None) -> WorkflowNode:
        """Wait for the whole chain to end; the tree of executions with their results."""
        return self._loop.run(self._inner.workflow(timeout))


class Flow:
    """Blocking twin of `kodo_bus.Flow`."""

    def __init__(self, loop: _Loop, inner: AsyncFlow) -> None:
        self._loop = loop
        self._inner = inner

    def __repr__(self) -> str:
        return repr(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # name, node, schema, summary, tags, ...

    def validate(self, inputs: Mapping[str, Any] | BaseModel | None = None) -> dict[str, Any]:
        """Check inputs locally, with the node's messages, before a round trip."""
        return self._inner.validate(inputs)

    def launch(
        self,
        inputs: Mapping[str, Any] | BaseModel | None = None,
        timeout: float | None = None,
        *,
        parent: str | None = None,
        execution_id: str | None = None,
    ) -> Execution:
        """Start an execution and return its handle at once (the node validates again)."""
        launch = self._inner.launch(inputs, timeout, parent=parent, execution_id=execution_id)
        inner = self._loop.run(launch)
        return Execution(self._loop, inner)


class Client:
    """Blocking twin of `kodo_bus.Client`; use it as a context manager or call `close()`."""

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        user: str | None = None,
        credentials: Credentials | None = None,
        retry: int = 2,
        timeout: float = 5.0,
    ) -> None:
        self._loop = _Loop()
        self._inner = _async.Client(
            url, user=user, credentials=credentials, retry=retry, timeout=timeout
        )
        try:
            self._loop.run(self._inner.connect())
        except BaseException:
            self._loop.close()
            raise

    def close(self) -> None:
        """Drain the connections and stop the client's background event loop."""
        try:
            self._loop.run(self._inner.close())
        finally:
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def user(self) -> str:
        """Launcher identity placed in launch subjects (`KODO_USER` or `local` by default)."""
        return self._inner.user

    def flows(
        self,
        q: str | None = None,
        tags: Iterable[str] | None = None,
        via: str | None = None,
        **filters: Any,
    ) -> list[Flow]:
        """Flows from a registry's view (filters as in the async `Client.flows`)."""
        found = self._loop.run(self._inner.flows(q, tags, via, **filters))
        return [Flow(self._loop, f) for f in found]

    def flow(self, name: str, via: str | None = None) -> Flow:
        """One flow by `name` or `node/name`; errors list the candidates."""
        return Flow(self._loop, self._loop.run(self._inner.flow(name, via)))

    def execution(self, execution: str) -> Execution:
        """Re-attach to an execution by id, from any process."""
        return Execution(self._loop, self._inner.execution(execution))

    def executions(self, **filters: Any) -> list[ExecutionRecord]:
        """Execution records, newest first (filters as in the async `Client.executions`)."""
        return self._loop.run(self._inner.executions(**filters))

    def logs(self, **filters: Any) -> Iterator[Event]:
        """The central log: `log` events of every execution (filters as in `Client.logs`)."""
        return self._loop.iterate(self._inner.logs(**filters))
