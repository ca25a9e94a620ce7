"""`kodo-bus up` serves the web panel too, prints its URL, and stops it with the rest;
`--no-web` leaves it out."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from .conftest import KODO_BUS, REPO, Processes, free_ports


def _text(log: Path) -> str:
    return log.read_text(errors="replace")


def _up(procs: Processes, tmp_path: Path, *args: str) -> tuple[Path, int]:
    port, web_port = free_ports(2)
    log = tmp_path / "up.log"
    argv = [*KODO_BUS, "up", "--port", str(port), "--http-port", "0"]
    argv += ["--store", str(tmp_path / "store"), "--web-port", str(web_port), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:  # a file, read while it runs
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
    procs.procs.append(proc)
    assert proc.poll() is None
    return log, web_port


def test_up_serves_the_panel_and_prints_its_url(procs: Processes, tmp_path: Path) -> None:
    log, web_port = _up(procs, tmp_path)
    url = f"http://127.0.0.1:{web_port}"
    deadline = time.monotonic() + 60
    page = ""
    while "hello" not in page:  # the registry lists the example node's flows
        assert time.monotonic() < deadline, f"no flows on the panel:\n{_text(log)}"
        try:
            with urllib.request.urlopen(url + "/", timeout=5) as reply:
                page = reply.read().decode()
        except (urllib.error.URLError, ConnectionError):
            page = ""
        time.sleep(0.2)
    assert f"web panel on {url}" in _text(log)
    up = procs.procs[-1]
    assert procs.stop(up) == 0
    try:
        urllib.request.urlopen(url + "/", timeout=2)
        raise AssertionError("the panel outlived `up`")
    except (urllib.error.URLError, ConnectionError):
        pass


def test_up_no_web(procs: Processes, tmp_path: Path) -> None:
    log, _ = _up(procs, tmp_path, "--no-web")
    deadline = time.monotonic() + 30
    while "up-node" not in _text(log):
        assert time.monotonic() < deadline, _text(log)
        time.sleep(0.2)
    assert "web panel" not in _text(log)
