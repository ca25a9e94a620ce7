"""The web panel on a secure bus: each browser logs in with its NATS user, the panel talks to NATS
as that user, and NATS — not panel code — keeps users apart.

A real secure nats-server (config rendered by `kodo_bus.auth` from users node1, reg1, alice and
bob), a registry and a node running as their own users on the session's Ray, `kodo-bus web`
started without credentials, and two headless Chromiums (two cookie jars): alice and bob each
log in and launch `hello` from its form; neither sees the other's execution in Executions nor
can open its page. The nats-server's own connection list (`/connz?auth=1`) shows which NATS users
the panel process is connected as: none before a login, then exactly alice and bob — the panel
has no identity of its own to fetch anything with.

The session store itself (cap, idle reaping, wrong password, stop) is tested without a browser.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nkeys  # type: ignore[import-untyped]
import psutil
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from kodo_bus.auth import UserStore
from kodo_bus.client import Client
from kodo_bus.config import Credentials, ServerSettings
from kodo_bus.errors import AuthError, ConfigError, KodoError
from kodo_bus.server import NatsServer
from kodo_bus.web.sessions import COOKIE, Sessions

from .conftest import KODO_BUS, REPO, Processes
from .test_web import (
    WAIT,
    _printed_url,
    _start,
    _wait_for,
    chromium,
    ended,
    shot,
    status,
    until,
)

pytestmark = pytest.mark.ray
USERS = {"node1": "node", "reg1": "registry", "alice": "client", "bob": "client"}
CAROL_SEED = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
"""carol is a client with an nkey: the server knows only her public key."""
FILES_QUOTA = 64 * 1024**2
"""Each client's files account reserves its quota of the server's file store: three clients at
the default (5 GB) would not fit the profile's 10 GB and the server would not start."""
SECRET_VARS = ("KODO_USER", "KODO_PASSWORD", "KODO_CREDS", "KODO_NKEY")


def password(name: str) -> str:
    return f"secret-of-{name}"


def creds(name: str) -> Credentials:
    return Credentials(user=name, password=password(name))


