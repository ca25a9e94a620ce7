"""`kodo-bus inspect live | view | record` as subprocesses on a real nats-server: the msgpack
control plane shown as text and JSON (issue 17, finding 6).

The announcements, view entries and records are written here as nodes and registries write
them (msgpack, through the wire models), so the test needs no Ray.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import time
from typing import Any

from nats.aio.client import Client as NATS

from kodo_bus import subjects
from kodo_bus.bus import ensure_bucket, ensure_execution_storage
from kodo_bus.client import Client
from kodo_bus.codec import encode
from kodo_bus.executions import create_record
from kodo_bus.models import (
    Bye,
    Catalog,
    ExecutionRecord,
    FlowInfo,
    Heartbeat,
    NodeEntry,
    RegistryView,
)
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO, Processes
from .test_cli_watch import Reader, cli, warnings


def spawn(procs: Processes, server: NatsServer, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "KODO_NATS": server.url, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*KODO_BUS, *args],
        env=env,
        cwd=REPO,
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    procs.procs.append(proc)
    return proc


async def announce_until_shown(nc: NATS, reader: Reader, node: str) -> list[str]:
    """Heartbeats of `node` until the watcher prints one (it has subscribed); its lines."""
    shown: list[str] = []
    deadline = time.monotonic() + 30
    while not any(node in line for line in shown):
        assert time.monotonic() < deadline, f"inspect live never showed {node}: {shown}"
        body, headers = encode(Heartbeat(node=node, ts=time.time()))
        await nc.publish(subjects.node_heartbeat(node), body, headers=headers)
        await nc.flush()
        try:
            shown.append(await asyncio.to_thread(reader.lines.get, timeout=0.3))
        except queue.Empty:
            continue
    return shown


async def test_live_decodes_announcements_until_ctrl_c(
    fresh_server: NatsServer, procs: Processes
) -> None:
    proc = spawn(procs, fresh_server, "inspect", "live", "--json")
    reader = Reader(proc)
    flows = [FlowInfo(name="greet"), FlowInfo(name="crawl")]
    async with Client(fresh_server.url) as kb:
        await announce_until_shown(kb.nc, reader, "probe-node")
        messages = [
            (subjects.node_catalog("n1"), Catalog(node="n1", flows=flows, revision=7)),
            (subjects.node_heartbeat("n1"), Heartbeat(node="n1", running=2, capacity=4)),
            (subjects.registry_view("r1"), RegistryView(registry="r1", nodes=[])),
            (subjects.node_bye("n1"), Bye(node="n1", forget=True, reason="gone")),
        ]
        for subject, message in messages:
            body, headers = encode(message)
            if subject.endswith("heartbeat"):
                await kb.nc.publish(subject, b"\x93 not msgpack of a heartbeat")
            await kb.nc.publish(subject, body, headers=headers)
        await kb.nc.flush()
        taken = [json.loads(reader.take()) for _ in messages]
    got = {g["kind"]: g for g in taken}  # one subscription per subject: no order across them
    assert {k: g["subject"] for k, g in got.items()} == {
        "catalog": "kodo.node.n1.catalog",
        "heartbeat": "kodo.node.n1.heartbeat",
        "view": "kodo.registry.r1.view",
        "bye": "kodo.node.n1.bye",
    }
    assert [f["name"] for f in got["catalog"]["message"]["flows"]] == ["greet", "crawl"]
    assert got["catalog"]["message"]["revision"] == 7
    assert got["heartbeat"]["message"]["running"] == 2
    assert got["heartbeat"]["message"]["capacity"] == 4
    assert got["bye"]["message"]["forget"] is True and got["bye"]["message"]["reason"] == "gone"
    assert got["view"]["message"]["registry"] == "r1"

    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 130
    assert proc.stderr is not None
    with proc.stderr:
        (warning,) = warnings(proc.stderr.read())
    assert warning.startswith("warning: 1 undecodable message skipped"), warning
    assert "kodo.node.n1.heartbeat" in warning


async def test_live_as_text_for_one_node(fresh_server: NatsServer, procs: Processes) -> None:
    proc = spawn(procs, fresh_server, "inspect", "live", "--node", "probe-text")
    reader = Reader(proc)
    async with Client(fresh_server.url) as kb:
        shown = await announce_until_shown(kb.nc, reader, "probe-text")
        other, _ = encode(Heartbeat(node="someone-else"))
        await kb.nc.publish(subjects.node_heartbeat("someone-else"), other)
        beat = Heartbeat(node="probe-text", running=3, capacity=8, memory=2**27, instance="i1")
        body, headers = encode(beat)
        await kb.nc.publish(subjects.node_heartbeat("probe-text"), body, headers=headers)
        await kb.nc.flush()
        line = ""
        while "run 3/8" not in line:
            line = reader.take()
    assert all("probe-text" in s for s in shown)
    assert "heartbeat" in line and "mem 128M" in line and "instance i1" in line, line
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 130
    reader.thread.join(5)
    rest = []
    while not reader.lines.empty():
        rest.append(reader.lines.get())
    assert not any("someone-else" in r for r in rest), rest
    assert proc.stderr is not None
    with proc.stderr:
        assert proc.stderr.read() == ""


async def test_view_lists_and_decodes_a_registry_bucket(fresh_server: NatsServer) -> None:
    code, out, err = cli(fresh_server, "inspect", "view", "nosuch")
    assert code == 2, (out, err)
    line = warnings(err)[0]
    assert line.startswith("error: no registry 'nosuch'") and "none does yet" in line, err

    async with Client(fresh_server.url) as kb:
        for registry in ("reg-a", "reg-b"):
            await ensure_bucket(kb.js, subjects.bucket_view(registry))
        view = await ensure_bucket(kb.js, subjects.bucket_view("reg-a"))
        flows = [FlowInfo(name="greet")]
        entries = [
            NodeEntry(catalog=Catalog(node="n1", flows=flows), last_seen=time.time(), replicas=2),
            NodeEntry(catalog=Catalog(node="n2"), status="offline", last_seen=time.time() - 60),
        ]
        for entry in entries:
            await view.put(f"node.{entry.catalog.node}", encode(entry)[0])

    code, out, err = cli(fresh_server, "inspect", "view", "--json")
    assert code == 0, err
    assert json.loads(out) == {"total": 2, "items": ["reg-a", "reg-b"]}

    code, out, err = cli(fresh_server, "inspect", "view", "reg-a", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["registry"] == "reg-a" and got["total"] == 2
    assert [i["catalog"]["node"] for i in got["items"]] == ["n1", "n2"]
    assert got["items"][0]["replicas"] == 2 and got["items"][1]["status"] == "offline"
    assert got["items"][0]["catalog"]["flows"][0]["name"] == "greet"

    code, out, err = cli(fresh_server, "inspect", "view", "reg-a")
    assert code == 0, err
    assert "view of reg-a: 2 nodes" in out and "offline" in out
    assert re.search(r"│ n2 +│ offline +│ 6\ds ago", out), out

    code, out, err = cli(fresh_server, "inspect", "view", "reg-c")
    assert code == 2
    assert warnings(err)[0] == (
        "error: no registry 'reg-c' keeps a view on this bus — known: reg-a, reg-b"
    ), err


def record(execution: str, **fields: Any) -> ExecutionRecord:
    now = time.time()
    return ExecutionRecord.model_validate(
        {
            "execution": execution,
            "flow": "greet",
            "node": "n1",
            "launcher": "local",
            "status": "running",
            "created": now,
            "updated": now,
            **fields,
        }
    )


async def test_record_by_short_id(fresh_server: NatsServer) -> None:
    code, _, err = cli(fresh_server, "inspect", "record", "abcdef12")
    assert code == 2, err
    assert "no execution" in warnings(err)[0] and "Traceback" not in err

    one, two, three = "1234abcd" + "0" * 24, "5678ef00" + "1" * 24, "5678ef11" + "2" * 24
    async with Client(fresh_server.url) as kb:
        kv = await ensure_execution_storage(kb.js, max_age=3600)
        for execution in (one, two, three):
            await create_record(kv, record(execution, status="finished", last_seq=9))

    code, out, err = cli(fresh_server, "inspect", "record", "1234ab", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["key"] == f"local.{one}" and got["revision"] >= 1
    assert got["record"]["execution"] == one and got["record"]["last_seq"] == 9
    assert got["record"]["status"] == "finished"

    code, out, err = cli(fresh_server, "inspect", "record", one[:8])
    assert code == 0, err
    assert f"record local.{one}" in out and "finished" in out and "greet" in out

    code, out, err = cli(fresh_server, "inspect", "record", "5678ef")
    assert code == 2
    assert "ambiguous" in warnings(err)[0] and two in err and three in err
