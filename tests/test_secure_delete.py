"""Deleting executions on the secure profile (issue 19, result housekeeping).

A client may not purge the events stream nor the records bucket, so `Execution.delete()` asks
the bus (`kodo.exec.<user>.<execution>.delete`) and a node deletes from the record. Alice runs a
flow that hands back files on a node of her bus (the real runner and executor, the worker in
process: `LocalPool`, no Ray), deletes it through the SDK, `kodo-bus executions rm` and
`kodo-bus files --delete-after-download`, and an admin then finds nothing of it: no event, no
record nor index entry, no object. Bob tries to delete alice's execution: NATS refuses it.
"""

# ruff: noqa: F811  (pytest fixtures imported from test_security are parameters here)
from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from kodo_bus import files, subjects
from kodo_bus.auth import permissions
from kodo_bus.bus import connect, ensure_execution_storage, jetstream, request
from kodo_bus.client import Client
from kodo_bus.config import Credentials, ServiceSettings
from kodo_bus.errors import ExecutionNotEnded, ExecutionNotFound, RemoteError
from kodo_bus.execution_ref import Execution
from kodo_bus.executions import create_record
from kodo_bus.flow_ref import Flow
from kodo_bus.flows import flows_in_module
from kodo_bus.local_pool import LocalPool
from kodo_bus.models import Ack, Empty, ExecutionRecord, FlowItem
from kodo_bus.runner import Runner
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO
from .test_security import login, password, secure, settings  # noqa: F401  (module fixtures)

NODE = "node1"
RECORDS = subjects.BUCKET_EXECUTIONS
ALICE_FILES = subjects.obj_stream(subjects.bucket_files("alice"))


def creds(name: str) -> Credentials:
    return Credentials(user=name, password=password(name))


@dataclass
class Bus:
    """The secure server with node1 serving `make_files`, and an admin's JetStream."""

    server: NatsServer
    runner: Runner
    flow: FlowItem
    root: NATS

    @property
    def admin(self) -> JetStreamContext:
        return jetstream(self.root)


@pytest.fixture
async def bus(secure: NatsServer) -> AsyncIterator[Bus]:
    root = await connect(settings(secure, "root"))
    node_settings = ServiceSettings(
        id=NODE, nats=[secure.url], credentials=creds(NODE), max_running=2, actors=1
    )
    nc = await connect(node_settings.connect_settings())
    (spec,) = [s for s in flows_in_module("tests.flowpkg.file_flows") if s.name == "make_files"]
    pool = LocalPool(nc, NODE, node_settings.connect_settings(), 1)
    runner = Runner(nc, node_settings, [spec], pool=pool)
    try:
        await runner.start()
        item = FlowItem(**spec.info().model_dump(), node=NODE)
        yield Bus(secure, runner, item, root)
    finally:
        await runner.stop()
        await nc.close()
        await root.close()


async def made_files(bus: Bus, alice: Client) -> Execution:
    """Alice runs `make_files` to its end: two files handed back."""
    execution = await Flow(alice, bus.flow).launch({"text": "private"})
    assert await execution.result(timeout=60) == "made"
    assert sorted(r.filename for r in await execution.files()) == ["a.txt", "b.txt"]
    return execution


async def traces(js: JetStreamContext, user: str, execution: str) -> dict[str, int]:
    """What the stores hold of one execution, as an admin sees them: events, record and index
    entries, objects (names in the bucket). A deleted execution's record key holds an empty
    value for a while (`files._hold_the_id`): nothing of the execution, not counted."""
    events = await js.stream_info(
        subjects.STREAM_EVENTS, subjects_filter=subjects.events(user, execution, "*")
    )
    keys = await js.stream_info(
        subjects.kv_stream(RECORDS), subjects_filter=subjects.kv_subject(RECORDS, ">")
    )
    record = subjects.kv_subject(RECORDS, subjects.record_key(user, execution))
    held = [
        s
        for s in (keys.state.subjects or {})
        if s.endswith(f".{user}.{execution}")
        and (s != record or (await js.get_last_msg(subjects.kv_stream(RECORDS), s)).data)
    ]
    return {
        "events": events.state.messages,
        "record and index": len(held),
        "objects": len(await files.names_of(js, user, execution)),
    }


NOTHING = {"events": 0, "record and index": 0, "objects": 0}


