"""Floors: the same kind of work done with the bare layers kodo-bus is built on.

A kodo-bus figure is only meaningful next to what Ray and NATS alone achieve on the same machine
in the same run: a launch cannot beat a Ray round trip plus a NATS request, an event stream cannot
beat nats-py publish→subscribe. Each floor here is as bare as the library allows.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from ..bus import jetstream
from ..models import TERMINAL_STATUSES
from .common import Floor, percentile

_made: dict[str, Any] = {}


def _noop() -> int:
    return 0


def _ray_noop() -> Any:
    """The bare Ray task, made remote once per process (Ray is imported only when needed)."""
    if "noop" not in _made:
        import ray

        _made["noop"] = ray.remote(num_cpus=1)(_noop)
    return _made["noop"]


async def ray_task_round_trip(n: int) -> list[float]:
    """Seconds of `await noop.remote()` one after the other (after a warm-up)."""
    task = _ray_noop()
    for _ in range(min(n, 20)):
        await task.remote()
    samples: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await task.remote()
        samples.append(time.perf_counter() - t0)
    return samples


async def ray_tasks_per_second(n: int) -> float:
    """Bare no-op Ray tasks submitted at once, per second until all results are back."""
    import ray

    task = _ray_noop()
    await asyncio.to_thread(ray.get, [task.remote() for _ in range(min(n, 50))])
    t0 = time.perf_counter()
    refs = [task.remote() for _ in range(n)]
    await asyncio.to_thread(ray.get, refs)
    return n / (time.perf_counter() - t0)


async def nats_request_round_trip(nc: NATS, n: int, subject: str) -> list[float]:
    """Seconds of a bare request/reply through the server (responder in this process)."""

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    sub = await nc.subscribe(subject, cb=echo)
    try:
        for _ in range(min(n, 50)):
            await nc.request(subject, b"x", timeout=5)
        samples: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter()
            await nc.request(subject, b"x", timeout=5)
            samples.append(time.perf_counter() - t0)
        return samples
    finally:
        await sub.unsubscribe()


async def nats_pubsub_rate(
    nc: NATS, n: int, subject: str, body: bytes, headers: dict[str, str] | None = None
) -> float:
    """Messages per second from bare `publish` to a subscriber callback, in one process."""
    got = 0
    done = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Msg) -> None:
        nonlocal got
        got += 1
        if got == n and not done.done():
            done.set_result(None)

    sub = await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=n + 1, pending_bytes_limit=-1)
    await nc.flush()
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            await nc.publish(subject, body, headers=headers)
        await asyncio.wait_for(done, timeout=max(60.0, n / 1000))
        return n / (time.perf_counter() - t0)
    finally:
        await sub.unsubscribe()


async def js_replay_rate(nc: NATS, subject: str) -> float:
    """Events per second through a bare nats-py ordered consumer, until the execution's end.

    No decoding: events are counted with one byte search per message (a burst travels as one
    message holding several), so this is what a reader with free decoding would reach.
    """
    got = 0
    done = asyncio.get_running_loop().create_future()
    t0 = 0.0

    async def on_msg(msg: Msg) -> None:
        nonlocal got, t0
        if not got:
            t0 = time.perf_counter()
        got += msg.data.count(b'"seq":')
        if msg.subject.endswith(".status") and _TERMINAL.search(msg.data) and not done.done():
            done.set_result(time.perf_counter())

    sub = await jetstream(nc).subscribe(
        subject,
        cb=on_msg,
        ordered_consumer=True,
        config=api.ConsumerConfig(flow_control=True, idle_heartbeat=2.0),
    )
    try:
        end = await asyncio.wait_for(done, timeout=120.0)
        return (got - 1) / (end - t0) if end > t0 else float("nan")
    finally:
        await sub.unsubscribe()


_TERMINAL = re.compile(
    rb'"status":"(' + b"|".join(s.encode() for s in sorted(TERMINAL_STATUSES)) + rb')"'
)


_LISTENER = """
import asyncio, sys
import nats

async def main():
    nc = await nats.connect(sys.argv[1])
    async def nothing(msg):
        pass
    await nc.subscribe(sys.argv[2], cb=nothing)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.close()

asyncio.run(main())
"""


class BareListener:
    """A separate Python process subscribed to `subject` with a no-op callback.

    The floor of a registry's CPU share: what receiving the same messages costs a process that
    does nothing with them (nats-py parsing and asyncio wake-ups only).
    """

    def __init__(self, url: str, subject: str) -> None:
        self.url = url
        self.subject = subject
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> BareListener:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LISTENER,
            self.url,
            self.subject,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        await asyncio.wait_for(self.proc.stdout.readline(), 60)
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


async def python_start_seconds(code: str) -> float:
    """Seconds for a fresh interpreter to run `code` and exit (imports dominate)."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.wait_for(proc.wait(), 60)
    return time.perf_counter() - t0


def p50_floor(name: str, samples: list[float]) -> Floor:
    """A latency floor in milliseconds (median of the samples)."""
    return Floor(name=name, value=percentile(samples, 50) * 1000, unit="ms")
