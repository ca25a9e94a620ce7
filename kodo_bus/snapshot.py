"""Reading what a stream holds right now, in one pass, through one ordered consumer.

A registry restoring its view, a client listing execution records or reading the central log all
need "every matching message as of now, then stop". Per-key `get`s cost a round trip each, and
nats-py's `kv.keys()` decides it is done from `num_pending` on single messages, which can end
early. Here the consumer's own count — delivered plus pending, read together right after it is
created — says exactly how many messages to wait for.

That count is fixed at the start, so the wait for it is bounded: a message counted and then
deleted (a KV key expiring, a purge) never comes, and a server that stops answering delivers
nothing more. After `idle` seconds without a message the consumer is asked what it still holds:
nothing (the missing ones were deleted) ends the pass with what came; anything else, or no
answer, is `SnapshotStalled` — a caller gets a typed error in bounded time instead of a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from . import subjects
from .bus import consumer_config
from .errors import SnapshotStalled

IDLE = 30.0
"""Seconds `current` waits for the next message it counted before it asks the consumer why
(far above an ordered consumer's idle heartbeat, which repairs a message lost in flight)."""


async def current(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    last_per_subject: bool = True,
    start_time: str | None = None,
    follow: bool = False,
    idle: float = IDLE,
) -> AsyncGenerator[Msg, None]:
    """Messages of `stream` on `subject` as of the call (the last per subject by default);
    with `follow`, then every new one until the caller stops iterating.

    Deleted KV keys come as messages with an empty body; callers skip those. Raises
    `SnapshotStalled` when a counted message is `idle` seconds late and the consumer still
    holds some (or does not answer); following after the pass waits without a bound.
    """
    if start_time is not None:
        config = consumer_config(
            deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=start_time
        )
    elif last_per_subject:
        config = consumer_config(deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
    else:
        config = consumer_config(deliver_policy=api.DeliverPolicy.ALL)
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        queue.put_nowait(msg)

    sub = await js.subscribe(
        subject, stream=stream, cb=on_msg, ordered_consumer=True, config=config
    )
    try:
        info = await sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered else 0
        total = (info.num_pending or 0) + (delivered or 0)
        seen = 0
        while follow or seen < total:
            if seen >= total:
                yield await queue.get()
                seen += 1
                continue
            try:
                msg = await asyncio.wait_for(queue.get(), idle)
            except TimeoutError:
                if await _left(sub, idle, f"{stream} {subject}: {seen} of {total}"):
                    raise SnapshotStalled(
                        f"reading {subject} of {stream}: {seen} of {total} messages came, and "
                        f"none for {idle:g} s while the server still holds more"
                    ) from None
                total = seen  # the rest was deleted meanwhile: the pass is complete
                continue
            yield msg
            seen += 1
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


KV_OPERATION = "KV-Operation"
"""NATS KV convention: the header that marks a deleted (`DEL`) or purged (`PURGE`) key."""
KV_DEL = "DEL"
KV_PURGE = "PURGE"


async def kv_keys(js: JetStreamContext, bucket: str, keys: str = ">") -> list[str]:
    """The live keys of `bucket` matching `keys` (a subject pattern over the key), in one pass
    (`current`): what nats-py's `kv.keys()` does, without ending before it saw them all."""
    prefix = subjects.kv_subject(bucket, "")
    found = []
    async for msg in current(js, subjects.kv_stream(bucket), prefix + keys):
        if (msg.headers or {}).get(KV_OPERATION) not in (KV_DEL, KV_PURGE):
            found.append(msg.subject.removeprefix(prefix))
    return found


async def _left(sub: JetStreamContext.PushSubscription, idle: float, what: str) -> bool:
    """Whether the consumer still has messages to deliver (raises `SnapshotStalled` when it
    cannot say within `idle` seconds: the server is gone or stuck)."""
    try:
        async with asyncio.timeout(idle):
            info = await sub.consumer_info()
    except (TimeoutError, nats.errors.Error) as exc:
        raise SnapshotStalled(f"reading {what}: the consumer does not answer ({exc!r})") from exc
    return bool(info.num_pending)
