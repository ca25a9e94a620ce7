"""The dashboard's figures and refusals (issue 17, finding 7): events/s counts events (a burst is
one message of many), the guessed monitoring URL is believed only for the connected server, an
unknown `--via` is refused in one line, and without a terminal it says so and exits 2.

Real nats-servers and the real `kodo-bus` binary; no Ray.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Callable

from kodo_bus import subjects
from kodo_bus.bus import ensure_bucket
from kodo_bus.client import Client
from kodo_bus.dashboard import DashboardState
from kodo_bus.dashboard.feeds import Feeds, default_monitor
from kodo_bus.dashboard.state import ServerInfo
from kodo_bus.executions import event_message
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO
from .test_cli_watch import make, publish_burst
from .test_dashboard import Screen, screen


async def until(check: Callable[[], bool], what: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_events_per_second_counts_the_events_of_a_burst(fresh_server: NatsServer) -> None:
    """A burst of 50 (id `<ex>:1-50`), a headerless array of 3, two single events, a garbage
    message (1: its kind is not decoded, so it is counted as sent) and an array of two
    `status` events (both decoded): 58 events in 6 messages. A status of another execution on
    this execution's subject is counted as sent, not taken (`codec.decode_events`): 59."""
    ex, other = "e" * 32, "f" * 32
    state = DashboardState()
    async with Client(fresh_server.url) as kb:
        feeds = Feeds(kb, state)
        await feeds.start()
        try:
            await kb.nc.flush()
            await publish_burst(kb.nc, [make(ex, s, "stdout", f"{s}\n") for s in range(1, 51)])
            body = "[" + ",".join(make(ex, s, "text", "t").model_dump_json() for s in (51, 52, 53))
            await kb.nc.publish(subjects.events("alice", ex, "text"), (body + "]").encode())
            for seq in (54, 55):
                subject, data, headers = event_message(make(ex, seq, "log", {"message": "m"}))
                await kb.nc.publish(subject, data, headers=headers)
            await kb.nc.publish(subjects.events("alice", ex, "markdown"), b"garbage")
            statuses = [
                make(ex, 56, "status", {"status": "awaiting"}),
                make(ex, 57, "status", {"status": "running"}),
            ]
            body = "[" + ",".join(e.model_dump_json() for e in statuses) + "]"
            await kb.nc.publish(subjects.events("alice", ex, "status"), body.encode())
            forged = make(other, 1, "status", {"status": "awaiting"}).model_dump_json()
            await kb.nc.publish(subjects.events("alice", ex, "status"), f"[{forged}]".encode())
            await kb.nc.flush()
            await until(lambda: sum(state.rate_buckets.values()) >= 59, "59 events counted")
            await until(
                lambda: ex in state.executions and state.executions[ex].status == "running",
                "both statuses of the array decoded",
            )
        finally:
            await feeds.stop()
    assert sum(state.rate_buckets.values()) == 59
    assert other not in state.executions


async def test_a_guessed_monitor_must_be_the_connected_servers(
    server_factory: Callable[[str], NatsServer],
) -> None:
    one, two = server_factory("one"), server_factory("two")
    assert one.monitor_url and two.monitor_url
    assert default_monitor("nats://10.1.2.3:4333") == "http://10.1.2.3:8222"
    assert default_monitor("nats://[::1]:4333") == "http://[::1]:8222"
    async with Client(one.url) as kb:
        for monitor, guessed, ok in (
            (two.monitor_url, True, False),  # a guess that reached another server: not shown
            (one.monitor_url, True, True),
            (two.monitor_url, False, True),  # given with --monitor: the user's word
        ):
            state = DashboardState()
            feeds = Feeds(kb, state, monitor=monitor, monitor_every=0.1, guessed=guessed)
            await feeds.start()
            try:
                s = state.server

                def answered(s: ServerInfo = s) -> bool:
                    return s.monitor_ok or s.monitor_other

                await until(answered, "no answer from /varz")
            finally:
                await feeds.stop()
            assert (s.monitor_ok, s.monitor_other) == (ok, not ok), monitor
            header = screen(state, 160, 48).splitlines()[0]
            if ok:
                assert "conns" in header, header
            else:
                assert f"{monitor} is another nats-server's monitoring" in header, header


def test_not_a_terminal_is_one_line_and_exit_2(fresh_server: NatsServer) -> None:
    env = {**os.environ, "KODO_NATS": fresh_server.url}
    proc = subprocess.run(
        [*KODO_BUS, "dashboard"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "stdout is not a terminal" in lines[0] and "events --all --follow" in lines[0]


async def test_unknown_via_is_refused_listing_the_registries(fresh_server: NatsServer) -> None:
    env = {**os.environ, "KODO_NATS": fresh_server.url}
    args = [*KODO_BUS, "dashboard", "--via", "nosuch", "--monitor", ""]
    term = Screen(args, 160, 48, env)
    try:
        await asyncio.to_thread(term.read_until, re.compile(rb"error: .*none does yet"), 0)
        assert await asyncio.to_thread(term.proc.wait, 15) == 2
    finally:
        term.close()

    async with Client(fresh_server.url) as kb:
        await ensure_bucket(kb.js, subjects.bucket_view("reg-one"))
    term = Screen(args, 160, 48, env)
    try:
        known = re.compile(
            rb"error: no registry 'nosuch' keeps a view on this bus .* known: reg-one"
        )
        await asyncio.to_thread(term.read_until, known, 0)
        assert await asyncio.to_thread(term.proc.wait, 15) == 2
        assert b"Traceback" not in term.data
    finally:
        term.close()
