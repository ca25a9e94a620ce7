"""`soak`: no-op executions at full rate for N minutes against small store limits.

The question it answers is not "how fast" but "does it stay put": the issue's 15-minute soak
saw the JetStream store grow 1.3 MB/s without levelling and nats-server's RSS grow with it. Here
the events stream and the executions bucket get small limits (`--events-max-bytes`, default 64
MiB; `--records-max-bytes`, 16 MiB) so a run of a few minutes reaches them, and every few
seconds the embedded server's monitoring endpoints are read: `/jsz` (bytes and messages of both,
consumers), `/varz` (RSS, slow consumers) and `/connz` (connections). The verdict: neither store
went past its limit, no launch or execution failed and no client was cut as a slow consumer,
and consumers and connections did not grow (both are per process here, not per execution: a
count that grows with traffic is a leak).

Launches come from `WORKERS_PER_SLOT * max_running` coroutines, each launching one execution,
waiting for its end, and launching the next — enough to keep the node's every slot busy without
queueing without end. An end is a push on a core subscription to this launcher's `final` and
`error` events (as in `throughput`), never a consumer per execution: the soak must not itself
be what grows. Needs the embedded server (its monitoring endpoints, and limits nobody else's
data depends on): a bus given with `--nats` is refused.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import urllib.request
from typing import Any

from nats.aio.msg import Msg
from rich.table import Table

from .. import subjects
from ..config import FlowDecl, ServiceSettings
from ..errors import KodoError
from ..flows import load_flows
from ..service import KodoService
from .common import ScenarioResult, Stopwatch
from .env import BenchEnv, BenchError
from .flows import FLOW_MODULE

MiB = 2**20
EVENTS_MAX_BYTES = 64 * MiB
RECORDS_MAX_BYTES = 16 * MiB
"""Small limits, so minutes at full rate reach them (the deployed defaults are 4 GiB / 1 GiB);
the same ratio as the defaults' purpose: a record (~0.5 KB with its index entry) outlives the
events of its execution (~3.5 KB)."""
SAMPLE_EVERY = 5.0
WORKERS_PER_SLOT = 2
END_WITHIN = 60.0
"""Seconds a launched no-op execution may take to end before it counts as unfinished."""
PENDING_ENDS = 100_000
"""Bound of the end subscriptions' pending messages (a reader that falls this far behind is a
slow consumer, counted as an error, not a queue growing without end)."""

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.I)


def parse_bytes(text: str) -> int:
    """`64MiB`, `64M`, `1.5GiB` or a plain number of bytes (powers of 1024, as nats-server)."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (e.g. 64MiB, 1GiB, 1048576)")
    scale = 1024 ** " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * scale)


def fetch_json(url: str) -> dict[str, Any]:
    """One monitoring endpoint (blocking: called through `asyncio.to_thread`)."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        data: dict[str, Any] = json.loads(reply.read())
    return data


def _streams(jsz: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-stream state from `/jsz?streams=true`, by stream name."""
    found: dict[str, dict[str, Any]] = {}
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            found[stream["name"]] = stream.get("state") or {}
    return found


async def sample(monitor: str) -> dict[str, float]:
    """The server's store, memory, consumers and connections now."""
    jsz, varz, connz = await asyncio.gather(
        asyncio.to_thread(fetch_json, f"{monitor}/jsz?streams=true"),
        asyncio.to_thread(fetch_json, f"{monitor}/varz"),
        asyncio.to_thread(fetch_json, f"{monitor}/connz"),
    )
    streams = _streams(jsz)
    events = streams.get(subjects.STREAM_EVENTS, {})
    records = streams.get(subjects.kv_stream(subjects.BUCKET_EXECUTIONS), {})
    return {
        "events_bytes": float(events.get("bytes", 0)),
        "events_msgs": float(events.get("messages", 0)),
        "records_bytes": float(records.get("bytes", 0)),
        "records_msgs": float(records.get("messages", 0)),
        "store_bytes": float(jsz.get("storage", 0)),
        "consumers": float(jsz.get("consumers", 0)),
        "connections": float(connz.get("num_connections", 0)),
        "rss_bytes": float(varz.get("mem", 0)),
        "slow_consumers": float(varz.get("slow_consumers", 0)),
    }


