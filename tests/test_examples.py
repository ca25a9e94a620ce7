"""Every SDK example runs as written against `kodo-bus up` (bus, registry and example node)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from .conftest import REPO, Processes

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def up_url(tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> Iterator[str]:
    """`kodo-bus up` on a free port, sharing the session's Ray."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = Processes()
    store = tmp_path_factory.mktemp("up")
    up = procs.start(
        "up",
        "--port",
        str(port),
        "--http-port",
        "0",
        "--web-port",
        "0",
        "--store",
        str(store),
        cwd=REPO,
        env={"KODO_RAY_ADDRESS": ray_address},
    )
    url = f"nats://127.0.0.1:{port}"
    try:
        asyncio.run(_wait_for_hello(url, up))
        yield url
    finally:
        procs.stop_all()


async def _wait_for_hello(url: str, up: subprocess.Popen[str]) -> None:
    from kodo_bus import Client, KodoError

    deadline = time.monotonic() + 60
    while True:
        assert up.poll() is None, "kodo-bus up exited"
        try:
            async with Client(url, retry=0) as kb:
                await kb.flow("hello")
                return
        except (KodoError, OSError, nats.errors.Error):
            assert time.monotonic() < deadline, "kodo-bus up did not serve 'hello' in time"
            await asyncio.sleep(0.3)


def _run_example(path: Path, url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env={**os.environ, "KODO_NATS": url},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart(up_url: str) -> None:
    assert _run_example(REPO / "examples/sdk/quickstart.py", up_url).strip() == "Hello, **Ada**!"


def test_follow(up_url: str) -> None:
    out = _run_example(REPO / "examples/sdk/follow.py", up_url, "Linus")
    assert "up-node/hello: Greets someone in markdown; inputs: ['name']" in out
    assert "markdown  Hello, **Linus**!" in out
    assert "status: finished" in out and "recent:" in out


def test_blocking(up_url: str) -> None:
    out = _run_example(REPO / "examples/sdk/blocking.py", up_url)
    assert out.splitlines() == ["Hello, **Grace**!", "Hello, **Grace**!"]


def test_errors(up_url: str) -> None:
    out = _run_example(REPO / "examples/sdk/errors.py", up_url)
    assert out.strip() == "name: String should have at most 100 characters"


async def test_example_flows_on_up(up_url: str) -> None:
    """hitl, pipeline, FlowKit, throughput and calc, each launched as a user would."""
    from kodo_bus import Client

    async with Client(up_url) as kb:
        hitl = await (await kb.flow("hitl")).launch({"title": "Plan"})
        async for event in hitl.events(kinds=["lock"]):
            assert event.data["prompt"] == "Approve 'Plan'?"
            break
        await hitl.answer({"approved": True, "comment": "go"})
        assert await hitl.result(timeout=60) == {"title": "Plan", "approved": True, "comment": "go"}

        tree = await (await kb.flow("extract")).launch({"text": "a b c"})
        root = await tree.workflow(timeout=60)
        chain = [root.flow, root.children[0].flow, root.children[0].children[0].flow]
        assert chain == ["extract", "transform", "load"]
        assert root.children[0].children[0].result == "A B C"

        fk = await (await kb.flow("flowkit_complete")).launch({"data": "xyz"})
        fk_tree = await fk.workflow(timeout=60)
        assert fk_tree.children[0].result == {"received": "XYZ"}

        burst = await (await kb.flow("throughput")).launch({"rate": 2000, "duration": 0.5})
        assert (await burst.result(timeout=60))["events"] == 1000
        markdown = [e async for e in burst.events(kinds=["markdown"])]
        assert len(markdown) == 1000

        calc = await (await kb.flow("calc")).launch({"tasks": 3})
        results = await calc.result(timeout=120)
        assert sorted(r["i"] for r in results) == [0, 1, 2]
        with pytest.raises(Exception, match="less than or equal to 500"):
            await (await kb.flow("calc")).launch({"tasks": 501})
