"""Reading what a stream holds right now, in one pass, through one ordered consumer.

A registry restoring its view, a client listing execution records or reading the central log all
need "every matching message as of now, then stop". Per-key `get`s cost a round trip each, and
nats-py's `kv.keys()` decides it is done from `num_pending` on single messages, which can end
early. Here the consumer's own count — delivered plus pending, read together right after it is
created — says exactly how many messages to wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from .bus import consumer_config


async def current(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    last_per_subject: bool = True,
    start_time: str | None = None,
    follow: bool = False,
) -> AsyncIterator[Msg]:
    """Messages of `stream` on `subject` as of the call (the last per subject by default);
    with `follow`, then every new one until the caller stops iterating.

    Deleted KV keys come as messages with an empty body; callers skip those.
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
            yield await queue.get()
            seen += 1
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
