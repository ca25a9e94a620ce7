"""`federation`: independent buses joined by `connect`, in a ring (a cycle) and in a chain.

Each bus is a nats-server of its own (free loopback ports, temporary store) with one registry
process (`python -m kodo_bus run --role registry --connect ...`) and simulated nodes. Ring:
registry i publishes on bus i+1 (the last on the first): every view goes around the cycle and
must stop where it started. Chain: registry i publishes on both neighbours. Measured, per
topology:
- the whole federation's flows listed on the last bus after every node announced at once;
- a new flow on bus 1 (a node's new catalog revision) persisted by the last bus's registry
  (pushed: a core subscription on its view bucket's key), next to the same number of bare NATS
  publish→subscribe hops;
- view exchange bytes per heartbeat interval (every `kodo.registry.*.view` message on every bus)
  in steady state with 0, 10 and 100 nodes changing per interval: proportional to the changes;
- the largest view message seen, and whether anything circulates (messages in a quiet interval
  beyond one beat per stream);
- how long the federation took to settle after the burst (no `full` part on any bus for one
  whole heartbeat interval), and how many readers each server cut as slow consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
from asyncio.subprocess import Process
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgpack
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .. import subjects
from ..codec import encode
from ..config import ServerSettings
from ..dashboard.feeds import fetch_varz
from ..errors import KodoTimeout, NoResponders
from ..peers import CHUNK_BYTES
from ..server import NatsServer
from .common import Floor, ScenarioResult, Stopwatch
from .env import BenchEnv, BenchError, stop_process
from .registry import info
from .simnodes import SimNodes, catalog

TARGET_NEW_FLOW_S = 2.0
TARGET_MAX_MESSAGE = 1024 * 1024
SETTLE_WITHIN = 120.0
"""Seconds the federation gets to settle after the burst before the steady state is measured
anyway (and the note says it had not settled)."""


class _Tap:
    """Bytes and count of every view message on one bus, and of each kind."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.biggest = 0
        self.kinds: Counter[str] = Counter()

    async def on_msg(self, msg: Msg) -> None:
        self.count += 1
        self.bytes += len(msg.data)
        self.biggest = max(self.biggest, len(msg.data))
        self.kinds[_kind(msg.data)] += 1


_KINDS = ("full", "changes", "beat", "ask")


def _kind(data: bytes) -> str:
    """A view message's kind, from its bytes (the tap shares the loop with the simulated
    nodes: decoding every message here made their heartbeats late)."""
    at = data.rfind(b"\xa4kind")  # the head's fields come after the entries
    for kind in _KINDS:
        if data.startswith(msgpack.packb(kind), at + 5):
            return kind
    return "?"


_CLIENT = re.compile(r'"([^"]*)" - Slow Consumer Detected(: [^:(]*)?')
"""The client's `version:lang:name` in nats-server's log line of a slow-consumer cut."""


def _who(line: str) -> str:
    """`name: reason` of the client cut in a log line, '?' when the line says neither."""
    m = _CLIENT.search(line)
    return "?" if m is None else m.group(1).rsplit(":", 1)[-1] + (m.group(2) or "")


