"""Reading the views of one bus through JetStream, at the pace the registry takes them in.

Read by a core subscription, views arriving faster than a registry decodes them (a whole view
is ~44 MB at 10,000 nodes) pile up at the server until it cuts the reader as a slow consumer:
every stream heard there has a gap, each gap costs one more whole view, decoded by every
registry of the bus, and the cuts go on (issue 18, the 5-bus chain). Here the bus keeps the
views in the stream `KODO_VIEWS` and the registry reads them through an ordered consumer with
flow control: the server sends a window ahead and waits for the registry to take it in, so a
busy registry lags behind the stream instead of being cut, and reads on from where it stopped.
It misses messages only when it lags past the stream's limits (`views_max_bytes`,
`views_max_age`): then the sender's `seq` has a gap and the registry asks for a `full`, as
with any gap. After a server restart or the loss of its consumer, nats-py's ordered consumer
makes a new one from the stream sequence after the last one delivered (missed idle heartbeats).
It never makes the stream, though: a stream deleted (by hand, or lost with the server's store)
or made anew by someone else is found by a look every `WATCH` seconds, made again, and read
from then on; what was published meanwhile shows as a gap, and a `full` is asked for.

A bus where the stream cannot be made or read (no JetStream there, or no right to it) is read by
a core subscription as before, with one warning saying why; the stream is tried again at
growing intervals (`WATCH` doubling up to `RETRY_MAX`) and read once it can be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.client import JetStreamContext

from . import subjects
from .bus import consumer_config, ensure_stream, jetstream
from .config import ServiceSettings
from .errors import KodoError
from .tasks import TaskSet

log = logging.getLogger("kodo_bus.viewstream")

INACTIVE = 30.0
"""Seconds the server keeps a reader's consumer once nobody reads it: a killed registry leaves
nothing behind for longer, and a registry stalled for less (a long pause, a reconnect) finds
its consumer still there."""
IDLE_HEARTBEAT = 2.0
"""Seconds between the server's idle heartbeats on a consumer; two missed and the consumer is
made anew from the next stream sequence (a server restart, a consumer lost)."""
STREAM_WITHIN = 10.0
"""Seconds a reader waits for the stream to be made or found before it reads by a core
subscription instead: a secure profile without the rights answers nothing, and the views of
the bus must still be read."""
WATCH = 5.0
"""Seconds between two looks at the stream (one `STREAM.INFO`): is it still the one read?"""
RETRY_MAX = 300.0
"""Longest wait, in seconds, between two tries of the stream by a reader that reads by a core
subscription (the wait doubles from `WATCH`): a bus without the rights to it is not asked every
few seconds, each refusal logged by its server."""
VIEW_PENDING_BYTES = 256 * 1024 * 1024
"""View messages a registry holds before it has taken them in (nats-py's default is 128 MB), on
any subscription to views: through the stream, flow control keeps far fewer in flight (a bound
all the same); on a core subscription a few whole views of 10,000 nodes (tens of MB each) may
arrive at once, and a message dropped there is a gap, an ask and one more whole view."""

Handler = Callable[[Msg], Awaitable[None]]


class ViewReader:
    """The views of one bus, read by one registry: through `KODO_VIEWS`, else core NATS."""

    def __init__(
        self,
        nc: NATS,
        settings: ServiceSettings,
        handle: Handler,
        where: str = "its own bus",
        core: NATS | None = None,
        *,
        conform: bool = True,
    ) -> None:
        self.nc = nc
        self.conform = conform
        """Bring an existing stream to our limits (our own bus). On a link the stream belongs
        to that bus (another organization's, its replicas and limits its own): made there if
        missing, else read as it is."""
        self.core = core or nc
        """Where the fallback's core subscription is made: on a link, the connection our stream
        goes out on, made with no_echo (our own stream is not handed back there)."""
        self.settings = settings
        self.handle = handle
        self.where = where
        self.own = subjects.registry_view(settings.id)
        self.sub: Subscription | None = None
        self.streamed = False
        """Whether the views are read through the stream (else a core subscription)."""
        self.skipped_msgs = 0
        self.skipped_bytes = 0
        """Our own view messages handed back by the stream and dropped unread: the core
        subscription of a link had no_echo, a consumer has no such option."""
        self._consumer: str | None = None
        self._created: datetime | None = None
        """When the stream read was made (`StreamInfo.created`): another date, another stream."""
        self.tasks = TaskSet(log)

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self._streamed(), STREAM_WITHIN)
        except (nats.errors.Error, KodoError, TimeoutError) as exc:
            log.warning(
                "views on %s read by a core subscription, not through the stream %s (tried "
                "again now and then): %s",
                self.where,
                subjects.STREAM_VIEWS,
                _why(exc),
            )
            self.sub = await self.core.subscribe(
                subjects.REGISTRY_VIEW_ALL, cb=self._on_msg, pending_bytes_limit=VIEW_PENDING_BYTES
            )
        self.tasks.spawn(self._watch(), f"views stream on {self.where}")

    async def _streamed(self) -> None:
        js = jetstream(self.nc)
        # one look first: a bus without JetStream answers nothing, at once
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.stream_info(subjects.STREAM_VIEWS)
        await self._subscribe(js)
        log.info("views on %s read through the stream %s", self.where, subjects.STREAM_VIEWS)

    async def _subscribe(self, js: JetStreamContext) -> None:
        """Make the stream (or bring it to our limits) and read it from its next message."""
        info: api.StreamInfo | None = None
        if not self.conform:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                info = await js.stream_info(subjects.STREAM_VIEWS)
        info = info or await ensure_stream(
            js,
            subjects.STREAM_VIEWS,
            [subjects.REGISTRY_VIEW_ALL],
            max_age=self.settings.views_max_age,
            max_bytes=self.settings.views_max_bytes,
            replicas=self.settings.replicas,
        )
        sub = await js.subscribe(
            subjects.REGISTRY_VIEW_ALL,
            stream=subjects.STREAM_VIEWS,
            cb=self._on_msg,
            ordered_consumer=True,
            idle_heartbeat=IDLE_HEARTBEAT,
            pending_bytes_limit=VIEW_PENDING_BYTES,
            config=consumer_config(
                deliver_policy=api.DeliverPolicy.NEW,
                inactive_threshold=INACTIVE,
            ),
        )
        self.sub, self.streamed, self._consumer = sub, True, sub._consumer
        self._created = info.created

    async def _watch(self) -> None:
        """Read the stream again once it is gone or another one: nats-py's ordered consumer
        would try to make a consumer on it every few seconds, forever, each failure logged at
        debug level only, and the views of the bus unheard."""
        js = jetstream(self.nc)
        wait = WATCH
        while True:
            await asyncio.sleep(wait)
            if not self.nc.is_connected:
                continue  # nats-py's consumer resumes by itself after a reconnect
            if not self.streamed:
                wait = WATCH if await self._retried() else min(2 * wait, RETRY_MAX)
                continue
            try:
                info = await js.stream_info(subjects.STREAM_VIEWS)
            except nats.js.errors.NotFoundError:
                what = "is gone"
            except (nats.errors.Error, TimeoutError):
                continue  # no answer now: looked at again next time
            else:
                if info.created == self._created:
                    continue
                what = "was made anew"
            log.warning(
                "the stream %s on %s %s: read again from now on (a gap, a full asked for)",
                subjects.STREAM_VIEWS,
                self.where,
                what,
            )
            await self._unsubscribe()
            try:
                await self._subscribe(js)
            except (nats.errors.Error, KodoError, TimeoutError) as exc:
                log.warning(
                    "cannot read the stream %s on %s: %s",
                    subjects.STREAM_VIEWS,
                    self.where,
                    _why(exc),
                )

    async def _retried(self) -> bool:
        """Whether the stream is read now, in place of the core subscription.

        A stream that could not be made at start (JetStream still electing its leaders past
        `STREAM_WITHIN`, rights given later, JetStream turned on) is not given up for good: a
        core subscription is the one the server cuts when the registry falls behind. Both read
        for a moment: a message heard twice is out of order, and a `full` is asked for.
        """
        core = self.sub
        try:
            await asyncio.wait_for(self._streamed(), STREAM_WITHIN)
        except (nats.errors.Error, KodoError, TimeoutError) as exc:
            log.debug("views on %s: still no stream (%s)", self.where, _why(exc))
            return False
        if core is not None:
            with contextlib.suppress(nats.errors.Error):
                await core.unsubscribe()
        return True

    async def _unsubscribe(self) -> None:
        sub, self.sub = self.sub, None
        if sub is None:
            return
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
        consumer = getattr(sub, "_consumer", None) or self._consumer
        if self.streamed and consumer and self.nc.is_connected:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await jetstream(self.nc, timeout=2).delete_consumer(subjects.STREAM_VIEWS, consumer)

    async def _on_msg(self, msg: Msg) -> None:
        if msg.subject == self.own:  # ours, read back: a string compare, nothing decoded
            self.skipped_msgs += 1
            self.skipped_bytes += len(msg.data)
            return
        await self.handle(msg)

    async def stop(self) -> None:
        """Stop reading; the consumer is deleted (else the server drops it after `INACTIVE`)."""
        await self.tasks.close()
        await self._unsubscribe()


def _why(exc: BaseException) -> str:
    if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.ServiceUnavailableError):
        return "no JetStream answers on that bus"
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return f"JetStream did not answer within {STREAM_WITHIN:g} s (no right to the stream?)"
    return repr(exc)
