"""Files in and out of executions, on a real nats-server with a real node (Ray).

Inputs go up before the launch and reach the flow as a local path (removed after); outputs are
`file` events naming a stored object, downloaded with their SHA-256 checked; `delete` removes an
execution's files, events and record.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from kodo_bus import files, subjects
from kodo_bus.client import Client
from kodo_bus.config import ServerSettings
from kodo_bus.errors import ExecutionFailed, ExecutionNotFound, FileDigestMismatch, FileError
from kodo_bus.models import File
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO, Processes

pytestmark = [pytest.mark.ray]

NODE = "files-node"


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory, ray_address: str) -> Iterator[NatsServer]:
    """A nats-server and one hybrid node serving the file flows and the files example."""
    tmp = tmp_path_factory.mktemp("files")
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=tmp / "nats", config=REPO / "nats-server.conf")
    ).start()
    procs = Processes()
    env = {"KODO_RAY_ADDRESS": ray_address, "PYTHONPATH": str(REPO)}
    try:
        body = {
            "id": NODE,
            "role": "hybrid",
            "actors": 1,
            "nats": [server.url],
            "heartbeat": 0.5,
            "flows": [{"module": "tests.flowpkg.file_flows"}, {"module": "examples.files.chart"}],
        }
        config = tmp / "node.yaml"
        config.write_text(yaml.safe_dump(body))
        procs.start("run", "--config", str(config), env=env, cwd=REPO)
        yield server
    finally:
        procs.stop_all()
        server.stop()


@pytest.fixture
async def kb(bus: NatsServer) -> AsyncIterator[Client]:
    async with Client(bus.url) as client:
        deadline = time.monotonic() + 60
        while True:  # until the node's flows are listed
            try:
                names = {f.name for f in await client.flows()}
            except Exception:  # the registry is not up yet
                names = set()
            if {"echo_file", "chart"} <= names:
                break
            assert time.monotonic() < deadline, f"node not ready: {names}"
            await asyncio.sleep(0.2)
        yield client


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def test_file_in_and_out(kb: Client, tmp_path: Path) -> None:
    source = tmp_path / "input.bin"
    source.write_bytes(os.urandom(3 * files.CHUNK + 17))  # several chunks, a partial last one
    flow = await kb.flow("echo_file")
    execution = await flow.launch(files={"data": source})
    result = await execution.result(timeout=60)
    assert result["sha256"] == sha256(source)
    assert result["size"] == source.stat().st_size
    kept = await asyncio.to_thread(os.path.exists, result["path"])
    assert not kept, "the worker keeps the input after the run"
    (ref,) = await execution.files()
    assert ref.name == subjects.file_name(execution.id, "out", "copy.bin")
    assert ref.bucket == subjects.bucket_files(kb.user)
    assert (ref.size, ref.digest) == (source.stat().st_size, sha256(source))
    (written,) = await execution.download(tmp_path / "out")
    assert written == tmp_path / "out" / "copy.bin"
    assert written.read_bytes() == source.read_bytes()


async def test_outputs_keep_the_last_version_of_a_name(kb: Client, tmp_path: Path) -> None:
    execution = await (await kb.flow("make_files")).launch({"text": "second"})
    assert await execution.result(timeout=30) == "made"
    refs = await execution.files()
    assert [r.filename for r in refs] == ["a.txt", "b.txt"]
    paths = await execution.download(tmp_path)
    assert [p.read_bytes() for p in paths] == [b"second", b"bee"]
    sync = await (await kb.flow("make_file_sync")).launch({"text": "from a thread"})
    assert await sync.result(timeout=30) == "made"
    (path,) = await sync.download(tmp_path / "sync")
    assert path.read_bytes() == b"from a thread"


async def test_a_wrong_digest_leaves_no_file(kb: Client, tmp_path: Path) -> None:
    execution = await (await kb.flow("make_files")).launch({})
    await execution.result(timeout=30)
    ref = (await execution.files())[-1]
    forged = ref.model_copy(update={"digest": "0" * 64})
    with pytest.raises(FileDigestMismatch):
        await files.download(kb.js, forged, tmp_path / "b.txt")
    assert os.listdir(tmp_path) == []


async def test_a_flow_reads_only_its_launchers_bucket(kb: Client) -> None:
    """Reflection through the worker: it may read every bucket, so a launch that names a file
    of someone else's bucket must be refused before the flow sees it."""
    name = subjects.file_name("b" * 32, "in", "data/secret.txt")
    theirs = await files.upload(kb.js, "bob", name, b"bob's secret")
    assert theirs.bucket == subjects.bucket_files("bob") != subjects.bucket_files(kb.user)
    execution = await (await kb.flow("echo_file")).launch({"data": theirs.model_dump()})
    with pytest.raises(ExecutionFailed, match="KODO_FILES_bob"):
        await execution.result(timeout=30)
    assert not [e async for e in execution.events(kinds=["file"])]