async def test_alice_deletes_her_executions_through_a_node(bus: Bus, tmp_path: Path) -> None:
    admin = bus.admin
    async with Client(bus.server.url, user="alice", credentials=creds("alice")) as alice:
        # 1. the SDK
        first = await made_files(bus, alice)
        held = await traces(admin, "alice", first.id)
        assert held["events"] > 0 and held["objects"] == 2
        assert held["record and index"] == 2  # the record and its node's index entry
        await first.delete()
        assert await traces(admin, "alice", first.id) == NOTHING
        with pytest.raises(ExecutionNotFound):  # twice: not found, no crash
            await alice.execution(first.id).delete()
        # the node says so too, to a request that skips the SDK's own look at the record
        with pytest.raises(RemoteError) as gone:
            await request(alice.nc, subjects.exec_delete("alice", first.id), Empty(), Ack)
        assert gone.value.kind == "not_found"

        # 2. the command line, as alice types it
        second = await made_files(bus, alice)
        third = await made_files(bus, alice)
        login_args = ["--nats", bus.server.url, "--user", "alice", "--password", password("alice")]
        await cli("executions", "rm", second.id, *login_args)
        out = tmp_path / "out"
        await cli("files", third.id, "--out", str(out), "--delete-after-download", *login_args)
        assert (out / "a.txt").read_bytes() == b"private"
        for execution in (second, third):
            assert await traces(admin, "alice", execution.id) == NOTHING
    info = await admin.stream_info(ALICE_FILES)
    assert (info.state.messages, info.state.bytes) == (0, 0), "alice's bucket still holds data"


async def test_a_live_execution_is_not_deleted(bus: Bus) -> None:
    kv = await ensure_execution_storage(bus.admin, max_age=ServiceSettings().events_max_age)
    execution = os.urandom(16).hex()
    now = time.time()
    await create_record(
        kv,
        ExecutionRecord(
            execution=execution, flow="make_files", node=NODE, launcher="alice",
            status="running", created=now, updated=now,
        ),
    )  # fmt: skip
    async with Client(bus.server.url, user="alice", credentials=creds("alice")) as alice:
        with pytest.raises(ExecutionNotEnded, match="cancel it first"):
            await alice.execution(execution).delete()
        with pytest.raises(RemoteError) as refused:  # the node checks it too
            await request(alice.nc, subjects.exec_delete("alice", execution), Empty(), Ack)
        assert refused.value.kind == "invalid_request"
        assert "cancel it first" in refused.value.message
    assert (await traces(bus.admin, "alice", execution))["record and index"] == 2


async def test_bob_cannot_delete_alices_execution(bus: Bus, login: Any) -> None:
    async with Client(bus.server.url, user="alice", credentials=creds("alice")) as alice:
        execution = await made_files(bus, alice)
        held = await traces(bus.admin, "alice", execution.id)
        bob = await login("bob")
        # on alice's subject: a permission violation, and no node hears it
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await bob.nc.request(subjects.exec_delete("alice", execution.id), b"", timeout=1)
        await bob.violation(subjects.exec_delete("alice", execution.id))
        bob.errors.clear()
        # on his own subject, naming her execution: the user is the subject's, never alice
        with pytest.raises(RemoteError) as theirs:
            await request(bob.nc, subjects.exec_delete("bob", execution.id), Empty(), Ack)
        assert theirs.value.kind == "not_found"
        # the SDK, told the launcher: bob cannot even read her record
        async with Client(bus.server.url, user="bob", credentials=creds("bob"), timeout=1) as sdk:
            handle = sdk.execution(execution.id)
            handle.launcher = "alice"
            with pytest.raises((ExecutionNotFound, TimeoutError, nats.errors.TimeoutError)):
                await handle.delete()
        assert await traces(bus.admin, "alice", execution.id) == held
        await execution.delete()  # alice may
        assert await traces(bus.admin, "alice", execution.id) == NOTHING


async def test_a_client_still_cannot_purge(bus: Bus, login: Any) -> None:
    """The delete goes through a node: alice's own purges of events and records stay refused
    (her own files' bucket is hers to purge)."""
    async with Client(bus.server.url, user="alice", credentials=creds("alice")) as sdk:
        execution = await made_files(bus, sdk)
    alice = await login("alice")
    js = jetstream(alice.nc, timeout=1.0)
    for stream, subject in (
        (subjects.STREAM_EVENTS, subjects.events("alice", execution.id, "*")),
        (subjects.kv_stream(RECORDS), subjects.kv_subject(RECORDS, f"alice.{execution.id}")),
    ):
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await js.purge_stream(stream, subject=subject)
        await alice.violation(f"STREAM.PURGE.{stream}")
        alice.errors.clear()
    held = await traces(bus.admin, "alice", execution.id)
    assert held["events"] > 0 and held["record and index"] == 2


def test_the_permissions_name_the_delete() -> None:
    client = permissions("client", "alice").publish
    assert subjects.exec_delete("alice", "*") in client
    assert not [p for p in client if "PURGE" in p and "OBJ_KODO_FILES_alice" not in p]
    node = permissions("node", "n1").publish
    assert f"{subjects.JS_API_KODO}.STREAM.PURGE.*" in node


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = await asyncio.to_thread(
        subprocess.run,
        [*KODO_BUS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, f"kodo-bus {' '.join(args[:3])}: {done.stderr}"
    return done
