"""`slowreader`: what one slow reader of `kodo.events.>` costs a flow that produces events.

The issue saw a raw client reading 40 KB/s bring a flow from ~17,000 events/s to ~3,000/s until
the server cut the reader: by default nats-server stalls a publisher while a subscriber's
outbound buffer is over half of `max_pending`, and a flow's events reach every subscriber of
their subject. The packaged config sets `no_fast_producer_stall: true`, so the slow reader loses
messages (and is cut as a slow consumer) instead. Target: a slow reader costs the flow at most
20 % of its event rate.

Per server config — the packaged one, then the same with `no_fast_producer_stall: false` for
comparison — this starts its own nats-server on free loopback ports (the setting is the
server's, so a bus given with `--nats` is not used), an in-process hybrid node serving
`bench-emit`, and runs the flow twice: alone, and with a raw socket client subscribed to
`kodo.events.>` reading `reader_rate` bytes/s through a small receive buffer (a thin link: the
kernel does not hold megabytes for it). A flow's rate is its events stored per second, from
its launch to its result (the worker stores every event before the result); `n` large enough
that the run outlasts what the publisher's queue and the reader's buffers absorb.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import tempfile
import threading
import time
from pathlib import Path

from .. import subjects
from ..client import Client
from ..config import FlowDecl, ServerSettings, ServiceSettings
from ..flow_ref import Flow
from ..flows import load_flows
from ..server import PACKAGED_CONFIG, NatsServer
from ..service import KodoService
from .common import TIMES, Floor, ScenarioResult, Stopwatch
from .env import BenchEnv, BenchError
from .flows import FLOW_MODULE
from .soak import fetch_json

TARGET_RATIO = 0.8
"""The issue's target: a slow reader costs a producing flow at most 20 % of its event rate."""
READER_RATE = 40_000
"""Bytes per second the slow reader takes (the issue's figure)."""
READER_RCVBUF = 64 * 1024
"""The reader's socket receive buffer: what a thin link holds in flight, not megabytes."""
CHUNK = 4096
READER_NAME = "kodo-bench-slow-reader"
_SETTING_RE = re.compile(r"^no_fast_producer_stall:[ \t]*true[ \t]*$", re.M)


class SlowReader(threading.Thread):
    """A raw NATS client (no library) subscribed to a subject, reading `rate` bytes/s.

    A thread with a blocking socket, so its pace does not depend on the event loop the node
    runs on. It parses just enough of the protocol to skip message bodies, count messages and
    answer the server's PINGs (a reader that never answers would be cut for that instead).
    """

    def __init__(self, host: str, port: int, subject: str, rate: float) -> None:
        super().__init__(name="kodo-bench-slow-reader", daemon=True)
        self.host, self.port, self.subject, self.rate = host, port, subject, rate
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.bytes_read = 0
        self.messages = 0
        self.error = ""
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a thread's: kept for the caller to raise
            self.failure = exc
        finally:
            self.ready.set()

    def _run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READER_RCVBUF)
        sock.settimeout(10)
        sock.connect((self.host, self.port))
        with sock:
            buf = bytearray()
            while b"\r\n" not in buf:  # INFO
                buf += sock.recv(CHUNK)
            del buf[: buf.index(b"\r\n") + 2]
            sock.sendall(
                b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1,'
                + f'"name":"{READER_NAME}"}}\r\n'.encode()
                + f"SUB {self.subject} 1\r\nPING\r\n".encode()
            )
            while b"PONG\r\n" not in buf:
                buf += sock.recv(CHUNK)
            del buf[: buf.index(b"PONG\r\n") + 6]
            self.ready.set()
            self._read(sock, buf)

    def _read(self, sock: socket.socket, buf: bytearray) -> None:
        start = time.monotonic()
        skip = 0
        sock.settimeout(1)
        while not self.stopping.is_set():
            ahead = start + self.bytes_read / self.rate - time.monotonic()
            if ahead > 0 and self.stopping.wait(ahead):  # the pace: `rate` bytes a second
                return
            try:
                chunk = sock.recv(CHUNK)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if not chunk:  # closed by the server (`_reader_fate` says why)
                return
            self.bytes_read += len(chunk)
            buf += chunk
            skip = self._parse(sock, buf, skip)

    def _parse(self, sock: socket.socket, buf: bytearray, skip: int) -> int:
        """Consume whole protocol lines and message bodies; the body bytes still to skip."""
        while True:
            if skip:
                take = min(skip, len(buf))
                del buf[:take]
                skip -= take
                if skip:
                    return skip
            end = buf.find(b"\r\n")
            if end < 0:
                return 0
            line = bytes(buf[:end])
            del buf[: end + 2]
            if line.startswith((b"MSG ", b"HMSG ")):
                self.messages += 1
                skip = int(line.rsplit(b" ", 1)[1]) + 2
            elif line == b"PING":
                sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                self.error = line.decode(errors="replace")


def stall_config(directory: Path) -> Path:
    """The packaged config with `no_fast_producer_stall: false` (the comparison)."""
    text = PACKAGED_CONFIG.read_text()
    if not _SETTING_RE.search(text):
        raise BenchError(f"{PACKAGED_CONFIG} does not set no_fast_producer_stall: true")
    path = directory / "stall" / "nats-server.conf"
    path.parent.mkdir()
    path.write_text(_SETTING_RE.sub("no_fast_producer_stall: false", text))
    return path


