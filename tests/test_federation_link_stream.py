"""A registry reads a linked bus's `KODO_VIEWS` as that bus has it (issue 18 review).

The stream on a `connect` bus belongs to that bus (another organization's: its replicas and
limits chosen there); a registry linking to it used to bring it to its own `views_max_*`, so the
last registry to start anywhere decided every bus's view retention. Real nats-servers, a real
`kodo-bus run` registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.js import api

from kodo_bus import subjects
from kodo_bus.bus import jetstream
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .test_federation import eventually

pytestmark = pytest.mark.slow

SMALL = 16 * 1024 * 1024


async def test_a_linked_bus_stream_keeps_its_own_limits(
    procs: Processes, server_factory: Callable[[str], NatsServer], tmp_path: Path
) -> None:
    home, other = server_factory("home"), server_factory("other")
    nc = await nats.connect(other.url)
    try:
        js = jetstream(nc)
        await js.add_stream(
            name=subjects.STREAM_VIEWS,
            subjects=[subjects.REGISTRY_VIEW_ALL],
            max_bytes=SMALL,
            max_age=30.0,
            discard=api.DiscardPolicy.OLD,
        )
        log = tmp_path / "r.log"
        procs.start(
            "run", "--nats", home.url, "--id", "link-keeper", "--role", "registry",
            "--connect", other.url, "--heartbeat", "0.5", "--log-file", str(log),
            cwd=REPO,
        )  # fmt: skip

        async def text() -> str:
            return log.read_text() if log.exists() else ""

        await eventually(text, lambda t: f"views on {other.url} read through the stream" in t)
        info = await js.stream_info(subjects.STREAM_VIEWS)
        assert info.config.max_bytes == SMALL
        assert info.config.max_age == 30.0
        assert info.state.consumer_count == 1  # read all the same
    finally:
        await nc.close()
