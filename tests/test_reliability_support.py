"""Helpers of the reliability tests: services as real `kodo-bus run` processes (no tests here).

Every process is started through the `procs` fixture, so it is stopped by its own PID even when
a test fails; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kodo_bus.client import Client
from kodo_bus.execution_ref import Execution
from kodo_bus.flow_ref import Flow
from kodo_bus.models import TERMINAL_STATUSES, Event

from .conftest import REPO, Processes

FLOWS = "tests.flowpkg.reliability_flows"
BEAT = 0.3
T = TypeVar("T")


def service(
    procs: Processes,
    tmp: Path,
    urls: Sequence[str],
    ray_address: str | None = None,
    **body: Any,
) -> subprocess.Popen[str]:
    """Start `kodo-bus run` from a YAML config holding `body` (id, role, flows, ...)."""
    config = tmp / f"{body['id']}.yaml"
    # The screen log goes to a pipe nobody reads while the test runs: keep it small (a full
    # pipe would block the service); the whole story is in the log file next to the config.
    # CRITICAL: even a flood of warnings (the fuzz test) must not fill that pipe.
    data = {
        "nats": list(urls),
        "heartbeat": BEAT,
        "retry": -1,
        "log_level": "CRITICAL",
        "log_file": str(tmp / f"{body['id']}.log"),
        **body,
    }
    config.write_text(yaml.safe_dump(data))
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    if ray_address:
        env["KODO_RAY_ADDRESS"] = ray_address
    return procs.start("run", "--config", str(config), env=env, cwd=str(REPO))


def node_body(node: str, **extra: Any) -> dict[str, Any]:
    return {"id": node, "role": "node", "flows": [{"module": FLOWS}], **extra}


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 30.0
) -> T:
    """Poll `probe` until `check` holds; fail with the last value (or error) at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = value = await probe()
            if check(value):
                return value
        except Exception as exc:  # a service that is not up yet
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; last: {last!r}")
        await asyncio.sleep(0.1)


async def online_flow(kb: Client, name: str, timeout: float = 60.0) -> Flow:
    """The flow `node/name` once a registry lists it online."""
    return await eventually(lambda: kb.flow(name), lambda f: f.status == "online", timeout)


async def first_event(ex: Execution, kind: str, timeout: float = 60.0) -> Event:
    """The first event of `kind` (a worker's PID, say), read with a deadline."""
    async with asyncio.timeout(timeout):
        stream = ex.events(kinds=[kind])
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                return event
    raise AssertionError(f"{ex} ended without a {kind} event")


async def all_events(ex: Execution, timeout: float = 60.0) -> list[Event]:
    """Every event of an ended (or ending) execution, read from the stream by a new reader."""
    async with asyncio.timeout(timeout):
        return [e async for e in ex.events()]


def check_complete(events: Sequence[Event]) -> None:
    """Seq 1..n without gaps or duplicates, one terminal status, and it is the last event."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    ends = [e for e in events if e.kind == "status" and e.data["status"] in TERMINAL_STATUSES]
    assert ends == [events[-1]]
