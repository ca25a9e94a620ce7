"""Republishing a registry's view to other buses, and (feed on) taking in theirs.

Buses joined at the NATS level are one bus; `connect` names independent buses. For each one the
registry keeps a second NATS connection (retried forever in the background, so a missing peer
never blocks start). On it the registry publishes its view on `kodo.registry.<id>.view` and, with
feed on, listens to the views other registries publish there. A provider also republishes on its
own bus, where registries with feed on take it in; it never listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from . import subjects
from .bus import connect
from .codec import encode
from .config import ConnectSettings
from .errors import ConnectError
from .tasks import TaskSet

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger("kodo_bus.peers")


class Peers:
    """The `connect` buses of one registry or provider."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.settings = registry.settings
        self.links: dict[str, NATS] = {}
        self.tasks = TaskSet(log)
        self._publisher: asyncio.Task[None] | None = None

    @property
    def _targets(self) -> list[NATS]:
        own = [] if self.settings.feeds else [self.registry.nc]
        return own + [nc for nc in self.links.values() if nc.is_connected]

    async def start(self) -> None:
        for url in self.settings.connect:
            self.tasks.spawn(self._link(url), f"link {url}")
        if self._targets or self.settings.connect:
            self._publisher = self.tasks.spawn(self._republish(), "republish")

    async def stop(self) -> None:
        await self.tasks.close()
        for nc in self.links.values():
            with contextlib.suppress(nats.errors.Error):
                await nc.drain()
        self.links.clear()

    async def withdraw(self) -> None:
        """Stop republishing and publish an empty view, so every taker drops our entries."""
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
        await self._publish()

    async def _link(self, url: str) -> None:
        settings = ConnectSettings(
            nats=[url],
            retry=-1,
            credentials=self.settings.credentials,
            name=f"{self.settings.id}-peer",
        )
        try:
            nc = await connect(settings)
        except ConnectError as exc:
            log.error("cannot reach peer bus %s: %s", url, exc)
            return
        self.links[url] = nc
        log.info("linked to peer bus %s", url)
        if self.settings.feeds:

            async def on_view(msg: Msg) -> None:
                await self.registry.on_view_msg(msg, [url])

            await nc.subscribe(subjects.REGISTRY_VIEW_ALL, cb=on_view)
        self.registry.changed.set()

    async def _republish(self) -> None:
        """Publish on every change (at most twice a heartbeat) and once a heartbeat anyway."""
        beat = self.settings.heartbeat
        changed = self.registry.changed
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), beat)
            changed.clear()
            await self._publish()
            await asyncio.sleep(min(1.0, beat / 2))

    async def _publish(self) -> None:
        body, headers = encode(self.registry.republished())
        subject = subjects.registry_view(self.settings.id)
        for nc in self._targets:
            try:
                await nc.publish(subject, body, headers=headers)
                await nc.flush(timeout=2)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("cannot republish the view: %r", exc)