async def _emit_rate(flow: Flow, n: int) -> float:
    """Run `bench-emit` with `n` events: events stored per second, launch to result.

    Not the events' own timestamps: those say when the flow handed them to its publisher,
    whose queue takes megabytes before it holds the flow back; a stalled publisher shows in
    when the last event is stored, and the worker stores every event before the result."""
    watch = Stopwatch()
    ex = await flow.launch({"n": n})
    outcome = await ex.result(timeout=max(120.0, n / 200))
    elapsed = watch()
    if outcome != n:
        raise BenchError(f"slowreader: bench-emit returned {outcome!r}, expected {n}")
    return n / elapsed


async def _measure(  # noqa: PLR0917
    env: BenchEnv,
    result: ScenarioResult,
    label: str,
    config: Path,
    n: int,
    rate: float,
    *,
    targeted: bool,
) -> None:
    """Alone and with the slow reader, on a server of `config`; figures added to `result`."""
    store = config.parent / f"store-{len(result.figures)}"
    server = NatsServer(ServerSettings(port=0, http_port=0, store=store, config=config))
    await asyncio.to_thread(server.start)
    service: KodoService | None = None
    kb: Client | None = None
    reader: SlowReader | None = None
    try:
        assert server.port is not None and server.monitor_url is not None
        service_id = f"{env.service_id}-slow-{len(result.figures)}"
        settings = ServiceSettings(
            id=service_id,
            role="hybrid",
            nats=[server.url],
            max_running=2,
            actors=1,
            grace=5,
            log_level="WARNING",
        )
        service = KodoService(settings, load_flows([FlowDecl(module=FLOW_MODULE)]))
        await service.start()
        kb = Client(server.url, timeout=60)
        await kb.connect()
        flow = await kb.flow("bench-emit", via=service_id)
        await (await flow.launch({"n": 1000})).result(timeout=60)  # warm the actor and the path
        alone = await _emit_rate(flow, n)
        slow_before = (await asyncio.to_thread(fetch_json, f"{server.monitor_url}/varz"))[
            "slow_consumers"
        ]
        reader = SlowReader(server.host or "127.0.0.1", server.port, subjects.EVENTS_ALL, rate)
        reader.start()
        subscribed = await asyncio.to_thread(reader.ready.wait, 30)
        if not subscribed or reader.failure is not None:
            raise BenchError(f"slowreader: the reader did not subscribe: {reader.failure!r}")
        watch = Stopwatch()
        slowed = await _emit_rate(flow, n)
        seconds = watch()
        fate = await _reader_fate(server.monitor_url)
        reader.stopping.set()
        await asyncio.to_thread(reader.join, 10)
        slow = (await asyncio.to_thread(fetch_json, f"{server.monitor_url}/varz"))["slow_consumers"]
    finally:
        if reader is not None:
            reader.stopping.set()
            await asyncio.to_thread(reader.join, 10)
        if kb is not None:
            with contextlib.suppress(Exception):
                await kb.close()
        if service is not None:
            await asyncio.wait_for(service.stop(), 30)
        await asyncio.to_thread(server.stop)
    floor = Floor(name="same flow, no reader", value=alone, unit="/s")
    result.add(f"{label}: flow alone", alone, "/s", better="higher")
    result.add(f"{label}: with a slow reader", slowed, "/s", better="higher", floor=floor)
    result.add(
        f"{label}: with ÷ alone",
        slowed / alone,
        TIMES,
        better="higher",
        target=TARGET_RATIO if targeted else None,
    )
    result.notes.append(
        f"{label}: the reader read {reader.bytes_read / 1000:,.0f} KB "
        f"({reader.messages:,} messages) in {seconds:.1f} s; {fate}; server slow consumers "
        f"+{slow - slow_before}" + (f"; {reader.error}" if reader.error else "")
    )


async def _reader_fate(monitor: str) -> str:
    """What the server did with the reader, as its `/connz` says (the reader itself sees a cut
    only once it has read what its socket still holds)."""
    for state in ("closed", "open"):
        connz = await asyncio.to_thread(fetch_json, f"{monitor}/connz?state={state}&limit=1024")
        for conn in connz.get("connections") or []:
            if conn.get("name") != READER_NAME:
                continue
            if state == "closed":
                return f"cut by the server ({conn.get('reason', 'no reason given')})"
            pending = int(conn.get("pending_bytes", 0))
            return f"still connected, {pending / 2**20:.1f} MiB pending at the server"
    return "not found in /connz"


async def run(
    env: BenchEnv, *, n: int = 1_000_000, reader_rate: float = READER_RATE, compare: bool = True
) -> ScenarioResult:
    watch = Stopwatch()
    result = ScenarioResult(
        scenario="slowreader", params={"n": n, "reader_bytes_per_s": reader_rate}
    )
    await env.ray()
    with tempfile.TemporaryDirectory(prefix="kodo-bench-slowreader-") as tmp:
        packaged = Path(tmp) / "packaged" / PACKAGED_CONFIG.name
        packaged.parent.mkdir()
        packaged.write_text(PACKAGED_CONFIG.read_text())
        await _measure(env, result, "packaged config", packaged, n, reader_rate, targeted=True)
        if compare:
            config = stall_config(Path(tmp))
            await _measure(
                env, result, "no_fast_producer_stall off", config, n, reader_rate, targeted=False
            )
    if env.settings.nats:
        result.notes.append("measured on its own embedded servers: the setting is the server's")
    result.seconds = watch()
    return result
