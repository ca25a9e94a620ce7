"""The web panel in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
selenium), against a real bus: a nats-server, a registry, a node serving `examples.hello`,
`examples.hitl` and tests/web_flows.py on the session's Ray, and `kodo-bus web` — each a
subprocess stopped by its PID.

It browses the flows, fills a form with a bad value then a good one, watches the execution's
events arrive, answers `hitl`'s question, cancels a flow, follows a chain to its next flow,
checks that hostile markdown/html ran no script, and refuses a POST without its CSRF token.
With KODO_WEB_SCREENSHOTS=docs/img each page's screenshot goes there (the README shows them);
without it none is written.

The browser is never optional in CI: without chromium the module fails, unless
KODO_WEB_TESTS=local says this is a developer's machine without it (then it skips).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from kodo_bus.client import Client
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO, Processes, _server

pytestmark = pytest.mark.ray
NODE = "web-node"
REGISTRY = "web-registry"
SHOTS_ENV = "KODO_WEB_SCREENSHOTS"
WAIT = 60.0
"""Seconds a page may take to show what a test waits for (the first launch starts Ray)."""


def _need(binary: str) -> str:
    found = shutil.which(binary)
    if found:
        return found
    if os.environ.get("KODO_WEB_TESTS") == "local":
        pytest.skip(f"{binary} not installed (KODO_WEB_TESTS=local)")
    pytest.fail(f"{binary} is missing: .ci/run installs Debian's chromium and chromium-driver")


def _logs(tmp: Path) -> str:
    return "".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp.glob("*.log"))


class Panel:
    def __init__(self, url: str, server: NatsServer) -> None:
        self.url = url
        self.server = server


def _start(procs: Processes, argv: list[str], log: Path, env: dict[str, str]) -> None:
    with log.open("w") as out:  # a file, so a chatty service never blocks on its pipe
        procs.procs.append(
            subprocess.Popen(
                argv,
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> Iterator[Panel]:
    tmp = tmp_path_factory.mktemp("web")
    server = _server(tmp / "nats").start()
    procs = Processes()
    try:
        config = tmp / "node.yaml"
        config.write_text(
            f"id: {NODE}\nrole: node\nflows:\n  - module: examples.hello\n"
            "  - module: examples.hitl\n  - module: tests.web_flows\n"
        )
        env = {
            **os.environ,
            "KODO_RAY_ADDRESS": ray_address,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
        common = [*KODO_BUS, "run", "--nats", server.url, "--heartbeat", "0.5"]
        _start(procs, [*common, "--role", "registry", "--id", REGISTRY], tmp / "reg.log", env)
        _start(procs, [*common, "--config", str(config)], tmp / "node.log", env)
        web_log = tmp / "web.log"
        _start(procs, [*KODO_BUS, "web", "--nats", server.url, "--port", "0"], web_log, env)
        url = _wait_for(lambda: _printed_url(web_log), procs, tmp, "the panel's URL")
        _wait_for(lambda: _flows_ready(server.url), procs, tmp, "the node's flows")
        yield Panel(url, server)
    finally:
        procs.stop_all()
        server.stop()


def _printed_url(log: Path) -> str | None:
    for line in log.read_text().splitlines():
        if line.startswith("web panel on "):
            return line.removeprefix("web panel on ").strip()
    return None


def _flows_ready(url: str) -> bool:
    async def look() -> bool:
        async with Client(url) as kb:
            names = {f.name for f in await kb.flows(via=REGISTRY)}
        return {"hello", "hitl", "greet", "xss", "linger", "trunk", "leaf"} <= names

    try:
        return asyncio.run(look())
    except Exception:
        return False


def _wait_for(probe: Callable[[], Any], procs: Processes, tmp: Path, what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        value = probe()
        if value:
            return value
        if any(p.poll() is not None for p in procs.procs):
            raise AssertionError(f"a service exited before {what}:\n{_logs(tmp)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {WAIT:g} s:\n{_logs(tmp)}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


@contextlib.contextmanager
def chromium() -> Iterator[WebDriver]:
    """A headless Chromium of its own (its own cookie jar); the driver stopped by its PID."""
    binary = _need("chromium")
    driver_path = _need("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1200,900")
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        pid = service.process.pid if service.process else None
        try:
            driver.quit()
        finally:
            if pid is not None and service.process and service.process.poll() is None:
                service.process.kill()  # the driver by its PID (quit stops the browser)
                service.process.wait(10)


# -- helpers ---------------------------------------------------------------------------------------
def until(browser: WebDriver, check: Callable[[], Any], what: str, within: float = WAIT) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            value = check()
        except WebDriverException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            state = browser.execute_script("return window.kodoPanel || null")
            raise AssertionError(f"{what}: not within {within:g} s (page state {state})")
        time.sleep(0.05)


def shots_dir() -> Path | None:
    """Where screenshots go: only when `KODO_WEB_SCREENSHOTS` names a directory (relative to the
    repository), e.g. docs/img to refresh the README's pictures; never by default, so a test run
    leaves the working tree clean."""
    given = os.environ.get(SHOTS_ENV, "").strip()
    return REPO / given if given else None


def shot(browser: WebDriver, name: str) -> None:
    where = shots_dir()
    if where is None:
        return
    where.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(where / f"web-{name}.png"))


def ended(browser: WebDriver) -> dict[str, Any]:
    state: dict[str, Any] = until(
        browser,
        lambda: browser.execute_script("return window.kodoPanel.ended && window.kodoPanel"),
        "the execution page's stream to end",
    )
    return state


def status(browser: WebDriver) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, "#status .badge").text)


def fill(browser: WebDriver, name: str, value: str) -> None:
    field = browser.find_element(By.NAME, f"in.{name}")
    field.clear()
    field.send_keys(value)


def launch_from_form(browser: WebDriver, panel: Panel, flow: str) -> str:
    browser.get(f"{panel.url}/flows/{NODE}/{flow}")
    browser.find_element(By.CSS_SELECTOR, "form.launch button[type=submit]").click()
    until(browser, lambda: "/executions/" in browser.current_url, f"{flow}'s execution page")
    return browser.current_url.rsplit("/", 1)[1]


# -- tests ---------------------------------------------------------------------------------------
def test_browse_launch_with_a_field_error_then_watch(panel: Panel, browser: WebDriver) -> None:
    browser.get(f"{panel.url}/?q=every+kind")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.flow")
    assert [r.get_attribute("data-flow") for r in rows] == [f"{NODE}/greet"]
    assert "v2.1" in rows[0].text and "QA" in rows[0].text and "online" in rows[0].text
    browser.get(f"{panel.url}/?tag=web&online=1")
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.flow")) == 5
    browser.get(panel.url)
    shot(browser, "flows")
    browser.find_element(By.LINK_TEXT, "greet").click()
    form = browser.find_element(By.CSS_SELECTOR, "form.launch")
    assert browser.find_element(By.NAME, "in.tone").tag_name == "select"
    assert browser.find_element(By.NAME, "in.loud").get_attribute("type") == "checkbox"
    assert browser.find_element(By.NAME, "in.address.zip").get_attribute("max") == "99999"
    assert "How many greetings" in form.text
    fill(browser, "name", "Ada")
    fill(browser, "times", "9")  # above le=5: the node's message, at the field
    fill(browser, "extras", "one\ntwo")
    browser.find_element(By.CSS_SELECTOR, "form.launch button[type=submit]").click()
    error = until(
        browser,
        lambda: browser.find_element(By.CSS_SELECTOR, '.field-error[data-field="times"]'),
        "the field error at 'times'",
    )
    assert "less than or equal to 5" in error.text
    assert browser.find_element(By.NAME, "in.name").get_attribute("value") == "Ada"
    shot(browser, "launch")
    fill(browser, "times", "3")
    browser.find_element(By.NAME, "in.loud").click()
    browser.find_element(By.CSS_SELECTOR, "form.launch button[type=submit]").click()
    until(browser, lambda: "/executions/" in browser.current_url, "the execution page")
    state = ended(browser)
    assert status(browser) == "finished"
    assert {"status", "progress", "log", "stdout", "markdown", "final"} <= set(state["kinds"])
    out = browser.find_element(By.ID, "out")
    assert out.find_element(By.TAG_NAME, "strong").text == "Ada"  # markdown rendered
    assert "HELLO" in out.text
    final = json.loads(browser.find_element(By.CSS_SELECTOR, "#final pre").text)
    assert final["times"] == 3 and final["loud"] is True and final["extras"] == ["one", "two"]
    assert final["address"] == {"city": "Berlin", "zip": 10115}
    browser.find_element(By.CSS_SELECTOR, "#console summary").click()
    lines = browser.find_element(By.CSS_SELECTOR, "#console .lines").text
    assert "greeting Ada" in lines and "printed for Ada" in lines
    shot(browser, "execution")


def test_hitl_question_answered_in_the_browser(panel: Panel, browser: WebDriver) -> None:
    launch_from_form(browser, panel, "hitl")
    question = until(
        browser, lambda: browser.find_element(By.CSS_SELECTOR, "form.question"), "the question"
    )
    assert "Approve 'Quarterly report'?" in question.text
    assert status(browser) == "awaiting"
    shot(browser, "hitl")
    browser.find_element(By.NAME, "in.approved").click()
    fill(browser, "comment", "ship it")
    question.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    ended(browser)
    assert status(browser) == "finished"
    final = json.loads(browser.find_element(By.CSS_SELECTOR, "#final pre").text)
    assert final == {"title": "Quarterly report", "approved": True, "comment": "ship it"}
    assert "approved" in browser.find_element(By.ID, "out").text


def test_cancel_from_the_page(panel: Panel, browser: WebDriver) -> None:
    launch_from_form(browser, panel, "linger")
    until(browser, lambda: "lingering" in browser.find_element(By.ID, "out").text, "output")
    browser.find_element(By.CSS_SELECTOR, "form.cancel button").click()
    ended(browser)
    assert status(browser) == "cancelled"
    assert not browser.find_elements(By.CSS_SELECTOR, "form.cancel")


def test_hostile_output_runs_no_script(panel: Panel, browser: WebDriver) -> None:
    launch_from_form(browser, panel, "xss")
    ended(browser)
    assert status(browser) == "finished"
    assert browser.execute_script("return typeof window.__pwned") == "undefined"
    out = browser.find_element(By.ID, "out")
    assert "kept" in out.text and "Title" in out.text
    assert "<script>window.__pwned = 1</script>" in out.text  # the text event, as text
    dangerous = browser.execute_script(
        "const out = document.getElementById('out');"
        "return [...out.querySelectorAll('script, iframe, svg, [onerror], [onload], [onclick],"
        " [style]')].length + [...out.querySelectorAll('a')].filter("
        "a => a.href.toLowerCase().replace(/\\s/g, '').startsWith('javascript')).length"
    )
    assert dangerous == 0
    handlers = "[onerror], [onload], [onclick], script:not([src='/static/panel.js'])"
    assert browser.execute_script(f'return document.querySelectorAll("{handlers}").length') == 0


def test_chain_tree_executions_and_nodes(panel: Panel, browser: WebDriver) -> None:
    trunk = launch_from_form(browser, panel, "trunk")
    ended(browser)
    link = until(
        browser,
        lambda: browser.find_element(By.CSS_SELECTOR, "#children a"),
        "the next flow's link",
    )
    assert link.text == "leaf"
    link.click()
    until(browser, lambda: "/executions/" in browser.current_url, "the child's page")
    ended(browser)  # a replay of a finished execution
    assert status(browser) == "finished"
    assert trunk[:12] in browser.find_element(By.CSS_SELECTOR, "p.meta").text
    assert json.loads(browser.find_element(By.CSS_SELECTOR, "#final pre").text) == "from trunk"
    browser.get(f"{panel.url}/executions?status=finished")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.execution")
    assert rows and all(r.get_attribute("data-status") == "finished" for r in rows)
    assert {"greet", "hitl", "trunk", "leaf"} <= {r.text.split()[1] for r in rows}
    browser.get(f"{panel.url}/executions?flow=linger")
    assert [
        r.get_attribute("data-status")
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.execution")
    ] == ["cancelled"]
    browser.get(f"{panel.url}/executions")
    shot(browser, "executions")
    browser.get(f"{panel.url}/nodes")
    node = browser.find_element(By.CSS_SELECTOR, f'tr.node[data-node="{NODE}"]')
    assert "online" in node.text
    shot(browser, "nodes")


def test_a_post_without_the_csrf_token_is_refused(panel: Panel) -> None:
    for path in (f"/flows/{NODE}/hello", "/executions/0123456789abcdef/cancel"):
        request = urllib.request.Request(panel.url + path, data=b"in.name=Eve", method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 403
    forged = urllib.request.Request(
        panel.url + f"/flows/{NODE}/hello",
        data=b"in.name=Eve&csrf_token=" + b"a" * 43,
        headers={"Cookie": "kodo_csrf=" + "b" * 43},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(forged, timeout=10)
    assert caught.value.code == 403
