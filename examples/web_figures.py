"""The web panel's two figures (issue 20), measured in a real headless Chromium.

1. Latency: an event shows in the page within 100 ms of its publication. Events are published
   straight onto JetStream (as a node's worker does) for an execution whose page is open; the
   page's DOM records `Date.now()` when each one is inserted (a MutationObserver added by this
   script), against the wall-clock time taken just before the publish. Same machine, same clock.
2. Idle cost: 10 open execution pages (10 tabs, each with its live event stream) cost the panel
   process < 5 % of a core: psutil's CPU time of `kodo-bus web` over 30 s while nothing happens.

Why a script here and not a `kodo-bus bench` scenario: it needs selenium and Chromium, which are
test dependencies, not the package's. Run from the repository root, with the test extra:

    .venv/bin/python examples/web_figures.py [--events 200] [--rate 20] [--pages 10] [--idle 30]

It starts its own nats-server (free port), `kodo-bus web` (free port) and the browser, and stops
each by its PID at the end. No node or Ray: the executions' records and events are written here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
from nats.js import JetStreamContext
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from kodo_bus.bus import connect, ensure_execution_storage, jetstream
from kodo_bus.config import ConnectSettings, ServerSettings, ServiceSettings
from kodo_bus.executions import create_record, event_message
from kodo_bus.models import Event, ExecutionRecord
from kodo_bus.server import NatsServer

REPO = Path(__file__).resolve().parent.parent
USER = "local"
"""The launcher of the executions written here: the panel's user on an open bus."""
PER_BROWSER = 5
"""Live pages per browser (Chromium allows 6 connections per host over HTTP/1.1)."""
OBSERVE = """
window.__arrivals = [];
const out = document.getElementById('out');
new MutationObserver((changes) => {
  const now = Date.now();
  for (const change of changes) for (const node of change.addedNodes)
    window.__arrivals.push([node.textContent, now]);
}).observe(out, {childList: true});
"""


def chromium() -> tuple[WebDriver, webdriver.ChromeService]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(service=service, options=options), service


async def executions(url: str, count: int) -> list[str]:
    """`count` running executions (records and an `inputs` event), as a node would write them."""
    nc = await connect(ConnectSettings(nats=[url], retry=0))
    try:
        js = jetstream(nc)
        kv = await ensure_execution_storage(js, max_age=ServiceSettings().events_max_age)
        ids = []
        for _ in range(count):
            execution = os.urandom(16).hex()
            now = time.time()
            await create_record(
                kv,
                ExecutionRecord(
                    execution=execution, flow="figures", node="figures-node", launcher=USER,
                    status="running", created=now, updated=now,
                ),
            )  # fmt: skip
            await publish(js, execution, 1, "inputs", {})
            ids.append(execution)
        return ids
    finally:
        await nc.close()


async def publish(js: JetStreamContext, execution: str, seq: int, kind: str, data: object) -> float:
    """Publish one event; the wall-clock time just before it was sent."""
    event = Event(
        execution=execution, seq=seq, ts=time.time(), kind=kind, node="figures-node",
        flow="figures", launcher=USER, data=data,
    )  # fmt: skip
    subject, body, headers = event_message(event)
    sent = time.time()
    await js.publish(subject, body, headers=headers)
    return sent


async def stream_events(url: str, execution: str, count: int, rate: float) -> dict[str, float]:
    nc = await connect(ConnectSettings(nats=[url], retry=0))
    try:
        js = jetstream(nc)
        sent = {}
        for i in range(count):
            seq = i + 2
            sent[f"e{seq}"] = await publish(js, execution, seq, "text", f"e{seq}")
            await asyncio.sleep(1 / rate)
        return sent
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement")
    args = parser.parse_args()
    print(uptime())
    store = Path(tempfile.mkdtemp(prefix="kodo-web-figures-"))
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=store, config=REPO / "nats-server.conf")
    ).start()
    web: subprocess.Popen[str] | None = None
    driver: WebDriver | None = None
    service: webdriver.ChromeService | None = None
    log = store / "web.log"
    try:
        ids = asyncio.run(executions(server.url, args.pages))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "KODO_USER": USER}
        for secret in ("KODO_PASSWORD", "KODO_CREDS", "KODO_NKEY"):
            env.pop(secret, None)
        with log.open("w") as sink:
            web = subprocess.Popen(
                [sys.executable, "-m", "kodo_bus", "web", "--nats", server.url, "--port", "0"],
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                env=env, start_new_session=True,
            )  # fmt: skip
        base = wait_url(log, web)
        driver, service = chromium()

        latency(driver, base, server.url, ids[0], events=args.events, rate=args.rate)
        idle_cost(driver, base, ids[: args.pages], web.pid, args.idle)
        print(uptime())
    finally:
        if driver is not None and service is not None:
            quit_browser(driver, service)
        if web is not None and web.poll() is None:
            web.terminate()
            try:
                web.wait(10)
            except subprocess.TimeoutExpired:
                web.kill()
                web.wait()
        server.stop()
        shutil.rmtree(store, ignore_errors=True)