class _Federation:
    """Buses, registries and simulated nodes of one topology; stopped by PID at the end."""

    def __init__(self, env: BenchEnv, name: str, buses: int, heartbeat: float) -> None:
        self.env = env
        self.name = name
        self.count = buses
        self.heartbeat = heartbeat
        self.tmp = Path(tempfile.mkdtemp(prefix=f"kodo-bench-{name}-"))
        self.servers: list[NatsServer] = []
        self.ncs: list[NATS] = []
        self.tap_ncs: list[NATS] = []
        self.taps: list[_Tap] = []
        self.procs: list[Process] = []
        self.ids = [f"fed-{name}-{env.run_id}-{i}" for i in range(buses)]

    async def __aenter__(self) -> _Federation:
        try:
            for i in range(self.count):
                config = ServerSettings(port=0, http_port=0, store=self.tmp / f"nats{i}")
                server = NatsServer(config)
                self.servers.append(server)
                await asyncio.to_thread(server.start)
                nc = await nats.connect(server.url)
                self.ncs.append(nc)
                # the tap reads every view message of the bus (tens of MB in a burst): on a
                # connection of its own, so if the server cuts it as a slow reader the
                # simulated nodes on `nc` keep beating
                tap_nc = await nats.connect(server.url)
                self.tap_ncs.append(tap_nc)
                tap = _Tap()
                await tap_nc.subscribe(
                    subjects.REGISTRY_VIEW_ALL,
                    cb=tap.on_msg,
                    pending_msgs_limit=-1,
                    pending_bytes_limit=-1,
                )
                self.taps.append(tap)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for proc in self.procs:
            await stop_process(proc)
        self.procs.clear()
        for nc in [*self.ncs, *self.tap_ncs]:
            with contextlib.suppress(Exception):
                await nc.close()
        for server in self.servers:
            await asyncio.to_thread(server.stop)
        await asyncio.to_thread(shutil.rmtree, self.tmp, ignore_errors=True)

    async def registry(self, i: int, links: list[int]) -> None:
        cmd = [sys.executable, "-m", "kodo_bus", "run", "--id", self.ids[i], "--role", "registry"]
        cmd += ["--nats", self.servers[i].url, "--log-level", "WARNING", "--cache-reset"]
        cmd += ["--heartbeat", str(self.heartbeat), "--log-file", str(self.tmp / f"{i}.log")]
        for j in links:
            cmd += ["--connect", self.servers[j].url]
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.procs.append(proc)
        await info(self.ncs[i], self.ids[i], within=60)

    def traffic(self) -> tuple[int, int]:
        return sum(t.count for t in self.taps), sum(t.bytes for t in self.taps)

    def kinds(self) -> Counter[str]:
        return sum((t.kinds for t in self.taps), Counter())

    async def slow_consumers(self) -> list[int]:
        """Each server's count of connections it cut as slow consumers (`/varz`); -1 when its
        monitoring does not answer."""
        counts = []
        for server in self.servers:
            monitor = server.monitor_url
            try:
                varz = await asyncio.to_thread(fetch_varz, monitor) if monitor else {}
                counts.append(int(varz.get("slow_consumers", -1)))
            except (OSError, ValueError):
                counts.append(-1)
        return counts

    def cut(self) -> list[list[str]]:
        """Per bus, who its server cut as a slow consumer and why (the client names in its log)."""
        return [
            [_who(line) for line in server.log_tail() if "Slow Consumer" in line]
            for server in self.servers
        ]


async def _flows_on(nc: NATS, registry: str) -> int:
    """Flows `registry` lists; 0 while it is too busy taking in a burst to answer in time, or
    reconnecting (a registry cut by its server as a slow reader comes back; the figures show
    what that cost)."""
    try:
        return (await info(nc, registry)).flows
    except (KodoTimeout, NoResponders):
        return 0


