"""Every execution ends exactly once (issue 14): the endings the worker, the runner and an
outside ender race for, client-chosen ids, and endings that garbage cannot disturb."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time

import pytest
from nats.aio.msg import Msg

from kodo_bus import subjects
from kodo_bus.bus import connect, ensure_execution_storage, request
from kodo_bus.client import Client
from kodo_bus.codec import CONTENT_TYPE, JSON, decode_reply
from kodo_bus.config import ConnectSettings
from kodo_bus.errors import (
    ExecutionLost,
    KodoError,
    LaunchUnanswered,
    NoResponders,
    RemoteError,
)
from kodo_bus.execution_ref import Execution
from kodo_bus.executions import event_message, read_record
from kodo_bus.flow_ref import Flow
from kodo_bus.lifecycle import mark_lost, stored_events
from kodo_bus.models import (
    TERMINAL_STATUSES,
    Ack,
    AnswerRequest,
    Empty,
    Event,
    FlowItem,
    LaunchReply,
    LaunchRequest,
)
from kodo_bus.server import NatsServer

from . import test_execution_support as support
from .invariants import Watch
from .test_execution_support import (
    FIRST_EVENTS,
    NodeFactory,
    check_well_formed,
    eventually,
    handmade,
    read_events,
    status_of,
)

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("invariants")]
make_node = support.make_node


def _terminals(events: list[Event]) -> list[str]:
    return [s for s in status_of(events) if s in TERMINAL_STATUSES]


async def test_a_chain_no_registry_can_start_ends_error(make_node: NodeFactory) -> None:
    """Finding 5: `NoResponders` from the chain's registry lookup used to escape the worker,
    whose outcome the runner dropped: the execution stayed `running` for ever."""
    node = await make_node()
    reply = await node.launch("chain-nowhere", {})
    events = await read_events(node.js, reply.execution, timeout=30)
    check_well_formed(events)
    assert status_of(events)[-1] == "error"
    assert "no-such-flow-anywhere" in events[-2].data["message"]
    stored = await read_record(
        await node.js.key_value(subjects.BUCKET_EXECUTIONS),
        subjects.record_key("local", reply.execution),
    )
    assert stored is not None and stored[0].status == "error"
    assert stored[0].last_seq == events[-1].seq


async def test_the_same_id_launched_twice_is_one_execution(make_node: NodeFactory) -> None:
    """Finding 7: a launch whose reply was lost can be sent again with its id: one execution."""
    node = await make_node()
    execution = os.urandom(16).hex()
    launch = LaunchRequest(inputs={"seconds": 0.5, "tag": "once"}, execution=execution)

    async def send() -> LaunchReply:
        return await request(
            node.nc, subjects.launch("local", node.id, "sleeper"), launch, LaunchReply, timeout=10
        )

    replies = await asyncio.gather(*(send() for _ in range(6)))
    assert {r.execution for r in replies} == {execution}
    assert sorted(r.existing for r in replies) == [False] + [True] * 5
    events = await read_events(node.js, execution, timeout=30)
    check_well_formed(events)
    assert [e.kind for e in events].count("meta") == 1
    again = await send()  # after its end too
    assert again.existing and again.execution == execution
    with pytest.raises(RemoteError, match="taken by a launch of 'sleeper'") as taken:
        await request(
            node.nc,
            subjects.launch("local", node.id, "add"),
            LaunchRequest(inputs={"a": 1}, execution=execution),
            LaunchReply,
        )
    assert taken.value.kind == "invalid_request"
    with pytest.raises(RemoteError, match="is taken") as elsewhere:  # another user's id
        await request(
            node.nc,
            subjects.launch("mallory", node.id, "sleeper"),
            LaunchRequest(inputs={"seconds": 0}, execution=execution),
            LaunchReply,
        )
    assert elsewhere.value.kind == "invalid_request"
    kv = await node.js.key_value(subjects.BUCKET_EXECUTIONS)
    assert await read_record(kv, subjects.record_key("mallory", execution)) is None
    assert await read_events(node.js, execution, timeout=5) == events  # nothing added
    for bad in ("short", "has.dot-in-it-0123456789", "x" * 65):
        body = json.dumps({"inputs": {"a": 1}, "execution": bad}).encode()
        msg = await node.nc.request(
            subjects.launch("local", node.id, "add"), body, headers={CONTENT_TYPE: JSON}
        )
        with pytest.raises(RemoteError) as refused:
            decode_reply(msg, LaunchReply)
        assert refused.value.kind == "invalid_request"


async def test_an_infinite_timeout_is_refused(make_node: NodeFactory) -> None:
    """Finding 11: `timeout=inf` was stored as `Infinity`, which strict JSON readers refuse."""
    node = await make_node()
    with pytest.raises(RemoteError) as refused:
        await request(
            node.nc,
            subjects.launch("local", node.id, "add"),
            LaunchRequest.model_construct(inputs={"a": 1}, timeout=math.inf),
            LaunchReply,
        )
    assert refused.value.kind == "invalid_request"


async def test_an_outside_end_racing_a_live_worker_ends_once(make_node: NodeFactory) -> None:
    """Finding 3: a registry that wrongly declares a live node lost, and the worker that ends
    the same execution later: one terminal status, the record equal to it, and the worker
    learns it lost (its runner holds nothing afterwards)."""
    node = await make_node()
    reply = await node.launch("sleeper", {"seconds": 2, "tag": "late"})
    sub = await node.nc.subscribe(subjects.events("local", reply.execution, "status"))
    while b'"running"' not in (await sub.next_msg(timeout=30)).data:
        pass
    assert await mark_lost(node.js, node.id) == 1
    events = await read_events(node.js, reply.execution, timeout=10)
    check_well_formed(events)
    assert status_of(events)[-1] == "lost"
    await eventually(lambda: not node.runner._live, timeout=20)  # the worker ended (and lost)
    kv = await node.js.key_value(subjects.BUCKET_EXECUTIONS)
    stored = await read_record(kv, subjects.record_key("local", reply.execution))
    assert stored is not None
    everything = await stored_events(node.js, stored[0])
    assert _terminals(everything) == ["lost"]
    assert stored[0].status == "lost" and stored[0].last_seq == events[-1].seq
    assert max(e.seq for e in everything) == events[-1].seq  # nothing stored after the end


async def test_garbage_on_an_execution_subject_does_not_disturb_its_end(
    nats_server: NatsServer, invariants: Watch
) -> None:
    """Finding 4: an undecodable last message (and one with another execution's envelope) made
    the outside ender number from 0, its ids collided with `meta`/`inputs` and were dropped:
    the record said `lost`, no terminal event was stored and `result()` hung."""
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    try:
        js = nc.jetstream()
        kv = await ensure_execution_storage(js, max_age=3600)
        node = f"gone-{time.monotonic_ns()}"
        record, _ = await handmade(js, kv, FIRST_EVENTS, node=node)
        execution, now = record.execution, record.created
        invariants.ignore(execution, "garbage published on its subjects on purpose")
        base = {"execution": execution, "node": node, "flow": "f", "launcher": "local"}
        stranger = Event(seq=9, ts=now, kind="log", data={}, **{**base, "execution": "x" * 32})
        subject = subjects.events("local", execution, "log")
        await js.publish(subject, event_message(stranger)[1])
        await js.publish(subject, b"\x00 not an event")
        assert await mark_lost(js, node) == 1
        valid = await stored_events(js, record)  # the garbage skipped
        check_well_formed(valid)
        assert [e.seq for e in valid][-2:] == [4, 5]
        assert status_of(valid)[-1] == "lost"
        async with Client(nats_server.url) as kb:
            t0 = time.monotonic()
            with pytest.raises(ExecutionLost):
                await kb.execution(execution).result(timeout=10)
            assert time.monotonic() - t0 < 5
    finally:
        await nc.close()


async def test_a_burst_of_launches_leaves_no_execution_its_launcher_does_not_know(
    make_node: NodeFactory, nats_server: NatsServer
) -> None:
    """Finding 7: thousands of launches at once, replies slower than the client waits: each
    unanswered launch is sent again with its id, so every execution that exists is one its
    launcher knows, once — none runs twice, none is orphaned."""
    node = await make_node(max_running=4, max_queue=10_000)
    item = FlowItem(name="sleeper", node=node.id)
    sent = 0

    async def count(msg: Msg) -> None:
        nonlocal sent
        sent += 1

    await node.nc.subscribe(subjects.launch("local", node.id, "sleeper"), cb=count)
    async with Client(nats_server.url, timeout=0.3) as kb:
        flow = Flow(kb, item)
        chosen = [os.urandom(16).hex() for _ in range(800)]
        outcomes = await asyncio.gather(
            *(flow.launch({"seconds": 0}, execution_id=x) for x in chosen),
            return_exceptions=True,
        )
    answered = [o for o in outcomes if isinstance(o, Execution)]
    unanswered = [o for o in outcomes if isinstance(o, LaunchUnanswered)]
    assert len(answered) + len(unanswered) == len(chosen), [
        o for o in outcomes if not isinstance(o, Execution | LaunchUnanswered)
    ][:3]
    assert [a.id for a in answered] == [
        x for x, o in zip(chosen, outcomes, strict=True) if isinstance(o, Execution)
    ]
    assert sent > len(chosen), "no launch was sent again: the test did not test re-sends"
    assert {u.execution for u in unanswered} <= set(chosen)
    kv = await node.js.key_value(subjects.BUCKET_EXECUTIONS)
    for execution in chosen:
        stored = await read_record(kv, subjects.record_key("local", execution))
        if stored is None:
            assert execution not in {a.id for a in answered}
            continue
        events = await read_events(node.js, execution, timeout=60)
        check_well_formed(events)
        assert [e.kind for e in events].count("meta") == 1


async def test_a_graceful_stop_ends_everything_it_accepted(make_node: NodeFactory) -> None:
    """Finding 11: launches accepted while the node stops must not stay `pending` for ever:
    every launch that got a reply ends (finished, or cancelled by the stop)."""
    node = await make_node(max_running=1, grace=0.5)

    async def launch(i: int) -> LaunchReply | KodoError:
        try:
            reply: LaunchReply = await node.launch("sleeper", {"seconds": 3, "tag": str(i)})
        except (RemoteError, NoResponders) as exc:  # "busy: stopping", or it stopped listening
            return exc
        return reply

    first = [await launch(i) for i in range(3)]
    racing = [asyncio.create_task(launch(i)) for i in range(3, 23)]
    await asyncio.sleep(0)  # the racing launches are on their way as the stop begins
    await asyncio.wait_for(node.runner.stop(), 30)
    replies = [r for r in [*first, *await asyncio.gather(*racing)] if isinstance(r, LaunchReply)]
    assert len(replies) >= 3
    for reply in replies:
        events = await read_events(node.js, reply.execution, timeout=10)
        check_well_formed(events)
        assert status_of(events)[-1] in {"finished", "cancelled"}


async def test_cancel_and_answer_reach_the_replica_that_holds_the_execution(
    make_node: NodeFactory,
) -> None:
    """Two processes serving one node id share its launches (a queue group); a cancel or an
    answer must reach the one that holds the execution, whichever it is."""
    first = await make_node(id=f"rep-{os.urandom(3).hex()}", max_running=16)
    second = await make_node(id=first.id, max_running=16)

    def on_both(replies: list[LaunchReply]) -> bool:
        ids = {r.execution for r in replies}
        return bool(ids & set(first.runner._live)) and bool(ids & set(second.runner._live))

    held: list[LaunchReply] = []
    while not on_both(held):  # the queue group picks at random: 2**-11 to miss after 12
        assert len(held) < 12, "the queue group gave every launch to one replica"
        held.append(await first.launch("sleeper", {"seconds": 30, "tag": str(len(held))}))
    for reply in held:
        await request(first.nc, subjects.exec_cancel("local", reply.execution), Empty(), Ack)
    for reply in held:
        events = await read_events(first.js, reply.execution, timeout=30)
        check_well_formed(events)
        assert status_of(events)[-1] == "cancelled"

    asked: list[LaunchReply] = []
    while not on_both(asked):
        assert len(asked) < 12, "the queue group gave every launch to one replica"
        execution = os.urandom(16).hex()  # chosen first: subscribed before the launch
        status = await first.nc.subscribe(subjects.events("local", execution, "status"))
        asked.append(await first.launch("asker", {}, execution=execution))
        while b'"awaiting"' not in (await status.next_msg(timeout=30)).data:
            pass
        await status.unsubscribe()
    for reply in asked:
        answer = AnswerRequest(data={"colour": "red", "count": 2})
        await request(second.nc, subjects.exec_answer("local", reply.execution), answer, Ack)
    for reply in asked:
        events = await read_events(first.js, reply.execution, timeout=30)
        assert events[-2].data == {"colour": "red", "count": 2}
