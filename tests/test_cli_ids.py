"""Short execution ids, as git's hashes: every command that takes an id takes a unique prefix of
it (4 characters or more), tables print the shortest unique prefix of 8 or more, an ambiguous
prefix lists its candidates and exits 2.

The records and events are written straight into a bus of the test's own (no node, no Ray):
three executions of one user, two of which share their first 8 characters.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import nats
import pytest

from kodo_bus.bus import ensure_execution_storage
from kodo_bus.executions import create_record
from kodo_bus.lifecycle import ending_messages, publish
from kodo_bus.models import ExecutionRecord
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, Processes

USER = "idtester"
A = "422cfe37" + "a" * 24
B = "422cfe37" + "b" * 24
C = "9f00" + "c" * 28
FLOWS = {A: "alpha", B: "beta", C: "gamma"}


async def _seed(url: str) -> None:
    """The three executions, ended `finished` (a record and its final + status events)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        kv = await ensure_execution_storage(js, max_age=3600)
        now = time.time()
        for i, (execution, flow) in enumerate(FLOWS.items()):
            record = ExecutionRecord(
                execution=execution,
                flow=flow,
                node="id-node",
                launcher=USER,
                status="finished",
                created=now + i,
                updated=now + i,
                last_seq=2,
            )
            await create_record(kv, record)
            await publish(js, ending_messages(record, 0, "finished", final=flow))
    finally:
        await nc.drain()


@pytest.fixture
async def seeded(fresh_server: NatsServer) -> NatsServer:
    await _seed(fresh_server.url)
    return fresh_server


def cli(procs: Processes, server: NatsServer, *args: str) -> tuple[int, str]:
    """`kodo-bus ARGS --nats URL` as USER: exit code and output (stdout and stderr)."""
    env = {"KODO_USER": USER, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = procs.start(*args, "--nats", server.url, env=env)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


def _json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def test_a_unique_prefix_is_taken_by_events(seeded: NatsServer, procs: Processes) -> None:
    for prefix, full in (("9f00", C), ("9f00cccc", C), ("422cfe37b", B), (A, A)):
        code, out = cli(procs, seeded, "events", prefix, "--json")
        assert code == 0, out
        events = _json_lines(out)
        assert [e["kind"] for e in events] == ["final", "status"], out
        assert {e["execution"] for e in events} == {full}


async def test_an_ambiguous_prefix_lists_its_candidates(
    seeded: NatsServer, procs: Processes
) -> None:
    for args in (("events", "422c"), ("cancel", "422cfe37"), ("answer", "422cfe", "{}")):
        code, out = cli(procs, seeded, *args)
        assert code == 2, out
        assert "Traceback" not in out
        lines = [line for line in out.splitlines() if line.strip()]
        assert lines[0].startswith("error: ") and "ambiguous" in lines[0], out
        for full in (A, B):  # id, flow and status of each candidate
            assert f"{full} ({FLOWS[full]}, finished)" in lines[0], out
        assert C not in out
        assert "--debug" not in out


async def test_a_too_short_prefix_is_refused(seeded: NatsServer, procs: Processes) -> None:
    code, out = cli(procs, seeded, "events", "9f0")
    assert code == 2, out
    assert "at least 4 characters" in out and "Traceback" not in out


async def test_tables_print_the_shortest_unique_prefix(
    seeded: NatsServer, procs: Processes
) -> None:
    code, out = cli(procs, seeded, "executions")
    assert code == 0, out
    words = set(out.split())
    assert {"422cfe37a", "422cfe37b", "9f00cccc"} <= words, out
    assert not {A, B, C} & words, out
    code, out = cli(procs, seeded, "executions", "--flow", "gamma")
    assert code == 0, out
    assert "9f00cccc" in out.split()

    code, out = cli(procs, seeded, "executions", "--json")  # scripts keep the full ids
    assert code == 0, out
    assert {item["execution"] for item in json.loads(out)["items"]} == {A, B, C}


def test_help_names_the_short_ids() -> None:
    result = subprocess.run(
        [*KODO_BUS, "events", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert result.returncode == 0
    assert "unique prefix" in result.stdout