async def _until(probe: Callable[[], Awaitable[bool]], what: str, timeout: float) -> float:
    """Poll `probe` every 0.1 s until it holds; seconds it took."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        if await probe():
            return time.perf_counter() - t0
        await asyncio.sleep(0.1)
    raise BenchError(f"{what} not reached within {timeout:g} s")


async def _topology(
    env: BenchEnv,
    result: ScenarioResult,
    name: str,
    links: dict[int, list[int]],
    *,
    buses: int,
    nodes: int,
    flows: int,
    heartbeat: float,
) -> None:
    async with _Federation(env, name, buses, heartbeat) as fed:
        for i in range(buses):
            await fed.registry(i, links[i])
        sims = [
            SimNodes(nc, f"{name}{i}-{env.run_id}", nodes, flows) for i, nc in enumerate(fed.ncs)
        ]

        # 1. every node of every bus announces at once: the last bus lists them all
        t0 = time.perf_counter()
        for sim in sims:
            await sim.announce_all()
        beats = [asyncio.create_task(sim.heartbeats(heartbeat, 3600)) for sim in sims]
        try:
            await _measure(fed, result, sims, links, t0, nodes=nodes, flows=flows)
            cuts = await fed.slow_consumers()
            total_cuts = sum(max(c, 0) for c in cuts)
            result.add(f"{name}: slow-consumer cuts, all buses", total_cuts, "cuts")
            result.notes.append(
                f"{name}: slow consumers cut per bus (/varz): {cuts}; who: {fed.cut()}"
            )
        finally:
            for task in beats:
                task.cancel()
            await asyncio.gather(*beats, return_exceptions=True)


async def _measure(
    fed: _Federation,
    result: ScenarioResult,
    sims: list[SimNodes],
    links: dict[int, list[int]],
    t0: float,
    *,
    nodes: int,
    flows: int,
) -> None:
    """Every figure of one topology, its nodes announced at `t0` and beating meanwhile."""
    name, heartbeat, buses = fed.name, fed.heartbeat, fed.count
    total = buses * nodes * flows
    last_nc, last = fed.ncs[-1], fed.ids[-1]

    async def complete() -> bool:
        return all(
            [await _flows_on(nc, rid) >= total for nc, rid in zip(fed.ncs, fed.ids, strict=True)]
        )

    await _until(complete, f"{name}: {total:,} flows on every bus", timeout=600)
    result.add(
        f"{name}: {total:,} flows listed on all {buses} buses (burst)",
        time.perf_counter() - t0,
        "s",
    )
    # steady state means steady: no `full` part on any bus for one whole heartbeat interval
    settle = await _settle(fed)
    result.add(f"{name}: settled after the burst (no full for {heartbeat:g} s)", settle, "s")
    if settle >= SETTLE_WITHIN:
        result.notes.append(f"{name}: NOT settled within {SETTLE_WITHIN:g} s: measured anyway")

    # 2. a new flow on bus 1, persisted on the last bus
    node = sims[0].ids[0]
    fresh = catalog(node, flows + 1).model_copy(update={"revision": 2})
    key = subjects.kv_subject(subjects.bucket_view(last), f"node.{node}")
    seen: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def on_put(msg: Msg) -> None:
        if not seen.done():
            seen.set_result(time.perf_counter())

    sub = await last_nc.subscribe(key, cb=on_put)
    await last_nc.flush()
    body, headers = encode(fresh)
    t0 = time.perf_counter()
    await fed.ncs[0].publish(subjects.node_catalog(node), body, headers=headers)
    await fed.ncs[0].flush()
    try:
        arrived = await asyncio.wait_for(seen, 30)
    except TimeoutError:
        raise BenchError(f"{name}: the new flow never reached the last bus") from None
    finally:
        await sub.unsubscribe()
    hops = await _relay_floor(fed.ncs, buses - 1)
    result.add(
        f"{name}: new flow on bus 1 → listed on bus {buses}",
        arrived - t0,
        "s",
        floor=Floor(name=f"bare pub→sub relay, {buses - 1} buses", value=hops, unit="s"),
        target=TARGET_NEW_FLOW_S,
    )
    await _until(
        lambda: _more(last_nc, last, total),
        f"{name}: the new flow counted on the last bus",
        timeout=30,
    )

    # 3. steady state: bytes per heartbeat interval, by nodes changed per interval
    await _steady(fed, result, sims, links, nodes=nodes, flows=flows)
    biggest = max(t.biggest for t in fed.taps)
    result.add(
        f"{name}: largest view message",
        biggest / 1024,
        "KB",
        target=TARGET_MAX_MESSAGE / 1024,
    )


async def _steady(
    fed: _Federation,
    result: ScenarioResult,
    sims: list[SimNodes],
    links: dict[int, list[int]],
    *,
    nodes: int,
    flows: int,
) -> None:
    """View bytes per heartbeat interval with 0, 10 and 100 nodes changing per interval."""
    name, heartbeat, buses = fed.name, fed.heartbeat, fed.count
    revision = 2
    for wanted in (0, 10, 100):
        changed = min(wanted, nodes - 1)
        count0, bytes0 = fed.traffic()
        kinds0 = fed.kinds()
        intervals = 2
        for _ in range(intervals):
            revision += 1
            for k in range(changed):
                nc = fed.ncs[k % buses]
                n = sims[k % buses].ids[k // buses + 1]
                body, headers = encode(catalog(n, flows).model_copy(update={"revision": revision}))
                await nc.publish(subjects.node_catalog(n), body, headers=headers)
            for nc in fed.ncs:
                await nc.flush()
            await asyncio.sleep(heartbeat)  # one interval: the window measured
        count1, bytes1 = fed.traffic()
        result.add(
            f"{name}: view bytes per {heartbeat:g} s interval, {changed} nodes changing",
            (bytes1 - bytes0) / intervals / 1024,
            "KB",
        )
        kinds = ", ".join(f"{k} {n / intervals:g}" for k, n in (fed.kinds() - kinds0).items())
        if changed == 0:
            streams = sum(len(v) for v in links.values())
            msgs = (count1 - count0) / intervals
            looping = msgs > 2 * streams + 2
            result.add(
                f"{name}: view messages per quiet {heartbeat:g} s interval ({streams} streams)",
                msgs,
                "msgs",
                target=2 * streams + 2,
            )
            result.notes.append(
                f"{name}: quiet interval: {msgs:.0f} view messages for {streams} streams "
                f"({'LOOP or churn' if looping else 'no loop'}; {kinds})"
            )
        else:
            result.notes.append(f"{name}: {changed} nodes changing: messages per interval {kinds}")


async def _settle(fed: _Federation, within: float = SETTLE_WITHIN) -> float:
    """Seconds until one whole heartbeat interval passed with no `full` part on any bus (the
    interval included); at `within` the measuring goes on, with a note that it had not
    settled."""
    t0 = time.perf_counter()
    while True:
        fulls = fed.kinds()["full"]
        await asyncio.sleep(fed.heartbeat)  # one window observed, not a settling guess
        if fed.kinds()["full"] == fulls:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 >= within:
            return time.perf_counter() - t0


async def _more(nc: NATS, registry: str, total: int) -> bool:
    return await _flows_on(nc, registry) > total


async def _relay_floor(ncs: list[NATS], hops: int) -> float:
    """One small message relayed bus to bus by bare nats-py callbacks across `hops` buses."""
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    subs = []
    base = "kodo-bench.relay"
    for i in range(hops):
        target = ncs[i + 1]

        async def relay(msg: Msg, i: int = i, target: NATS = target) -> None:
            if i + 1 == hops:
                if not done.done():
                    done.set_result(time.perf_counter())
                return
            await target.publish(f"{base}.{i + 1}", msg.data)

        subs.append(await ncs[i].subscribe(f"{base}.{i}", cb=relay))
    for nc in ncs:
        await nc.flush()
    t0 = time.perf_counter()
    await ncs[0].publish(f"{base}.0", b"x" * 512)
    await ncs[0].flush()
    try:
        t1 = await asyncio.wait_for(done, 10)
    finally:
        for sub in subs:
            await sub.unsubscribe()
    return t1 - t0


async def run(
    env: BenchEnv, *, buses: int = 5, nodes: int = 2000, flows: int = 20, heartbeat: float = 5.0
) -> ScenarioResult:
    watch = Stopwatch()
    result = ScenarioResult(
        scenario="federation",
        params={"buses": buses, "nodes_per_bus": nodes, "flows": flows, "heartbeat": heartbeat},
    )
    ring = {i: [(i + 1) % buses] for i in range(buses)}
    chain = {i: [j for j in (i - 1, i + 1) if 0 <= j < buses] for i in range(buses)}
    for name, links in (("ring", ring), ("chain", chain)):
        await _topology(
            env, result, name, links, buses=buses, nodes=nodes, flows=flows, heartbeat=heartbeat
        )
    result.notes.append(
        f"view messages are cut at {CHUNK_BYTES // 1024} KB; ring: registry i publishes on bus "
        "i+1 (a cycle); chain: on both neighbours"
    )
    result.seconds = watch()
    return result