async def test_chart_example(kb: Client, tmp_path: Path) -> None:
    execution = await (await kb.flow("chart")).launch(
        {"title": "Sales"}, files={"data": REPO / "examples/files/sales.csv"}
    )
    result = await execution.result(timeout=30)
    assert result["rows"] == 4
    (svg,) = await execution.download(tmp_path)
    text = svg.read_text()
    assert text.startswith("<svg") and "March" in text and text.count("<rect") == 4
    assert sha256(svg) == result["sha256"]


async def test_delete_removes_files_events_and_record(kb: Client, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("to be forgotten")
    execution = await (await kb.flow("echo_file")).launch(files={"data": source})
    await execution.result(timeout=30)
    assert len(await files.names_of(kb.js, kb.user, execution.id)) == 2  # the input, the copy
    await execution.delete()
    assert await files.names_of(kb.js, kb.user, execution.id) == []
    with pytest.raises(ExecutionNotFound):
        await kb.execution(execution.id).record()
    with pytest.raises(FileError):
        await files.download(kb.js, File.model_validate(source_ref(execution.id)), tmp_path / "x")


def source_ref(execution: str) -> dict[str, object]:
    return {
        "bucket": subjects.bucket_files("local"),
        "name": subjects.file_name(execution, "out", "copy.bin"),
        "size": 15,
        "digest": hashlib.sha256(b"to be forgotten").hexdigest(),
    }


async def test_cli_launch_files_and_rm(bus: NatsServer, kb: Client, tmp_path: Path) -> None:
    """`launch -f field=path`, `files ID --out DIR`, `executions rm ID`, as a user types them."""
    source = tmp_path / "data.csv"
    source.write_text("a,1\nb,2\n")
    nats = ["--nats", bus.url]
    launched = await cli(
        "launch", "chart", "-f", f"data={source}", "-i", "title=T", "--no-follow", *nats
    )
    execution = launched.stdout.strip()
    assert len(execution) == 32, launched
    out = tmp_path / "out"
    shown = await cli("files", execution[:8], "--out", str(out), "--json", *nats)
    (item,) = json.loads(shown.stdout)["files"]
    assert item["name"] == "chart.svg" and (out / "chart.svg").read_text().startswith("<svg")
    assert item["sha256"] == sha256(out / "chart.svg")
    await cli("executions", "rm", execution, *nats)
    gone = await cli("files", execution, *nats, check=False)
    assert gone.returncode == 2, gone  # an unknown execution id
    bad = await cli("launch", "chart", "-f", "data", *nats, check=False)
    assert bad.returncode == 2 and "expected field=path" in bad.stderr


async def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = await asyncio.to_thread(
        subprocess.run,
        [*KODO_BUS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0 or not check, f"kodo-bus {' '.join(args)}: {done.stderr}"
    return done


BIG = 200 * 1024 * 1024
MEMORY_BOUND_KB = 64 * 1024
"""Peak resident growth allowed per process for 200 MB in and out: far below the file's size."""
CLIENT = [sys.executable, str(REPO / "tests/files_rss_client.py")]


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_200_mb_in_and_out_without_holding_it(
    bus: NatsServer, kb: Client, tmp_path: Path
) -> None:
    """Client (a process of its own) and worker each grow their peak memory by far less than
    the file, and the copy comes back with its digest intact."""
    small = tmp_path / "small.bin"
    small.write_bytes(b"x")
    warm = await (await kb.flow("echo_file")).launch(files={"data": small})
    baseline = (await warm.result(timeout=60))["peak_kb"]  # the worker's peak so far
    source = tmp_path / "big.bin"
    await asyncio.to_thread(write_random, source, BIG)
    done = await asyncio.to_thread(
        subprocess.run,
        [*CLIENT, bus.url, str(source), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=800,
        cwd=REPO,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    digest = await asyncio.to_thread(sha256, source)
    assert report["result"]["size"] == BIG and report["result"]["sha256"] == digest
    assert await asyncio.to_thread(sha256, Path(report["path"])) == digest
    assert report["client_grown_kb"] < MEMORY_BOUND_KB, report
    worker_grown = report["result"]["peak_kb"] - baseline
    assert worker_grown < MEMORY_BOUND_KB, (worker_grown, report)


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as stream:
        for _ in range(size // (1 << 20)):
            stream.write(os.urandom(1 << 20))
