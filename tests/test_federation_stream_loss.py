"""A registry whose `KODO_VIEWS` stream goes away under it reads views again, and one that could
not read a bus through it at start does once it can (issue 18 review).

The reader's ordered consumer re-creates itself from the stream sequence after the last one it
read, but never makes the stream: deleted (by an operator, or lost with the server's store),
nobody makes it again, every re-creation fails, and the registry hears no view of that bus until
it restarts, while the senders' streams show it no gap to ask about. Real nats-server, a real
`kodo-bus run` registry, a made-up sender publishing in msgpack as a registry does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from pathlib import Path

import nats
import pytest

from kodo_bus import subjects
from kodo_bus.auth import UserStore
from kodo_bus.bus import jetstream
from kodo_bus.config import ServerSettings
from kodo_bus.errors import KodoError
from kodo_bus.server import NatsServer

from . import test_federation_resume as resume
from .conftest import REPO, Processes
from .test_federation import eventually, nodes
from .test_federation_resume import Bus, far

pytestmark = pytest.mark.slow


bus = resume.bus
"""One bus, one registry (`kodo-bus run`), as in test_federation_resume."""


async def heard_again(bus: Bus, timeout: float = 20.0) -> None:
    """Publish a new node in `changes` (and a `full` when asked) until the registry lists one."""
    assert bus.nc is not None
    deadline = time.monotonic() + timeout
    names: list[str] = []
    while time.monotonic() < deadline:
        name = f"far-{len(names) + 1}"
        names.append(name)
        if bus.asks:
            bus.asks.clear()
            await bus.publish("full", ["far-0", *names], part=0, parts=1)
        else:
            await bus.publish("changes", [name])
        with contextlib.suppress(KodoError):  # reconnecting after its server restarted
            if far(await nodes(bus.nc, bus.rid)) - {"far-0"}:
                return
        await asyncio.sleep(0.5)
    raise AssertionError(f"no view heard within {timeout} s after the stream went away")


async def test_a_deleted_views_stream_is_made_again(bus: Bus) -> None:
    nc = await bus.start()
    await bus.publish("full", ["far-0"], part=0, parts=1)
    await bus.listed({"far-0"})
    js = jetstream(nc)
    await js.delete_stream(subjects.STREAM_VIEWS)
    await heard_again(bus)
    info = await js.stream_info(subjects.STREAM_VIEWS)  # made again, and read
    assert info.state.messages > 0


async def test_a_views_stream_lost_with_the_store_is_made_again(bus: Bus) -> None:
    await bus.start()
    await bus.publish("full", ["far-0"], part=0, parts=1)
    await bus.listed({"far-0"})
    assert bus.nc is not None
    await bus.nc.close()
    # the server comes back with an empty store (a container without a volume, say)
    await asyncio.to_thread(_restart_empty, bus.server)
    bus.nc = nc = await nats.connect(bus.server.url)
    await nc.subscribe(subjects.registry_ask("far"), cb=bus.on_ask)
    await heard_again(bus)


def _restart_empty(server: NatsServer) -> None:
    server.stop()
    store = server.settings.store
    assert store is not None
    for path in sorted(Path(store).rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            path.unlink()
        else:
            path.rmdir()
    server.restart()


def _without_views_rights(conf: str) -> str:
    """The secure profile's config as rendered before `KODO_VIEWS` (an older users.yaml): the
    views store neither captures views nor serves that stream's API."""
    kept = []
    for line in conf.splitlines(keepends=True):
        item = line.strip()
        if item.startswith("{ service") and (
            "KODO_VIEWS" in item or subjects.REGISTRY_VIEW_ALL in item
        ):
            continue
        kept.append(re.sub(r', "[^"]*KODO_VIEWS[^"]*"', "", line))
    return "".join(kept)


async def test_a_bus_read_by_a_core_subscription_is_read_through_the_stream_later(
    procs: Processes, tmp_path: Path
) -> None:
    """A core subscription is what the server cuts when the registry falls behind: a stream that
    could not be read at start (here: no right to it until the config is rendered again and
    reloaded; in a cluster, leaders elected after `STREAM_WITHIN`) is not given up for good."""
    store = UserStore(tmp_path / "conf")
    store.add("late-r", "registry", password="late", rounds=4)
    store.add("late-root", "admin", password="root", rounds=4)
    conf = store.conf_file
    rendered = conf.read_text()
    conf.write_text(_without_views_rights(rendered))
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=tmp_path / "store", config=conf)
    ).start()
    try:
        log = tmp_path / "late-r.log"
        cmd = ["run", "--nats", server.url, "--id", "late-r", "--role", "registry"]
        cmd += ["--cache-reset", "--heartbeat", "0.5", "--log-file", str(log)]
        procs.start(*cmd, env={"KODO_USER": "late-r", "KODO_PASSWORD": "late"}, cwd=REPO)

        async def logged() -> str:
            return log.read_text() if log.exists() else ""

        await eventually(logged, lambda t: "views on our own bus read by a core" in t, 20)
        conf.write_text(rendered)  # the rights given: rendered again, reloaded
        assert server._proc is not None
        os.kill(server._proc.pid, signal.SIGHUP)
        streamed = "views on our own bus read through the stream"
        await eventually(logged, lambda t: streamed in t, timeout=20)
    finally:
        server.stop()
