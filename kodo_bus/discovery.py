"""Finding the registries that are alive on a bus, through NATS micro discovery.

Every kodo-bus service registers as the micro service `kodo-bus` with its id and role in the
metadata, so one `$SRV.INFO.kodo-bus` request reaches all of them and only live ones answer.
A registry with feed on sees the most, so the first one to answer ends the search at once; only
when none answers does the search wait out the window to collect providers and hybrids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro.service import ServiceVerb, control_subject

from . import subjects
from .errors import NoResponders

WINDOW = 0.5
"""Seconds to wait for answers when no feeding registry answers first."""
_REGISTRY_ROLES = ("registry", "provider", "hybrid")
MAX_SERVICES = 100_000
"""Ping replies kept by `live_services` (a flood of made-up replies must not grow memory)."""


async def find_registry(nc: NATS, window: float = WINDOW) -> str:
    """Id of a live registry (feed on preferred); NoResponders when there is none."""
    found: list[dict[str, Any]] = []
    feeding = asyncio.Event()

    async def on_info(msg: Msg) -> None:
        try:
            meta = json.loads(msg.data).get("metadata") or {}
        except (ValueError, AttributeError):
            return  # not a micro INFO reply: ignore it
        if meta.get("role") in _REGISTRY_ROLES and meta.get("id"):
            found.append(meta)
            if meta["role"] == "registry":
                feeding.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_info)
    try:
        await nc.publish(
            control_subject(ServiceVerb.INFO, name=subjects.MICRO_SERVICE_NAME), b"", reply=inbox
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(feeding.wait(), window)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    if not found:
        raise NoResponders(
            "no registry answers on this bus — start one with 'kodo-bus run --role registry' "
            "(or 'kodo-bus up'), or name a service with --via"
        )
    ranked = sorted(found, key=lambda m: (m["role"] != "registry", str(m["id"])))
    return str(ranked[0]["id"])


async def live_services(nc: NATS, window: float = WINDOW) -> list[dict[str, str]]:
    """The micro metadata (`id`, `role`, ...) of every kodo-bus process that answers a
    `$SRV.PING.kodo-bus` within `window`: one per process, so replicas appear once each."""
    found: list[dict[str, str]] = []

    async def on_ping(msg: Msg) -> None:
        try:
            meta = json.loads(msg.data).get("metadata") or {}
        except (ValueError, AttributeError):
            return  # not a micro PING reply: ignore it
        if isinstance(meta, dict) and meta.get("id") and len(found) < MAX_SERVICES:
            found.append({str(k): str(v) for k, v in meta.items()})

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_ping)
    try:
        await nc.publish(
            control_subject(ServiceVerb.PING, name=subjects.MICRO_SERVICE_NAME), b"", reply=inbox
        )
        await asyncio.sleep(window)  # no reply says "that was the last one": wait the window out
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return found
