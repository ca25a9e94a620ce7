"""The web panel in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
selenium), against a real bus: a nats-server, a registry, a node (two processes of one node
id: two replicas) serving `examples.hello`, `examples.hitl`, `examples.files.chart` and
tests/web_flows.py on the session's Ray, and `kodo-bus web` — each a subprocess stopped by its
PID.

It browses the flows, fills a form with a bad value then a good one, watches the execution's
events arrive, answers `hitl`'s question, cancels a flow, follows a chain to its next flow,
checks that hostile markdown/html ran no script, and refuses a POST without its CSRF token;
launches `chart` with a file from the form and downloads its output through the panel, filters
executions by time, reads the nodes' load and replicas, and checks every page at a phone's
width.
With KODO_WEB_SCREENSHOTS=docs/img each page's screenshot goes there (the README shows them);
without it none is written.

The browser is never optional in CI: without chromium the module fails, unless
KODO_WEB_TESTS=local says this is a developer's machine without it (then it skips).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from examples.files.chart import bars
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
    def __init__(
        self,
        url: str,
        server: NatsServer,
        procs: Processes | None = None,
        tmp: Path | None = None,
    ) -> None:
        self.url = url
        self.server = server
        self.procs = procs
        self.tmp = tmp
        self.small: str | None = None


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
            "  - module: examples.files.chart\n"
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
        # a second process of the same node id: the Nodes page shows it as 2 replicas
        _start(procs, [*common, "--config", str(config)], tmp / "node-replica.log", env)
        web_log = tmp / "web.log"
        _start(procs, [*KODO_BUS, "web", "--nats", server.url, "--port", "0"], web_log, env)
        url = _wait_for(lambda: _printed_url(web_log), procs, tmp, "the panel's URL")
        _wait_for(lambda: _flows_ready(server.url), procs, tmp, "the node's flows")
        yield Panel(url, server, procs, tmp)
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
        return {"hello", "hitl", "greet", "xss", "linger", "trunk", "leaf", "chart"} <= names

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
            shown = browser.execute_script("return document.body ? document.body.innerText : ''")
            raise AssertionError(
                f"{what}: not within {within:g} s (page state {state}; {browser.current_url} "
                f"shows: {str(shown)[:900]!r})"
            )
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


# -- files, the time filter, the nodes' load, a phone's width --------------------------------------
CSV = "label,value\nalpha,3\nbeta,5\n"


def fetch_bytes(browser: WebDriver, href: str) -> tuple[int, bytes]:
    """GET `href` in the page (its cookies, its origin): the status and the body's bytes."""
    got = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {credentials: 'same-origin'}).then(async r => {"
        "  const bytes = new Uint8Array(await r.arrayBuffer());"
        "  let bin = ''; for (const b of bytes) bin += String.fromCharCode(b);"
        "  done([r.status, btoa(bin)]);"
        "}, e => done([-1, '']));",
        href,
    )
    return int(got[0]), base64.b64decode(got[1])


def test_a_file_flow_from_the_form_and_its_output_downloaded(
    panel: Panel, browser: WebDriver, tmp_path: Path
) -> None:
    source = tmp_path / "small.csv"
    source.write_text(CSV)
    browser.get(f"{panel.url}/flows/{NODE}/chart")
    form = browser.find_element(By.CSS_SELECTOR, "form.launch")
    assert form.get_attribute("enctype") == "multipart/form-data"
    picker = browser.find_element(By.NAME, "in.data")
    assert picker.get_attribute("type") == "file"
    browser.find_element(By.CSS_SELECTOR, "form.launch button[type=submit]").click()
    error = until(  # no file chosen: the node's rule, at the field, and nothing launched
        browser,
        lambda: browser.find_element(By.CSS_SELECTOR, '.field-error[data-field="data"]'),
        "the field error at 'data'",
    )
    assert "required" in error.text.lower()
    browser.find_element(By.NAME, "in.data").send_keys(str(source))
    fill(browser, "title", "Web chart")
    browser.find_element(By.CSS_SELECTOR, "form.launch button[type=submit]").click()
    until(browser, lambda: "/executions/" in browser.current_url, "the execution page")
    ended(browser)
    assert status(browser) == "finished"
    assert "2 rows read from small.csv" in browser.find_element(By.ID, "out").text
    expected = bars([("alpha", 3.0), ("beta", 5.0)], "Web chart").encode()
    item = browser.find_element(By.CSS_SELECTOR, '#files li.file[data-name="chart.svg"]')
    digest = hashlib.sha256(expected).hexdigest()
    assert item.get_attribute("data-digest") == digest
    assert f"{len(expected):,} bytes" in item.text and digest[:12] in item.text
    final = json.loads(browser.find_element(By.CSS_SELECTOR, "#final pre").text)
    assert final["rows"] == 2 and final["sha256"] == digest
    shot(browser, "files")
    href = str(item.find_element(By.CSS_SELECTOR, "a.download").get_attribute("href"))
    code, body = fetch_bytes(browser, href)
    assert code == 200 and body == expected
    code, _ = fetch_bytes(browser, href.rsplit("/", 1)[0] + "/nothing.svg")
    assert code == 404


def test_a_file_larger_than_the_bound_is_refused(panel: Panel) -> None:
    """The bound holds without a Content-Length too: a chunked body is counted as it comes."""
    boundary = "kodoboundary"
    cookie = "kodo_csrf=" + "c" * 43

    def chunks() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
            f'{"c" * 43}\r\n--{boundary}\r\nContent-Disposition: form-data; name="in.data"; '
            'filename="big.csv"\r\nContent-Type: text/csv\r\n\r\n'
        ).encode()
        for _ in range(64):  # 256 KB in all, above the 4 KB bound of the panel below (and
            yield b"x" * 4096  # little enough to be sent whole before the answer comes)
        yield f"\r\n--{boundary}--\r\n".encode()

    small = _small_panel(panel, 4096)
    request = urllib.request.Request(
        f"{small}/flows/{NODE}/chart",
        data=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Cookie": cookie},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            code, text = reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        code, text = exc.code, exc.read().decode()
    assert code == 413 and "larger than 4096 bytes" in text


def _small_panel(panel: Panel, limit: int) -> str:
    """A second `kodo-bus web` on the same bus with `--upload-max limit`, for the module."""
    known: str | None = getattr(panel, "small", None)
    if known:
        return known
    assert panel.procs is not None and panel.tmp is not None
    log = panel.tmp / "web-small.log"
    argv = [*KODO_BUS, "web", "--nats", panel.server.url, "--port", "0"]
    _start(panel.procs, [*argv, "--upload-max", str(limit)], log, {**os.environ})
    url: str = _wait_for(lambda: _printed_url(log), panel.procs, panel.tmp, "the small panel")
    panel.small = url
    return url


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_executions_filtered_by_time(panel: Panel, browser: WebDriver) -> None:
    launch_from_form(browser, panel, "hello")
    ended(browser)
    browser.get(f"{panel.url}/executions")
    select = browser.find_element(By.NAME, "within")
    select.find_element(By.CSS_SELECTOR, 'option[value="hour"]').click()
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    until(browser, lambda: "within=hour" in browser.current_url, "the filtered page")
    now = time.time()
    created = [
        float(str(r.get_attribute("data-created")))
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.execution")
    ]
    assert created and all(now - 3600 <= c <= now + 5 for c in created)
    everything = len(created)

    def shown(query: str) -> list[float]:
        browser.get(f"{panel.url}/executions?{query}")
        return [
            float(str(r.get_attribute("data-created")))
            for r in browser.find_elements(By.CSS_SELECTOR, "tr.execution")
        ]

    assert shown(f"until={_utc(now - 86400)}") == []  # nothing is older than this module
    assert "No execution matches" in browser.find_element(By.CSS_SELECTOR, "table.list").text
    assert shown(f"since={_utc(now + 3600)}") == []
    middle = sorted(created)[len(created) // 2]
    later = shown(f"since={_utc(middle)}&until={_utc(now + 60)}")
    assert later and all(c >= int(middle) for c in later) and len(later) <= everything
    earlier = shown(f"until={_utc(middle - 1)}")
    assert all(c <= middle for c in earlier) and len(earlier) < everything
    browser.get(f"{panel.url}/executions?since=yesterday")
    assert "since/until" in browser.find_element(By.ID, "filter-error").text
    browser.get(f"{panel.url}/executions?within=day")
    shot(browser, "executions")


def test_nodes_show_load_and_replicas(panel: Panel, browser: WebDriver) -> None:
    execution = launch_from_form(browser, panel, "linger")
    until(browser, lambda: "lingering" in browser.find_element(By.ID, "out").text, "output")

    def row() -> Any:
        browser.get(f"{panel.url}/nodes")
        return browser.find_element(By.CSS_SELECTOR, f'tr.node[data-node="{NODE}"]')

    node = until(browser, lambda: (r := row()).get_attribute("data-running") != "0" and r, "load")
    assert node.get_attribute("data-replicas") == "2"
    assert "2 replicas" in node.text and "online" in node.text and "flows" in node.text
    capacity = int(str(node.get_attribute("data-capacity")))
    assert capacity >= 1
    assert f"1/{capacity} running" in node.text
    shot(browser, "nodes")
    browser.get(f"{panel.url}/executions/{execution}")
    browser.find_element(By.CSS_SELECTOR, "form.cancel button").click()
    ended(browser)
    until(browser, lambda: row().get_attribute("data-running") == "0", "the load back to 0")


PHONE = (390, 844)


def test_every_page_fits_a_phone(panel: Panel, browser: WebDriver) -> None:
    finished = launch_from_form(browser, panel, "trunk")
    ended(browser)
    pages = [
        "/",
        f"/flows/{NODE}/greet",
        f"/flows/{NODE}/chart",
        f"/executions/{finished}",
        "/executions",
        "/executions?within=week",
        "/nodes",
    ]
    browser.set_window_size(*PHONE)
    try:
        assert browser.execute_script("return window.innerWidth") <= PHONE[0]
        wide = {}
        for path in pages:
            browser.get(panel.url + path)
            if "/executions/" in path:
                ended(browser)
                browser.find_element(By.CSS_SELECTOR, "#console summary").click()
            sizes = browser.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]"
            )
            if sizes[0] > sizes[1]:
                wide[path] = sizes
        assert wide == {}, f"pages wider than the phone (scrollWidth, innerWidth): {wide}"
        browser.get(f"{panel.url}/nodes")
        shot(browser, "phone-nodes")
    finally:
        browser.set_window_size(1200, 900)