def uptime() -> str:
    return (
        "uptime: "
        + subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    )


def latency(
    driver: WebDriver, base: str, nats: str, execution: str, *, events: int, rate: float
) -> None:
    """Publication to insertion in the page, per event, on one execution's page."""
    driver.get(f"{base}/executions/{execution}")
    wait(lambda: driver.find_element(By.ID, "conn").text == "live", "the page's stream")
    wait(lambda: driver.execute_script("return window.kodoPanel.events") >= 1, "inputs")
    driver.execute_script(OBSERVE)
    sent = asyncio.run(stream_events(nats, execution, events, rate))
    wait(
        lambda: len(driver.execute_script("return window.__arrivals")) >= events,
        "every event in the page",
    )
    arrivals = {text: at for text, at in driver.execute_script("return window.__arrivals")}
    delays = sorted(arrivals[k] - v * 1000 for k, v in sent.items())
    p50 = statistics.median(delays)
    p95 = delays[int(0.95 * (len(delays) - 1))]
    print(
        f"latency publish -> in the page, {len(delays)} events at {rate:g}/s: "
        f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {delays[-1]:.1f} ms "
        f"({'within' if p95 < 100 else 'ABOVE'} 100 ms at p95)"
    )


def idle_cost(first: WebDriver, base: str, ids: list[str], pid: int, seconds: float) -> None:
    """CPU of the panel process while every page is open and nothing happens.

    A browser keeps at most 6 HTTP/1.1 connections per host, and each live page holds one for
    its event stream: a 7th tab of the panel in one browser waits. So the pages are spread over
    browsers of `PER_BROWSER` tabs each (as 10 pages of a few viewers would be)."""
    browsers: list[tuple[WebDriver, webdriver.ChromeService]] = []
    try:
        drivers = [first]
        while len(drivers) * PER_BROWSER < len(ids):
            browsers.append(chromium())
            drivers.append(browsers[-1][0])
        for n, execution in enumerate(ids):
            driver = drivers[n // PER_BROWSER]
            if n % PER_BROWSER:
                driver.switch_to.new_window("tab")
            driver.get(f"{base}/executions/{execution}")
        opened = 0
        for driver in drivers:
            for handle in driver.window_handles:
                driver.switch_to.window(handle)
                wait(partial(is_live, driver), "a page's stream")
                opened += 1
        proc = psutil.Process(pid)
        time.sleep(2)  # let the opening settle
        before = proc.cpu_times()
        started = time.monotonic()
        time.sleep(seconds)
        after = proc.cpu_times()
        spent = (after.user - before.user) + (after.system - before.system)
        share = 100 * spent / (time.monotonic() - started)
        print(
            f"idle cost of {opened} open execution pages ({len(drivers)} browsers) over "
            f"{seconds:g} s: {share:.2f} % of a core ({spent * 1000:.0f} ms CPU) "
            f"({'below' if share < 5 else 'ABOVE'} 5 %)"
        )
    finally:
        for driver, service in browsers:
            quit_browser(driver, service)


def is_live(driver: WebDriver) -> bool:
    return bool(driver.find_element(By.ID, "conn").text == "live")


def quit_browser(driver: WebDriver, service: webdriver.ChromeService) -> None:
    """Quit, then the driver by its PID if it is still there."""
    try:
        driver.quit()
    finally:
        if service.process and service.process.poll() is None:
            service.process.kill()
            service.process.wait(10)


def wait_url(log: Path, web: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 30
    while True:
        for line in log.read_text().splitlines():
            if line.startswith("web panel on "):
                return line.removeprefix("web panel on ").strip()
        if web.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the panel did not start:\n{log.read_text()}")
        time.sleep(0.05)


def wait(check: Callable[[], Any], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if check():
                return
        except Exception:  # the element is not there yet
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {within:g} s")
        time.sleep(0.02)


if __name__ == "__main__":
    main()
