"""Issue 15: a user makes *someone else* publish for him (confused deputy through reply subjects).

NATS does not check a request's reply subject, and a JetStream consumer delivers wherever its
creator says: every responder — JetStream's API, `$SRV` micro, a kodo service — publishes onto
the subject bob names. Each test plays one row of the issue's table on the secure profile
(the module-scoped server of `test_security.py`) and asserts the refusal: nothing lands on a
subject that acts for alice or for a node.

All of them fail on today's secure profile (one account, permissions only), which is what the
strict xfail records: the day the design of ARCHITECTURE.md "Security: who can make whom publish
what" (accounts, the JetStream API behind a prefix, stores apart) lands, they pass and the
xfail marker must go. A stand-in with the node's own credentials answers where the row needs a
kodo responder (a launch, `$SRV.PING` through NATS micro): the node's permissions are what
is tested, not its code.
"""

# ruff: noqa: F811  (pytest fixtures imported from test_security are parameters here)
from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro import add_service

from kodo_bus import subjects
from kodo_bus.bus import connect, jetstream
from kodo_bus.server import NatsServer

from .test_security import login, secure, settings, stored  # noqa: F401  (module fixtures)

QUIET = 1.5
"""How long a listener must hear nothing: far above a loopback round trip (milliseconds)."""


async def heard_nothing(sub: Subscription) -> None:
    """Fail with what arrived if anything reaches `sub` within QUIET seconds."""
    try:
        msg = await sub.next_msg(timeout=QUIET)
    except (TimeoutError, nats.errors.TimeoutError):
        return
    raise AssertionError(f"{msg.subject} received {msg.data[:120]!r} (reply {msg.reply!r})")


@pytest.fixture(scope="module")
def bob_final(secure: NatsServer, stored: dict[str, str]) -> str:
    """A `final` event of bob's stored as admin without a Nats-Msg-Id (so no de-duplication
    window hides a reflected copy: the "after the dedupe window" of row R9)."""
    import asyncio

    async def store() -> str:
        nc = await connect(settings(secure, "root"))
        try:
            subject = subjects.events("bob", stored["bob"], "final")
            body = json.dumps({"v": 1, "execution": stored["bob"], "seq": 6, "kind": "final",
                               "launcher": "bob", "data": "bob's value"}).encode()  # fmt: skip
            await jetstream(nc).publish(subject, body)
            return subject
        finally:
            await nc.close()

    return asyncio.run(store())


API = subjects.JS_API_KODO
"""Where bob's account reaches JetStream (what `bus.jetstream` finds): the attacks use the
API bob is allowed to use, so what stops them is the design, not a permission."""


async def reflect(session: Any, request: str, reply: str, body: bytes = b"") -> None:
    """Send `request` with `reply` as its reply subject; the server must let bob send it (no
    permission violation): the attack is made, and the test shows where its answer lands."""
    await session.nc.publish(request, body, reply=reply)
    await session.nc.flush()
    await session.nc.request(f"{subjects.JS_API}.INFO", b"", timeout=2)  # a round trip more
    session.clean()


async def stored_seq(root: Any, subject: str) -> int:
    """The stream sequence of the last message stored on `subject` (0: none)."""
    js = jetstream(root.nc, timeout=2.0)
    try:
        msg = await js.get_last_msg(subjects.STREAM_EVENTS, subject, direct=True)
    except nats.js.errors.NotFoundError:
        return 0
    return int((msg.headers or {}).get("Nats-Sequence", "0"))


@pytest.fixture
async def responder(login: Any) -> AsyncIterator[Callable[[str], Awaitable[None]]]:
    """node1 answering every request on a subject, as a kodo responder does."""
    node = await login("node1")
    subs: list[Subscription] = []

    async def answer(msg: Msg) -> None:
        if msg.reply:
            await node.nc.publish(msg.reply, b'{"v":1,"kind":"busy","message":"stand-in"}')

    async def start(subject: str) -> None:
        subs.append(await node.nc.subscribe(subject, cb=answer))
        await node.nc.flush()

    yield start
    for sub in subs:
        await sub.unsubscribe()


def _own_event(stored: dict[str, str]) -> str:
    return f"{API}.DIRECT.GET.{subjects.STREAM_EVENTS}." + subjects.events(
        "bob", stored["bob"], "inputs"
    )


async def test_r1_a_jetstream_reply_does_not_launch_as_alice(
    login: Any,
    stored: dict[str, str],
) -> None:
    node = await login("node1")
    launches = await node.nc.subscribe(subjects.launch_node("node1"))
    await node.nc.flush()
    bob = await login("bob")
    await reflect(bob, _own_event(stored), subjects.launch("alice", "node1", "f"))
    await heard_nothing(launches)


async def test_r1_a_srv_ping_reply_does_not_launch_as_alice(login: Any) -> None:
    node = await login("node1")
    service = await add_service(node.nc, name=subjects.MICRO_SERVICE_NAME, version="0.0.0")
    other = await login("node1")
    launches = await other.nc.subscribe(subjects.launch_node("node1"))
    await other.nc.flush()
    try:
        bob = await login("bob")
        await reflect(bob, "$SRV.PING", subjects.launch("alice", "node1", "f"))
        await heard_nothing(launches)
    finally:
        await service.stop()


async def test_r3_a_jetstream_reply_is_not_stored_as_alices_event(
    login: Any,
    stored: dict[str, str],
) -> None:
    root = await login("root")
    target = subjects.events("alice", stored["alice"], "log")
    before = await stored_seq(root, target)
    bob = await login("bob")
    await reflect(bob, f"{API}.CONSUMER.INFO.{subjects.STREAM_EVENTS}.nothing", target)
    await reflect(bob, _own_event(stored), target)
    root_sub = await root.nc.subscribe(target)
    await root.nc.flush()
    await heard_nothing(root_sub)
    assert await stored_seq(root, target) == before