def test_a_download_that_fails_its_digest_is_never_delivered_whole(
    panel: Panel, browser: WebDriver
) -> None:
    """A `file` event whose digest is not its object's: one chunk → an error answer; several →
    the stream is cut before its last chunk, so the download fails (read with urllib here:
    Chromium's fetch of a cut body can hang past selenium's script timeout)."""
    small, large = b"a few bytes\n", os.urandom(3 * 128 * 1024 + 7)
    execution = asyncio.run(_execution_with_wrong_digests(panel.server.url, small, large))
    browser.get(panel.url)
    base = f"{panel.url}/executions/{execution}/files"
    code, body = fetch_bytes(browser, f"{base}/small.bin")
    assert code == 410 and b"sha256" in body and small not in body
    with (
        pytest.raises(http.client.IncompleteRead) as cut,
        urllib.request.urlopen(f"{base}/large.bin", timeout=30) as reply,
    ):
        reply.read()
    assert len(cut.value.partial) < len(large)  # the last chunk held back, the stream cut
    code, body = fetch_bytes(browser, f"{base}/good.bin")
    assert code == 200 and body == small


async def _execution_with_wrong_digests(url: str, small: bytes, large: bytes) -> str:
    """An ended execution of the panel's user whose `file` events name real objects, two of
    them with a digest that is not theirs (as a node's worker would write events)."""
    from kodo_bus import files, subjects
    from kodo_bus.executions import create_record, event_message
    from kodo_bus.models import Event, ExecutionRecord

    async with Client(url) as kb:
        execution = os.urandom(16).hex()
        now = time.time()
        kv = await kb.js.key_value(subjects.BUCKET_EXECUTIONS)
        await create_record(
            kv,
            ExecutionRecord(
                execution=execution, flow="files", node=NODE, launcher=kb.user,
                status="finished", created=now, updated=now,
            ),
        )  # fmt: skip
        events: list[tuple[str, Any]] = []
        for name, content, lie in (
            ("small.bin", small, True), ("large.bin", large, True), ("good.bin", small, False),
        ):  # fmt: skip
            obj = subjects.file_name(execution, "out", name)
            ref = await files.upload(kb.js, kb.user, obj, content)
            if lie:
                ref = ref.model_copy(update={"digest": "0" * 64})
            events.append(("file", ref.model_dump()))
        events.append(("status", {"status": "finished"}))
        for seq, (kind, data) in enumerate(events, 1):
            event = Event(
                execution=execution, seq=seq, ts=time.time(), kind=kind, node=NODE,
                flow="files", launcher=kb.user, data=data,
            )  # fmt: skip
            subject, body, headers = event_message(event)
            await kb.js.publish(subject, body, headers=headers)
        return execution