class _Load:
    """Launches no-op executions until a deadline and counts how each one went."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.waiting: dict[str, asyncio.Future[str]] = {}
        """Bounded by `workers`: one entry per execution launched and not yet ended."""
        self.launched = 0
        self.final = 0
        self.failed = 0
        self.unfinished = 0
        self.launch_errors: dict[str, int] = {}
        """By error class (a handful of names at most)."""

    @property
    def ended(self) -> int:
        return self.final + self.failed

    @property
    def errors(self) -> int:
        return self.failed + self.unfinished + sum(self.launch_errors.values())

    async def on_end(self, msg: Msg) -> None:
        # Plain JSON (as in `throughput`): the model's own tests check the model.
        event = json.loads(msg.data)
        future = self.waiting.get(event["execution"])
        if future is not None and not future.done():
            future.set_result(event["kind"])

    async def worker(self, flow: Any, until: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            execution = secrets.token_hex(16)
            ended: asyncio.Future[str] = loop.create_future()
            self.waiting[execution] = ended  # before the launch: a no-op may end before its reply
            try:
                try:
                    await flow.launch({}, execution_id=execution)
                except KodoError as exc:
                    name = type(exc).__name__
                    self.launch_errors[name] = self.launch_errors.get(name, 0) + 1
                    continue
                self.launched += 1
                try:
                    kind = await asyncio.wait_for(ended, END_WITHIN)
                except TimeoutError:
                    self.unfinished += 1
                    continue
                if kind == "final":
                    self.final += 1
                else:
                    self.failed += 1
            finally:
                self.waiting.pop(execution, None)


async def run(
    env: BenchEnv,
    *,
    minutes: float = 10.0,
    events_max_bytes: int = EVENTS_MAX_BYTES,
    records_max_bytes: int = RECORDS_MAX_BYTES,
    sample_every: float = SAMPLE_EVERY,
) -> ScenarioResult:
    watch = Stopwatch()
    monitor = env.monitor_url
    if monitor is None:
        raise BenchError(
            "soak needs the embedded nats-server (its monitoring, and store limits no one "
            "else's data depends on): run it without --nats"
        )
    s = env.settings
    workers = WORKERS_PER_SLOT * s.max_running
    result = ScenarioResult(
        scenario="soak",
        params={
            "minutes": minutes,
            "events_max_bytes": events_max_bytes,
            "records_max_bytes": records_max_bytes,
            "sample_every": sample_every,
            "max_running": s.max_running,
            "launchers": workers,
        },
    )
    await env.ray()
    settings = ServiceSettings(
        id=f"{env.service_id}-soak",
        role="hybrid",
        nats=[env.url],
        max_running=s.max_running,
        actors=s.actors or s.ray_cpus,
        grace=5,
        log_level="WARNING",
        events_max_bytes=events_max_bytes,
        records_max_bytes=records_max_bytes,
    )
    service = KodoService(settings, load_flows([FlowDecl(module=FLOW_MODULE)]))
    await service.start()
    try:
        load = await _soak(env, result, settings.id, monitor, minutes, workers, sample_every)
    finally:
        await asyncio.wait_for(service.stop(), 30)
    _verdict(result, load, events_max_bytes, records_max_bytes)
    result.seconds = watch()
    return result


async def _soak(  # noqa: PLR0917
    env: BenchEnv,
    result: ScenarioResult,
    via: str,
    monitor: str,
    minutes: float,
    workers: int,
    sample_every: float,
) -> _Load:
    kb = await env.client()
    flow = await kb.flow("bench-noop", via=via)
    warm = await asyncio.gather(*(flow.launch({}) for _ in range(10)))
    await asyncio.gather(*(ex.result(timeout=60) for ex in warm))
    load = _Load(workers)
    subs = [
        await kb.nc.subscribe(
            subjects.events(kb.user, "*", kind),
            cb=load.on_end,
            pending_msgs_limit=PENDING_ENDS,
            pending_bytes_limit=-1,
        )
        for kind in ("final", "error")
    ]
    await kb.nc.flush()
    loop = asyncio.get_running_loop()
    start = loop.time()
    until = start + minutes * 60
    first = await sample(monitor)
    result.samples.append({"t": 0.0, "executions": 0.0, "rate": 0.0, **first})
    tasks = [asyncio.create_task(load.worker(flow, until)) for _ in range(workers)]
    try:
        while not all(task.done() for task in tasks):
            remaining = until - loop.time()  # a sample at the deadline, then while they drain
            await asyncio.wait(
                tasks, timeout=remaining if 0.1 < remaining < sample_every else sample_every
            )
            now = loop.time() - start
            if len(result.samples) > 1 and now - result.samples[-1]["t"] < 1.0:
                result.samples.pop()  # the drain's sample replaces one just taken
            last = result.samples[-1]
            rate = (load.ended - last["executions"]) / max(1e-9, now - last["t"])
            point = await sample(monitor)
            result.samples.append(
                {"t": now, "executions": float(load.ended), "rate": rate, **point}
            )
        for task in tasks:
            task.result()  # a worker that failed otherwise than counted fails the run
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sub in subs:
            await sub.unsubscribe()
    return load


def _verdict(
    result: ScenarioResult, load: _Load, events_max_bytes: int, records_max_bytes: int
) -> None:
    samples = result.samples
    first, last = samples[0], samples[-1]
    elapsed = last["t"] or 1.0
    peak = {k: max(p[k] for p in samples) for k in ("events_bytes", "records_bytes", "rss_bytes")}
    slow = last["slow_consumers"] - first["slow_consumers"]
    errors = load.errors + int(slow)
    result.add("executions/s (mean, all final)", load.final / elapsed, "/s", better="higher")
    result.add(
        "events stream, most bytes",
        peak["events_bytes"] / MiB,
        "MiB",
        target=events_max_bytes / MiB if events_max_bytes >= 0 else None,
    )
    result.add(
        "records bucket, most bytes",
        peak["records_bytes"] / MiB,
        "MiB",
        target=records_max_bytes / MiB if records_max_bytes >= 0 else None,
    )
    result.add("errors (launch, error, unfinished, slow consumers)", errors, "", target=0)
    result.add(
        "JetStream consumers, end - start", last["consumers"] - first["consumers"], "", target=0
    )
    result.add("connections, end - start", last["connections"] - first["connections"], "", target=0)
    result.add("nats-server RSS at start", first["rss_bytes"] / MiB, "MiB")
    result.add("nats-server RSS at end", last["rss_bytes"] / MiB, "MiB")
    result.add("nats-server RSS, most", peak["rss_bytes"] / MiB, "MiB")
    third = [p for p in samples if p["t"] >= elapsed * 2 / 3]
    if len(third) >= 2 and third[-1]["t"] > third[0]["t"]:
        minutes = (third[-1]["t"] - third[0]["t"]) / 60
        for key, name in (("store_bytes", "store"), ("rss_bytes", "nats-server RSS")):
            growth = (third[-1][key] - third[0][key]) / MiB
            result.add(f"{name} growth over the last third", growth / minutes, "MiB/min")
    within = all(f.met is not False for f in result.figures if f.target is not None)
    result.params["verdict"] = "pass" if within else "fail"
    reached = events_max_bytes >= 0 and peak["events_bytes"] >= 0.9 * events_max_bytes
    result.notes.append(
        f"{load.launched:,} launched, {load.final:,} final, {load.failed} error, "
        f"{load.unfinished} unfinished, launch errors {load.launch_errors or 0}, "
        f"slow consumers {int(slow)}"
    )
    result.notes.append(
        "the events stream reached its limit and levelled there"
        if reached
        else "the events stream did not reach its limit in this run (too short to level)"
    )
    result.notes.append(
        f"verdict: {'PASS' if within else 'FAIL'} — stores within their limits, no errors, "
        "consumers and connections did not grow"
        if within
        else "verdict: FAIL — see the figures marked ✗"
    )


COLUMNS: tuple[tuple[str, str, float, str], ...] = (
    ("t", "t s", 1, "{:.0f}"),
    ("executions", "execs", 1, "{:,.0f}"),
    ("rate", "exec/s", 1, "{:,.0f}"),
    ("events_bytes", "events MiB", MiB, "{:.1f}"),
    ("events_msgs", "event msgs", 1, "{:,.0f}"),
    ("records_bytes", "records MiB", MiB, "{:.1f}"),
    ("records_msgs", "record msgs", 1, "{:,.0f}"),
    ("store_bytes", "store MiB", MiB, "{:.1f}"),
    ("consumers", "cons", 1, "{:.0f}"),
    ("connections", "conns", 1, "{:.0f}"),
    ("rss_bytes", "RSS MiB", MiB, "{:.0f}"),
    ("slow_consumers", "slow", 1, "{:.0f}"),
)
"""The table over time: key of a sample, column title, divisor, format. `cons`: JetStream
consumers; `conns`: client connections; `RSS`: nats-server's; `slow`: slow consumers so far."""


def samples_table(result: ScenarioResult) -> Table:
    """The soak's samples as a table over time."""
    t = Table(title=f"kodo-bus bench {result.scenario}: over time", header_style="bold")
    for _, title, _, _ in COLUMNS:
        t.add_column(title, justify="right")
    for point in result.samples:
        t.add_row(*(form.format(point.get(key, 0.0) / div) for key, _, div, form in COLUMNS))
    return t


def samples_markdown(result: ScenarioResult) -> str:
    """The same table in Markdown (for a report or the README)."""
    lines = [
        "| " + " | ".join(title for _, title, _, _ in COLUMNS) + " |",
        "|" + "---:|" * len(COLUMNS),
    ]
    for point in result.samples:
        cells = (form.format(point.get(key, 0.0) / div) for key, _, div, form in COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
