"""`registry`: one registry process, many simulated nodes; how fast is its view complete, and
what does keeping it cost?

The registry runs as its own `python -m kodo_bus run --role registry` process so its CPU and
memory are its own (read with psutil). "Complete" is pushed, not polled: the registry persists
one KV key per node, so a core subscription on the bucket's subjects sees the view fill; one
`info` request then confirms the flow count. Measured:
- announce burst: a running, empty registry and every node announcing at once;
- restart with `--cache-reset`: from process start to complete, nodes re-announcing on the
  registry's `kodo.sync` (each after a random delay of up to 1 s, as real nodes do);
- restart with its cache: from process start until the restored view is served;
- heartbeat load: CPU share and RSS of the registry while every node beats once per period;
- a filtered flows query (p50/p99).
"""

from __future__ import annotations

import asyncio
import time
from asyncio.subprocess import Process

import psutil
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .. import subjects
from ..bus import request
from ..client import flows_page
from ..errors import NoResponders
from ..models import Empty, FlowsQuery, ServiceInfo
from ..node import SYNC_SPREAD
from . import floors
from .common import Floor, ScenarioResult, Stopwatch, cpu_seconds, percentile
from .env import BenchEnv, BenchError
from .simnodes import SimNodes

TARGET_COMPLETE_S = 5.0
TARGET_RESET_S = 10.0
TARGET_CPU_RATIO = 2.0
"""Registry CPU ÷ a bare nats-py listener of the same heartbeats, measured side by side."""
TARGET_RSS_MB = 600.0
TARGET_QUERY_MS = 5.0


