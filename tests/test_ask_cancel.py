"""A question ends with its execution (issue 14, finding 11): `ask_sync` in a sync flow's thread
is not left waiting, its answer subscription open, after the flow was cancelled or ended.

The worker cancels a sync flow by raising `_Stop` in its thread (`PyThreadState_SetAsyncExc`),
which lands only when the thread runs Python code: a thread blocked in one `future.result()`
never sees it. Real NATS, no Ray: an `Emitter` with a list sink and a `Tracer` on a real
connection, the flow in a thread of its own as the worker runs it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from pydantic import BaseModel

from kodo_bus import subjects
from kodo_bus.bus import connect, request
from kodo_bus.config import ConnectSettings
from kodo_bus.models import Ack, AnswerRequest
from kodo_bus.server import NatsServer
from kodo_bus.tracer import Emitter, Message, Tracer

from .test_execution_support import eventually
from .test_reliability_support import eventually as poll


class Name(BaseModel):
    name: str


class _Stop(BaseException):
    """What the worker raises in a cancelled sync flow's thread."""


@dataclass
class Asking:
    """A sync flow waiting in `ask_sync`, in its own thread."""

    nc: NATS
    emitter: Emitter
    subject: str
    flow: concurrent.futures.Future[Name]
    thread: list[int]
    statuses: list[str] = field(default_factory=list)

    async def open(self) -> bool:
        """Whether someone listens on the answer subject (an empty answer gets an error)."""
        try:
            await self.nc.request(self.subject, b"{}", timeout=2)
        except nats.errors.NoRespondersError:
            return False
        return True

    async def answer(self, name: str) -> None:
        await request(self.nc, self.subject, AnswerRequest(data={"name": name}), Ack)


@pytest.fixture
async def asking(nats_server: NatsServer) -> AsyncIterator[Asking]:
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    loop = asyncio.get_running_loop()
    execution = os.urandom(16).hex()
    base = {
        "execution": execution,
        "node": "n",
        "flow": "f",
        "launcher": "local",
        "parent": None,
        "root": execution,
    }
    sent: list[Message] = []
    emitter = Emitter(base, 0, lambda *message: sent.append(message))
    statuses: list[str] = []

    async def on_status(status: str) -> None:
        statuses.append(status)

    tracer = Tracer(emitter, nc, loop, on_status)
    ident: list[int] = []

    def flow() -> Name:
        ident.append(threading.get_ident())
        return tracer.ask_sync(Name, "who?", timeout=120)

    threads = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ask-flow")
    answers = subjects.work_ask("n", execution)
    state = Asking(nc, emitter, answers, threads.submit(flow), ident)
    state.statuses = statuses
    try:
        await eventually(lambda: "awaiting" in statuses, timeout=10)
        yield state
    finally:
        # Before the fix the thread would wait for the question's timeout: answer it, so the
        # test ends either way (the `_Stop` still pending in it then lands).
        if not state.flow.done():
            with contextlib.suppress(Exception):
                await state.answer("late")
        await eventually(state.flow.done, timeout=10)
        threads.shutdown(wait=True)
        await nc.close()


def _raise_in(thread: int, exc: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(exc))


async def _closed(asking: Asking) -> None:
    """The answer subscription goes (it is dropped asynchronously, so polled)."""
    await poll(asking.open, lambda open_: not open_, timeout=5)


async def test_a_cancelled_sync_flow_ends_its_question(asking: Asking) -> None:
    """The worker's `_Stop` lands in a thread waiting in `ask_sync`: the flow ends at once and
    its answer subscription is gone (before: both waited for the question's timeout)."""
    assert await asking.open()
    _raise_in(asking.thread[0], _Stop)
    await eventually(asking.flow.done, timeout=5)
    assert isinstance(asking.flow.exception(), _Stop)
    await _closed(asking)


async def test_the_end_of_its_execution_ends_the_question(asking: Asking) -> None:
    """The execution ends (the worker closes its emitter) while the thread still waits: the
    question is cancelled, its subscription goes, and `ask_sync` returns (cancelled)."""
    asking.emitter.close()
    await eventually(asking.flow.done, timeout=5)
    assert isinstance(asking.flow.exception(), concurrent.futures.CancelledError)
    await _closed(asking)


async def test_an_answer_still_reaches_ask_sync(asking: Asking) -> None:
    await asking.answer("ada")
    await eventually(asking.flow.done, timeout=5)
    assert asking.flow.result() == Name(name="ada")
    assert asking.statuses == ["awaiting", "running"]
