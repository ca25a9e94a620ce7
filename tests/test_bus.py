"""Connection helper, typed request/reply and idempotent JetStream set-up against a real server."""

from __future__ import annotations

import asyncio
import socket
import time

import nats.errors
import pytest
from nats.aio.msg import Msg

from kodo_bus import models, subjects
from kodo_bus.bus import (
    connect,
    ensure_bucket,
    ensure_execution_storage,
    ensure_stream,
    request,
    respond,
    respond_error,
)
from kodo_bus.codec import CONTENT_TYPE, JSON, MSGPACK
from kodo_bus.config import ConnectSettings
from kodo_bus.errors import ConnectError, FieldProblem, InputsInvalid, KodoTimeout, NoResponders
from kodo_bus.server import NatsServer


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"nats://127.0.0.1:{sock.getsockname()[1]}"


async def test_dead_url_fails_with_clear_message_within_budget() -> None:
    url = _dead_url()
    started = time.monotonic()
    with pytest.raises(ConnectError) as info:
        await connect(ConnectSettings(nats=[url], retry=3))
    elapsed = time.monotonic() - started
    assert f"cannot reach NATS at {url}" in str(info.value)
    assert "kodo-bus server" in str(info.value)
    assert "4 attempts" in str(info.value)
    # 3 backoffs of at most 0.2, 0.4 and 0.8 s, plus 4 refused connects on loopback.
    assert elapsed < 3.0


async def test_first_reachable_url_wins(nats_server: NatsServer) -> None:
    nc = await connect(ConnectSettings(nats=[_dead_url(), nats_server.url], retry=0))
    try:
        assert nc.is_connected
        assert nc.connected_url is not None and nc.connected_url.port == nats_server.port
        assert nc.options["allow_reconnect"] is True
    finally:
        await nc.close()


async def test_request_reply_mirrors_content_type_and_types_errors(nats_server: NatsServer) -> None:
    nc = await connect(ConnectSettings(nats=[nats_server.url], retry=0))
    seen: list[str | None] = []

    async def handler(msg: Msg) -> None:
        seen.append((msg.headers or {}).get(CONTENT_TYPE))
        if msg.data and b"bad" in msg.data:
            await respond_error(msg, "invalid_inputs", "bad", [FieldProblem("x", "too big")])
        else:
            await respond(msg, models.Ack(message="pong"))

    try:
        await nc.subscribe("kodo.test.echo", cb=handler)
        for ct in (MSGPACK, JSON):
            reply = await request(nc, "kodo.test.echo", models.Empty(), models.Ack, content_type=ct)
            assert reply.message == "pong"
        assert seen == [MSGPACK, JSON]
        raw = await nc.request("kodo.test.echo", b"{}", headers={CONTENT_TYPE: JSON})
        assert raw.headers is not None and raw.headers[CONTENT_TYPE] == JSON
        raw = await nc.request("kodo.test.echo", b"")
        assert raw.headers is not None and raw.headers[CONTENT_TYPE] == JSON  # unknown type: JSON
        with pytest.raises(InputsInvalid) as info:
            await request(nc, "kodo.test.echo", models.AnswerRequest(data="bad"), models.Ack)
        assert info.value.problems == [FieldProblem("x", "too big")]
        with pytest.raises(NoResponders, match=r"kodo\.test\.nobody"):
            await request(nc, "kodo.test.nobody", models.Empty(), models.Ack, timeout=2)
        await nc.subscribe("kodo.test.silent")
        with pytest.raises(KodoTimeout) as timeout:
            await request(nc, "kodo.test.silent", models.Empty(), models.Ack, timeout=0.2)
        assert isinstance(timeout.value, TimeoutError)
    finally:
        await nc.close()


async def test_streams_and_buckets_are_idempotent(fresh_server: NatsServer) -> None:
    nc = await connect(ConnectSettings(nats=[fresh_server.url], retry=0))
    try:
        js = nc.jetstream()
        first = await ensure_stream(js, "T1", ["t1.>"], max_age=60)
        again = await ensure_stream(js, "T1", ["t1.>"], max_age=120)
        assert first.config.name == again.config.name == "T1"
        assert again.config.max_age == 120  # an existing stream is brought to the new limits
        kv = await ensure_bucket(js, "B1", history=1)
        await kv.put("k", b"v")
        kv2 = await ensure_bucket(js, "B1", history=1)
        assert (await kv2.get("k")).value == b"v"

        await ensure_execution_storage(js, max_age=3600)
        await ensure_execution_storage(js, max_age=3600)
        info = await js.stream_info(subjects.STREAM_EVENTS)
        assert info.config.subjects == [subjects.EVENTS_ALL, subjects.FENCE_ALL]
        assert info.config.max_age == 3600
        await js.key_value(subjects.BUCKET_EXECUTIONS)
    finally:
        await nc.close()


async def test_a_reconnect_loop_that_outlives_close_ends_by_itself(
    fresh_server: NatsServer,
) -> None:
    """CI hung at a loop's shutdown on a reconnect task whose cancel (sent by close()) Python
    3.11's wait_for had swallowed: it retried a stopped server forever. Once closed, a
    connection's reconnect budget is bounded, so such a task ends; played here by running
    nats-py's retry loop on a closed connection, as the surviving task does."""
    nc = await connect(ConnectSettings(nats=[fresh_server.url]))
    fresh_server.stop()
    await nc.close()
    survivor = asyncio.create_task(nc._select_next_server())
    try:
        with pytest.raises(nats.errors.NoServersError):
            async with asyncio.timeout(10):
                await survivor
    finally:
        survivor.cancel()
