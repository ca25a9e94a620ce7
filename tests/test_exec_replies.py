"""Every cancel and answer gets exactly one reply, whatever the state of the execution and the
number of nodes on the bus (issue 16, finding 7): never silence, never no responders.

Two in-process nodes on a real nats-server with the session's Ray: the holder of an execution
answers for it (an answer is relayed to its worker's open question, `closed` when none is
open); for an execution nobody holds one node of the `kodo-exec` queue group answers from the
record (`not_found` for an unknown one, `closed` / `not_found` for an ended one).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import msgpack
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from kodo_bus import subjects
from kodo_bus.codec import CONTENT_TYPE, ERROR_HEADER, JSON, MSGPACK

from . import test_execution_support as support
from .test_execution_support import NodeFactory, read_events, status_of

make_node = support.make_node
pytestmark = pytest.mark.ray

EXTRA_WAIT = 0.5
"""Seconds a second reply is waited for after the first (there must be none)."""


async def _replies(
    nc: NATS, subject: str, body: bytes, content_type: str | None = JSON
) -> list[tuple[str | None, Any]]:
    """Every reply one request gets: (error kind or None, parsed body)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        headers = {CONTENT_TYPE: content_type} if content_type else None
        await nc.publish(subject, body, reply=inbox, headers=headers)
        got = [await sub.next_msg(timeout=10)]  # silence fails here
        while True:
            try:
                got.append(await sub.next_msg(timeout=EXTRA_WAIT))
            except nats.errors.TimeoutError:
                break
    finally:
        await sub.unsubscribe()
    out: list[tuple[str | None, Any]] = []
    for msg in got:
        headers = msg.headers or {}
        assert headers.get(CONTENT_TYPE) == (content_type if content_type == MSGPACK else JSON)
        parsed = json.loads(msg.data) if headers.get(CONTENT_TYPE) == JSON else msg.data
        out.append((headers.get(ERROR_HEADER), parsed))
    return out


async def _one(nc: NATS, subject: str, body: bytes = b"{}") -> tuple[str | None, Any]:
    replies = await _replies(nc, subject, body)
    assert len(replies) == 1, replies
    return replies[0]


async def _wait_status(node: support.Node, execution: str, status: str) -> None:
    sub = await node.nc.subscribe(subjects.events("local", execution, "status"))
    try:
        while json.loads((await sub.next_msg(timeout=30)).data)["data"]["status"] != status:
            pass
    finally:
        await sub.unsubscribe()


ANSWER = json.dumps({"data": {"colour": "red", "count": 2}}).encode()


async def test_unknown_execution_gets_not_found_once(make_node: NodeFactory) -> None:
    """Before: a cancel of an unknown id got silence, an answer no responders."""
    a = await make_node(max_running=1)
    await make_node(max_running=1)
    unknown = secrets.token_hex(16)
    kind, body = await _one(a.nc, subjects.exec_cancel("local", unknown))
    assert kind == "not_found" and unknown in body["message"]
    kind, body = await _one(a.nc, subjects.exec_answer("local", unknown), ANSWER)
    assert kind == "not_found"
    # a bad body of an unknown execution: one error, the body's
    kind, body = await _one(a.nc, subjects.exec_answer("local", unknown), b'{"dta": 1}')
    assert kind == "invalid_request" and "dta" in body["message"]


async def test_answers_to_an_execution_without_open_question_are_closed(
    make_node: NodeFactory,
) -> None:
    """Running without a question, pending in the queue, and ended: `closed`, once, whichever
    node of two gets the request (before: no responders)."""
    a = await make_node(max_running=1)
    b = await make_node(max_running=1)
    running = await a.launch("sleeper", {"seconds": 30})
    await _wait_status(a, running.execution, "running")
    queued = await a.launch("sleeper", {"seconds": 0})
    for ex in (running, queued):
        kind, body = await _one(b.nc, subjects.exec_answer("local", ex.execution), ANSWER)
        assert kind == "closed", body
        assert body["error"] == "closed" and ex.execution in body["message"]
    kind, _ = await _one(b.nc, subjects.exec_cancel("local", running.execution))
    assert kind is None  # the holder's Ack
    events = await read_events(a.js, queued.execution)
    assert status_of(events)[-1] == "finished"
    kind, body = await _one(b.nc, subjects.exec_answer("local", queued.execution), ANSWER)
    assert kind == "closed" and "already ended (finished)" in body["message"]
    kind, body = await _one(b.nc, subjects.exec_cancel("local", running.execution))
    assert kind == "not_found" and "already ended" in body["message"]


async def test_a_question_takes_one_answer_then_is_closed(make_node: NodeFactory) -> None:
    """The real answer still reaches `tracer.ask` (relayed by the holder, in the requester's
    content type); a second answer, and one after the end, get `closed`."""
    a = await make_node(max_running=1)
    b = await make_node(max_running=1)
    reply = await a.launch("asker", {})
    await _wait_status(a, reply.execution, "awaiting")
    subject = subjects.exec_answer("local", reply.execution)
    kind, body = await _one(b.nc, subject, json.dumps({"data": {"colour": 1}}).encode())
    assert kind == "invalid_inputs" and {f["field"] for f in body["fields"]} >= {"colour"}
    packed = msgpack.packb({"data": {"colour": "red", "count": 1}})
    replies = await _replies(b.nc, subject, packed, MSGPACK)
    assert len(replies) == 1 and replies[0][0] is None  # msgpack in, msgpack Ack out
    events = await read_events(a.js, reply.execution)
    assert status_of(events) == ["starting", "running", "awaiting", "running", "finished"]
    assert events[-2].data == {"colour": "red", "count": 1}
    kind, body = await _one(b.nc, subject, ANSWER)
    assert kind == "closed"


async def test_a_cancel_after_the_terminal_status_is_not_found(make_node: NodeFactory) -> None:
    """A client that saw `cancelled` and cancels again is told the execution ended, even while
    the worker's outcome has not reached the holder yet (found by the Node.js client: the
    holder acknowledged a second cancel)."""
    a = await make_node(max_running=1)
    reply = await a.launch("asker", {})
    await _wait_status(a, reply.execution, "awaiting")
    cancel = subjects.exec_cancel("local", reply.execution)
    ended = await a.nc.subscribe(subjects.events("local", reply.execution, "status"))
    kind, _ = await _one(a.nc, cancel)
    assert kind is None
    while json.loads((await ended.next_msg(timeout=30)).data)["data"]["status"] != "cancelled":
        pass
    kind, body = await _one(a.nc, cancel)
    assert kind == "not_found" and "already ended (cancelled)" in body["message"]
    kind, body = await _one(a.nc, subjects.exec_answer("local", reply.execution), ANSWER)
    assert kind == "closed"