async def test_r4_a_jetstream_reply_does_not_write_alices_record(
    login: Any,
    stored: dict[str, str],
) -> None:
    root = await login("root")
    kv = await jetstream(root.nc, timeout=2.0).key_value(subjects.BUCKET_EXECUTIONS)
    key = subjects.record_key("alice", stored["alice"])
    before = (await kv.get(key)).revision
    bob = await login("bob")
    await reflect(bob, _own_event(stored), subjects.kv_subject(subjects.BUCKET_EXECUTIONS, key))
    deadline = time.monotonic() + QUIET
    while time.monotonic() < deadline:
        assert (await kv.get(key)).revision == before, "alice's record was overwritten"
        await root.nc.flush()


async def test_r5_a_launch_reply_is_not_a_catalog(login: Any, responder: Any) -> None:
    await responder(subjects.launch_node("node1"))
    registry = await login("reg1")
    catalogs = await registry.nc.subscribe(subjects.node_catalog("node1"))
    await registry.nc.flush()
    bob = await login("bob")
    await reflect(bob, subjects.launch("bob", "node1", "f"), subjects.node_catalog("node1"))
    await heard_nothing(catalogs)


async def test_r6_a_srv_ping_reply_does_not_disconnect_a_node(login: Any) -> None:
    node = await login("node1")
    service = await add_service(node.nc, name=subjects.MICRO_SERVICE_NAME, version="0.0.0")
    other = await login("node1")
    disconnects = await other.nc.subscribe(subjects.svc_disconnect("node1"))
    await other.nc.flush()
    try:
        bob = await login("bob")
        await reflect(bob, "$SRV.PING", subjects.svc_disconnect("node1"))
        await heard_nothing(disconnects)
    finally:
        await service.stop()


@pytest.mark.parametrize("action", ["answer", "cancel"])
async def test_r7_r8_a_direct_get_reply_does_not_answer_or_cancel_for_alice(
    login: Any,
    stored: dict[str, str],
    bob_final: str,
    action: str,
) -> None:
    node = await login("node1")
    control = await node.nc.subscribe(subjects.EXEC_CONTROL_ALL)
    await node.nc.flush()
    bob = await login("bob")
    target = f"kodo.exec.alice.{stored['alice']}.{action}"
    await reflect(bob, f"{API}.DIRECT.GET.{subjects.STREAM_EVENTS}.{bob_final}", target)
    await heard_nothing(control)


async def test_r9_bobs_final_is_not_stored_as_alices(
    login: Any,
    stored: dict[str, str],
    bob_final: str,
) -> None:
    root = await login("root")
    target = subjects.events("alice", stored["alice"], "final")
    before = await stored_seq(root, target)
    bob = await login("bob")
    await reflect(bob, f"{API}.DIRECT.GET.{subjects.STREAM_EVENTS}.{bob_final}", target)
    watch = await root.nc.subscribe(target)
    await root.nc.flush()
    await heard_nothing(watch)
    assert await stored_seq(root, target) == before, "bob's final was stored as alice's"


async def test_m1_no_jetstream_api_lists_alices_subjects_or_keys(
    login: Any,
    stored: dict[str, str],
) -> None:
    bob = await login("bob")
    for stream, pattern in (
        (subjects.STREAM_EVENTS, subjects.events_of_user("alice")),
        (
            subjects.kv_stream(subjects.BUCKET_EXECUTIONS),
            subjects.kv_subject(subjects.BUCKET_EXECUTIONS, subjects.record_key("alice", ">")),
        ),
    ):
        body = json.dumps({"subjects_filter": pattern}).encode()
        for api in (API, subjects.JS_API):
            try:
                msg = await bob.nc.request(f"{api}.STREAM.INFO.{stream}", body, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
                continue  # refused: nothing listed
            listed = json.loads(msg.data).get("state", {}).get("subjects") or {}
            assert stored["alice"] not in json.dumps(listed), f"{stream} lists alice's: {listed}"


async def test_r10_a_consumer_does_not_deliver_onto_alices_control(
    login: Any,
    stored: dict[str, str],
) -> None:
    """Not in the issue's table: a push consumer delivers where its creator says (found while
    deciding the design); bob's own events delivered as alice's cancel. Seen on nats-server
    2.15 only toward a subject someone subscribes to literally (a wildcard subscription alone,
    like a node's `kodo.exec.*.*.*`, did not draw the delivery in our trials): any literal
    subscriber in the account, a per-execution listener or an inbox, is reachable."""
    node = await login("node1")
    control = await node.nc.subscribe(subjects.exec_cancel("alice", stored["alice"]))
    await node.nc.flush()
    bob = await login("bob")
    name = os.urandom(8).hex()
    own = subjects.events_of_user("bob")
    config = {
        "stream_name": subjects.STREAM_EVENTS,
        "config": {
            "name": name,
            "filter_subject": own,
            "deliver_subject": subjects.exec_cancel("alice", stored["alice"]),
            "deliver_policy": "all",
            "ack_policy": "none",
        },
    }
    reply = await bob.nc.request(
        f"{API}.CONSUMER.CREATE.{subjects.STREAM_EVENTS}.{name}.{own}",
        json.dumps(config).encode(),
        timeout=2.0,
    )
    bob.clean()  # bob may create it: what keeps the delivery from alice's cancel is the account
    created = json.loads(reply.data)
    assert "error" in created or created.get("name") == name, created
    await heard_nothing(control)