@dataclass
class SecurePanel:
    url: str
    server: NatsServer
    web_pid: int
    log: Path


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A secure nats-server (bcrypt cost 4: fast connects), monitoring on a free port."""
    directory = tmp_path_factory.mktemp("secure-web")
    store = UserStore(directory)
    for name, role in USERS.items():
        store.add(name, role, password=password(name), rounds=4, files_quota=FILES_QUOTA)
    public = nkeys.from_seed(bytearray(CAROL_SEED.encode())).public_key.decode()
    store.add("carol", "client", nkey=public, files_quota=FILES_QUOTA)
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=directory / "store", config=store.conf_file)
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def panel(
    bus: NatsServer, tmp_path_factory: pytest.TempPathFactory, ray_address: str
) -> Iterator[SecurePanel]:
    tmp = tmp_path_factory.mktemp("secure-web-procs")
    procs = Processes()
    try:
        config = tmp / "node.yaml"
        config.write_text("flows:\n  - module: examples.hello\n")
        env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
        env |= {"KODO_RAY_ADDRESS": ray_address, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        common = [*KODO_BUS, "run", "--nats", bus.url, "--heartbeat", "0.5"]
        as_reg1 = ["--user", "reg1", "--password", password("reg1")]
        as_node1 = ["--user", "node1", "--password", password("node1")]
        _start(
            procs, [*common, "--role", "registry", "--id", "reg1", *as_reg1], tmp / "reg.log", env
        )
        _start(procs, [*common, "--id", "node1", *as_node1, "--config", str(config)],
               tmp / "node.log", env)  # fmt: skip
        web_log = tmp / "web.log"
        _start(procs, [*KODO_BUS, "web", "--nats", bus.url, "--port", "0"], web_log, env)
        url = _wait_for(lambda: _printed_url(web_log), procs, tmp, "the panel's URL")
        assert "each browser logs in" in web_log.read_text()
        _wait_for(lambda: _hello_listed(bus.url), procs, tmp, "hello, as alice")
        yield SecurePanel(url, bus, procs.procs[-1].pid, web_log)
    finally:
        procs.stop_all()


def _hello_listed(url: str) -> bool:
    async def look() -> bool:
        async with Client(url, user="alice", credentials=creds("alice"), retry=0) as kb:
            return "hello" in {f.name for f in await kb.flows(via="reg1")}

    try:
        return asyncio.run(look())
    except Exception:
        return False


def panel_nats_users(panel: SecurePanel) -> list[str]:
    """The NATS users the panel process is connected as, from the nats-server's connection list
    (its client ports matched to the panel's sockets)."""
    ours = {
        c.laddr.port
        for c in psutil.Process(panel.web_pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == panel.server.port
    }
    with urllib.request.urlopen(
        f"{panel.server.monitor_url}/connz?auth=1&limit=1024", timeout=5
    ) as reply:
        connz = json.load(reply)
    return sorted(
        str(c.get("authorized_user", "")) for c in connz["connections"] if c["port"] in ours
    )


def users_become(panel: SecurePanel, expected: list[str]) -> None:
    deadline = time.monotonic() + 10
    while (seen := panel_nats_users(panel)) != expected:
        assert time.monotonic() < deadline, f"panel connected as {seen}, expected {expected}"
        time.sleep(0.05)


def on_login_page(browser: WebDriver) -> bool:
    return bool(browser.find_elements(By.CSS_SELECTOR, "form.login"))


def log_in(browser: WebDriver, user: str, secret: str) -> None:
    field = browser.find_element(By.NAME, "user")
    field.clear()
    field.send_keys(user)
    browser.find_element(By.NAME, "password").send_keys(secret)
    browser.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()


def launch_hello(browser: WebDriver, panel: SecurePanel, name: str) -> str:
    browser.get(f"{panel.url}/flows/node1/hello")
    field = browser.find_element(By.NAME, "in.name")
    field.clear()
    field.send_keys(name)
    browser.find_element(By.CSS_SELECTOR, "form.launch button[type=submit]").click()
    until(browser, lambda: "/executions/" in browser.current_url, "the execution page")
    ended(browser)
    assert status(browser) == "finished"
    assert name in browser.find_element(By.ID, "out").text
    return browser.current_url.rsplit("/", 1)[1]


def listed(browser: WebDriver, panel: SecurePanel) -> set[str]:
    browser.get(f"{panel.url}/executions")
    links = browser.find_elements(By.CSS_SELECTOR, "tr.execution a")
    return {str(a.get_attribute("href")).rsplit("/", 1)[1] for a in links}


def fetch_status(browser: WebDriver, path: str) -> int:
    code = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {credentials: 'same-origin'}).then(r => done(r.status),"
        " e => done(-1));",
        path,
    )
    return int(code)


def test_two_users_in_two_browsers_see_only_their_own(panel: SecurePanel) -> None:
    with chromium() as alice, chromium() as bob:
        for browser in (alice, bob):
            browser.get(f"{panel.url}/executions")
            assert on_login_page(browser), browser.page_source[:500]
            assert not browser.find_elements(By.CSS_SELECTOR, "header .who")
        assert panel_nats_users(panel) == []  # no identity of its own, before any login

        log_in(alice, "alice", "wrong")
        error = until(alice, lambda: alice.find_element(By.ID, "login-error"), "the refusal")
        assert "refused" in error.text
        log_in(alice, "alice", password("alice"))
        until(alice, lambda: not on_login_page(alice), "alice's login")
        assert alice.current_url.endswith("/executions")  # back to the page first asked for
        assert alice.find_element(By.CSS_SELECTOR, "header .who").text == "alice"
        bob.get(panel.url)
        log_in(bob, "bob", password("bob"))
        until(bob, lambda: bob.find_elements(By.CSS_SELECTOR, "tr.flow"), "bob's flows page")
        assert bob.find_element(By.CSS_SELECTOR, "header .who").text == "bob"

        cookies = [b.get_cookie(COOKIE) for b in (alice, bob)]
        for cookie in cookies:
            assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert len(cookie["value"]) >= 40
        assert cookies[0] != cookies[1]
        users_become(panel, ["alice", "bob"])

        of_alice = launch_hello(alice, panel, "Alice")
        of_bob = launch_hello(bob, panel, "Bob")
        mine, theirs = listed(alice, panel), listed(bob, panel)
        assert of_alice in mine and of_bob not in mine
        assert of_bob in theirs and of_alice not in theirs

        for browser, other in ((alice, of_bob), (bob, of_alice)):
            browser.get(f"{panel.url}/executions/{other}")
            refusal = browser.find_element(By.ID, "not-found")
            assert "another user's" in refusal.text and other in refusal.text
            assert not browser.find_elements(By.CSS_SELECTOR, "section[data-events]")
            assert fetch_status(browser, f"/executions/{other}/events") == 404
            assert "Bob" not in browser.page_source and "Alice" not in browser.page_source
        users_become(panel, ["alice", "bob"])  # all of it read through their own connections

        alice.find_element(By.CSS_SELECTOR, "form.logout button").click()
        until(alice, lambda: on_login_page(alice), "the login page after logout")
        alice.get(f"{panel.url}/executions/{of_alice}")
        assert on_login_page(alice)
        users_become(panel, ["bob"])
        assert of_bob in listed(bob, panel)  # bob's session goes on


def log_in_with_seed(browser: WebDriver, user: str, seed: str) -> None:
    field = browser.find_element(By.NAME, "user")
    field.clear()
    field.send_keys(user)
    browser.find_element(By.CSS_SELECTOR, "details.other-login summary").click()
    browser.find_element(By.NAME, "seed").send_keys(seed)
    browser.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()


def login_error(browser: WebDriver, saying: str) -> None:
    """Wait for the login error that says `saying`: until the new page is there, the old one
    shows the previous error, and reading it then may find it gone (a stale element)."""
    until(
        browser,
        lambda: saying in browser.find_element(By.ID, "login-error").text,
        f"the login error {saying!r}",
    )


def test_login_with_an_nkey_seed(panel: SecurePanel) -> None:
    other = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    with chromium() as carol:
        carol.get(f"{panel.url}/executions")
        assert on_login_page(carol)
        shot(carol, "login")
        log_in_with_seed(carol, "carol", other)  # a valid seed, not carol's key
        login_error(carol, "refused this user and nkey seed")
        log_in_with_seed(carol, "carol", "SUnotaseed")
        login_error(carol, "58 characters")  # (the page before it shows the previous error)
        log_in_with_seed(carol, "carol", CAROL_SEED)
        until(carol, lambda: not on_login_page(carol), "carol's login")
        assert carol.find_element(By.CSS_SELECTOR, "header .who").text == "carol"
        assert users_with_nkey(panel)  # the panel holds a connection made with carol's key
        mine = launch_hello(carol, panel, "Carol")  # launched and read as carol, over NATS
        assert mine in listed(carol, panel)
        for cookie in carol.get_cookies():  # the seed stays on the server
            assert CAROL_SEED not in cookie["value"] and other not in cookie["value"]
        assert CAROL_SEED not in carol.page_source
        text = panel.log.read_text()
        assert CAROL_SEED not in text and other not in text
        carol.find_element(By.CSS_SELECTOR, "form.logout button").click()
        until(carol, lambda: on_login_page(carol), "the login page after logout")


def users_with_nkey(panel: SecurePanel) -> bool:
    """Whether the nats-server lists a connection of the panel authenticated by carol's nkey
    (`connz` names an nkey user by its public key)."""
    public = nkeys.from_seed(bytearray(CAROL_SEED.encode())).public_key.decode()
    return public in panel_nats_users(panel)


# -- the session store, without a browser --------------------------------------------------------
async def test_sessions_cap_idle_and_stop(bus: NatsServer) -> None:
    sessions = Sessions([bus.url], cap=2, idle=0.3)
    await sessions.start()
    try:
        with pytest.raises(AuthError):
            await sessions.login("alice", "wrong")
        for name in ("", "a.b"):  # never a fallback to KODO_USER or a wildcard
            with pytest.raises(ConfigError):
                await sessions.login(name, password("alice"))
        first = await sessions.login("alice", password("alice"))
        second = await sessions.login("bob", password("bob"))
        assert first is not None and second is not None and first.id != second.id
        assert await sessions.login("alice", password("alice")) is None  # the cap
        assert sessions.get(first.id) is first and first.user == "alice"
        with second.streaming():  # a live page open: not idle, whatever the clock says
            deadline = time.monotonic() + WAIT
            while first.id in sessions:  # (`in` does not touch it, `get` would)
                assert time.monotonic() < deadline, "the idle session was never closed"
                await asyncio.sleep(0.05)
            assert closed(first.client)
            await asyncio.sleep(0.5)
            assert second.id in sessions and len(sessions) == 1
        third = await sessions.login("alice", password("alice"))
        assert third is not None
    finally:
        await sessions.stop()
    assert len(sessions) == 0 and closed(third.client) and closed(second.client)


def closed(client: Client) -> bool:
    try:
        nc = client.nc
    except KodoError:
        return True
    return nc.is_closed