class ViewWatch:
    """Counts the distinct nodes a registry has persisted (its KV bucket's subjects)."""

    def __init__(self, nc: NATS, registry: str) -> None:
        self.nc = nc
        self.subject = f"$KV.{subjects.bucket_view(registry)}.>"
        self.keys: set[str] = set()
        self.target = 0
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> ViewWatch:
        self._sub = await self.nc.subscribe(
            self.subject, cb=self._on_put, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sub.unsubscribe()

    def expect(self, count: int) -> None:
        self.target = count
        self._check()

    async def _on_put(self, msg: Msg) -> None:
        self.keys.add(msg.subject)
        self._check()

    def _check(self) -> None:
        if self.target and len(self.keys) >= self.target and not self.done.done():
            self.done.set_result(time.perf_counter())

    async def wait(self, timeout: float) -> float:
        """perf_counter() of the moment the last node was persisted."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.done), timeout)
        except TimeoutError:
            raise BenchError(
                f"registry view incomplete after {timeout:g} s: "
                f"{len(self.keys)} of {self.target} nodes"
            ) from None


async def info(nc: NATS, registry: str, within: float = 10.0) -> ServiceInfo:
    """The registry's info. A registry sends `kodo.sync` a moment before its request endpoints
    exist, so a fresh one may not answer yet: retried with backoff (a start-up handshake, like
    `bus.connect`), never beyond `within` seconds."""
    deadline = time.monotonic() + within
    delay = 0.005
    while True:
        try:
            return await request(nc, subjects.svc_info(registry), Empty(), ServiceInfo, timeout=10)
        except NoResponders:
            if time.monotonic() + delay > deadline:
                raise
            await asyncio.sleep(delay)
            delay *= 2


async def fill(
    env: BenchEnv, nc: NATS, registry: str, sims: SimNodes, *args: str
) -> tuple[Process, float]:
    """Start a registry with `args`, announce every node at once; (process, seconds to complete)."""
    proc = await env.run_service(registry, "registry", "--cache-reset", *args)
    async with ViewWatch(nc, registry) as watch:
        watch.expect(len(sims.ids))
        t0 = time.perf_counter()
        await sims.announce_all()
        done = await watch.wait(timeout=120)
    return proc, done - t0


async def run(  # noqa: PLR0915 (one measured sequence, read top to bottom)
    env: BenchEnv,
    *,
    nodes: int = 1000,
    flows: int = 20,
    heartbeat: float = 5.0,
    load_seconds: float = 10.0,
    queries: int = 300,
) -> ScenarioResult:
    watch = Stopwatch()
    total = nodes * flows
    result = ScenarioResult(
        scenario="registry",
        params={"nodes": nodes, "flows": flows, "heartbeat": heartbeat, "load_s": load_seconds},
    )
    await env.stop_service()  # the in-process hybrid would take in every catalog too
    nc = await env.nats()
    registry = f"bench-registry-{env.run_id}"
    sims = SimNodes(nc, f"sim-{env.run_id}", nodes, flows)
    rate = await floors.nats_pubsub_rate(
        nc, nodes, f"kodo-bench.{env.run_id}.catalogs", b"x" * sims.catalog_size
    )
    burst_floor = Floor(name=f"pub→sub {nodes} catalogs", value=nodes / rate, unit="s")
    args = ("--heartbeat", str(heartbeat))

    # 1. announce burst into a running, empty registry
    proc, burst = await fill(env, nc, registry, sims, *args)
    await _confirm(nc, registry, total)
    result.add(
        f"{total:,} flows complete (burst)", burst, "s", floor=burst_floor, target=TARGET_COMPLETE_S
    )
    await env.stop(proc)

    # 2. restart with --cache-reset: nodes re-announce on the registry's sync
    await sims.start()
    try:
        async with ViewWatch(nc, registry) as view:
            view.expect(nodes)
            t0 = time.perf_counter()
            proc = await env.run_service(registry, "registry", "--cache-reset", *args)
            started = time.perf_counter()
            done = await view.wait(timeout=120)
        await _confirm(nc, registry, total)
        start = await floors.python_start_seconds("import kodo_bus.cli, kodo_bus.service")
        result.add(
            f"{total:,} flows complete (--cache-reset)",
            done - t0,
            "s",
            floor=Floor(
                name=f"python start + {SYNC_SPREAD:g} s sync spread",
                value=start + SYNC_SPREAD,
                unit="s",
            ),
            target=TARGET_RESET_S,
        )
        result.notes.append(
            f"--cache-reset: process ready after {started - t0:.2f} s, then nodes answer "
            f"{subjects.SYNC} within 1 s (random spread)"
        )

        # 3. restart with its cache: the view is served as soon as the process is ready
        await env.stop(proc)
        t0 = time.perf_counter()
        proc = await env.run_service(registry, "registry", *args)
        loaded = time.perf_counter() - t0
        restored = await info(nc, registry)
        result.add(
            f"{restored.flows:,} flows restored (restart, cached)",
            loaded,
            "s",
            floor=Floor(name="python start + import kodo_bus", value=start, unit="s"),
            target=TARGET_COMPLETE_S,
        )

        if restored.flows < total:
            result.notes.append(
                f"restart from cache served {restored.flows:,} of {total:,} flows at first"
            )

        # 4. heartbeat load (next to a bare listener of the same messages, for the floor).
        # The restart's kodo.sync has every node re-announce its catalog within a second: the
        # registry decodes 10,000 catalogs (seconds of CPU) while the bare listener, started
        # later, skips them. Steady beating is measured once that is over.
        ps = psutil.Process(proc.pid)
        settle = await _settle(ps, sims)
        result.notes.append(
            f"before the heartbeat load: the registry took {settle:.2f} s of CPU for the "
            f"restart's {nodes:,} re-announced catalogs (not in the CPU figure)"
        )
        async with floors.BareListener(env.url, subjects.NODE_ALL) as bare:
            ps_bare = psutil.Process(bare.pid)
            cpu0, bare0 = cpu_seconds(ps), cpu_seconds(ps_bare)
            t0 = time.perf_counter()
            beats = await sims.heartbeats(heartbeat, load_seconds)
            elapsed = time.perf_counter() - t0
            cpu = (cpu_seconds(ps) - cpu0) / elapsed * 100
            bare_cpu = (cpu_seconds(ps_bare) - bare0) / elapsed * 100
        rss = ps.memory_info().rss / 2**20
        # psutil's CPU times tick in 10 ms: a short quick run can leave the bare listener at 0
        cpu_floor = Floor(name="bare nats-py listener", value=bare_cpu, unit="% core")
        if bare_cpu <= 0:
            result.notes.append("bare listener's CPU below the clock's resolution: no floor")
        result.add(
            f"CPU, {nodes:,} nodes beating every {heartbeat:g} s",
            cpu,
            "% core",
            floor=cpu_floor if bare_cpu > 0 else None,
        )
        if bare_cpu > 0:
            result.add("CPU ÷ bare listener", cpu / bare_cpu, "x", target=TARGET_CPU_RATIO)
        result.add(f"RSS holding {total:,} flows", rss, "MB", target=TARGET_RSS_MB)
        result.notes.append(f"{beats:,} heartbeats in {elapsed:.1f} s")

        # 5. a filtered query
        samples = await _queries(nc, registry, queries, f"flow{min(7, flows - 1)}")
        echo = await floors.nats_request_round_trip(nc, queries, f"kodo-bench.{env.run_id}.q")
        q_floor = floors.p50_floor("NATS req/reply", echo)
        ms = [s * 1000 for s in samples]
        result.add(
            "filtered flows query p50",
            percentile(ms, 50),
            "ms",
            floor=q_floor,
            target=TARGET_QUERY_MS,
        )
        result.add("filtered flows query p99", percentile(ms, 99), "ms", floor=q_floor)
        # the registry remembers what a text matched (clients repeat their filters): a text
        # never asked before scans every distinct value of the view
        fresh = [f"of {sims.ids[i * 7919 % nodes]}" for i in range(min(queries, nodes))]
        ms = [s * 1000 for s in await _fresh_queries(nc, registry, fresh)]
        result.add(
            "filtered flows query p50, a new text each",
            percentile(ms, 50),
            "ms",
            floor=q_floor,
            target=TARGET_QUERY_MS,
        )
    finally:
        await sims.stop()
    result.seconds = watch()
    return result


SETTLED_PCT = 5.0
"""The registry's CPU share, over `SETTLE_SLICE`, below which it is done with a burst."""
SETTLE_SLICE = 0.5
SETTLE_WITHIN = 30.0


async def _settle(ps: psutil.Process, sims: SimNodes) -> float:
    """Wait until the nodes answered the registry's sync and the registry is done with their
    catalogs (its CPU share back under `SETTLED_PCT`, or `SETTLE_WITHIN` seconds passed);
    returns the CPU seconds it spent meanwhile."""
    start = cpu_seconds(ps)
    await sims.answered()
    deadline = time.monotonic() + SETTLE_WITHIN
    before = cpu_seconds(ps)
    while time.monotonic() < deadline:
        await asyncio.sleep(SETTLE_SLICE)  # a measuring interval, not a wait for a condition
        now = cpu_seconds(ps)
        if (now - before) / SETTLE_SLICE * 100 < SETTLED_PCT:
            break
        before = now
    return cpu_seconds(ps) - start


async def _confirm(nc: NATS, registry: str, flows: int) -> None:
    got = await info(nc, registry)
    if got.flows < flows:
        raise BenchError(f"registry {registry} holds {got.flows} flows, expected {flows}")


async def _fresh_queries(nc: NATS, registry: str, texts: list[str]) -> list[float]:
    """Seconds per `flows` request like `_queries`, each with a text not asked before."""
    samples: list[float] = []
    for text in texts:
        query = FlowsQuery(q=text, tags=["bench"], limit=100)
        t0 = time.perf_counter()
        page = await flows_page(nc, registry, query, timeout=10)
        samples.append(time.perf_counter() - t0)
        if not page.items:
            raise BenchError(f"the flows query for {text!r} found nothing")
    return samples


async def _queries(nc: NATS, registry: str, n: int, text: str) -> list[float]:
    """Seconds per `flows` request filtered by text and tag (one page of 100), made and read by
    the SDK's own call (`Client.flows` makes this request for each page)."""
    query = FlowsQuery(q=text, tags=["bench"], limit=100)
    for _ in range(min(n, 10)):
        await flows_page(nc, registry, query, timeout=10)
    samples: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        page = await flows_page(nc, registry, query, timeout=10)
        samples.append(time.perf_counter() - t0)
    if not page.items:
        raise BenchError("the filtered flows query found nothing")
    return samples
