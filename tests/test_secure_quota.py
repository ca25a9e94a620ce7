"""The files quota of the secure profile: each client's files live in a store account of its own
(`accounts.FILES_ACCOUNT`), whose JetStream limits (`files_quota`, users.yaml `server:`) bound
what one user keeps on the server's disk. Set tiny here: an upload past it, by the client or by
a node handing it an output, fails `FileQuotaExceeded` (JetStream's `err_code`, not its text),
leaves nothing of itself behind, and does not touch another user's room.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import api

from kodo_bus import files, subjects
from kodo_bus.auth import UserStore, client_files_quota, render_conf
from kodo_bus.bus import connect, jetstream
from kodo_bus.config import (
    EVENTS_MAX_BYTES,
    FILES_QUOTA,
    RECORDS_MAX_BYTES,
    SECURE_FILE_STORE,
    ServerSettings,
)
from kodo_bus.errors import ConfigError, FileQuotaExceeded
from kodo_bus.server import NatsServer

from .test_security import password, settings

QUOTA = 400_000
"""Bytes: room for a 150 kB file and the next, not for a 300 kB one besides."""
USERS = {"node1": "node", "alice": "client", "bob": "client", "carol": "client", "root": "admin"}
INSUFFICIENT_MEMORY = 10028
"""JetStream `err_code`: the account may not store in memory (its `max_mem` is 0)."""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    directory = tmp_path_factory.mktemp("quota")
    store = UserStore(directory)
    for name, role in USERS.items():
        store.add(name, role, password=password(name), rounds=4, files_quota=QUOTA)
    assert store.server()["files_quota"] == QUOTA  # kept in users.yaml for the next render
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=directory / "store", config=store.conf_file)
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def conns(small: NatsServer) -> AsyncIterator[dict[str, NATS]]:
    opened = {name: await connect(settings(small, name)) for name in USERS}
    try:
        yield opened
    finally:
        for nc in opened.values():
            await nc.close()


def name(what: str) -> str:
    return subjects.file_name(os.urandom(16).hex(), "out", what)


async def stored(nc: NATS, user: str) -> int:
    info = await jetstream(nc).stream_info(subjects.obj_stream(subjects.bucket_files(user)))
    return int(info.state.bytes)


async def test_an_upload_past_the_quota_fails_and_leaves_nothing(
    conns: dict[str, NATS], tmp_path: Path
) -> None:
    alice = jetstream(conns["alice"])
    first = await files.upload(alice, "alice", name("first.bin"), os.urandom(150_000))
    before = await stored(conns["root"], "alice")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(300_000))  # three chunks: the second or third is refused
    with pytest.raises(FileQuotaExceeded, match="quota"):
        await files.upload(alice, "alice", name("big.bin"), big)
    assert await stored(conns["root"], "alice") == before, "the refused upload left chunks"
    # a node handing alice an output past her quota: refused the same way (and its chunks
    # purged, which needs the node's STREAM.PURGE on her bucket)
    node = jetstream(conns["node1"])
    with pytest.raises(FileQuotaExceeded):
        await files.upload(node, "alice", name("output.bin"), os.urandom(300_000))
    assert await stored(conns["root"], "alice") == before
    # bob's room is his own
    await files.upload(jetstream(conns["bob"]), "bob", name("bobs.bin"), os.urandom(300_000))
    # deleting what she has makes room again
    assert await files.delete(alice, "alice", first.name.split("/")[0]) == 1
    again = await files.upload(alice, "alice", name("big.bin"), big)
    assert again.size == 300_000
    (path,) = [await files.download(alice, again, tmp_path / "back.bin")]
    assert path.read_bytes() == big.read_bytes()


async def test_no_bucket_in_memory(conns: dict[str, NATS]) -> None:
    """Carol, who has no bucket yet, makes hers in memory: that would bypass the quota (and take
    the server's RAM), and her account's limits refuse it; a bucket on disk is fine."""
    bucket = subjects.bucket_files("carol")
    js = jetstream(conns["carol"])
    with pytest.raises(nats.js.errors.APIError) as refused:
        await js.add_stream(
            name=subjects.obj_stream(bucket),
            subjects=[subjects.obj_subject(bucket, ">")],
            storage=api.StorageType.MEMORY,
        )
    assert refused.value.err_code == INSUFFICIENT_MEMORY, refused.value
    made = await files.upload(js, "carol", name("c.txt"), b"on disk")
    assert made.size == 7


def test_a_bus_with_many_clients_on_the_default_quota_starts(tmp_path: Path) -> None:
    """nats-server reserves each files account's `max_file` out of its `max_file_store` and
    refuses to start when they exceed it: with a fixed 5 GiB quota a bus with three clients
    did not start. The clients share what the store keeps beside the events and records."""
    store = UserStore(tmp_path)
    store.add("node1", "node", password=password("node1"), rounds=4)
    for i in range(40):
        store.add(f"user{i}", "client", password=password(f"user{i}"), rounds=4)
    room = SECURE_FILE_STORE - EVENTS_MAX_BYTES - RECORDS_MAX_BYTES
    assert client_files_quota(FILES_QUOTA, SECURE_FILE_STORE, 1) == min(FILES_QUOTA, room)
    assert f"max_file: {room // 40}, max_mem: 0" in store.conf_file.read_text()
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=tmp_path / "store", config=store.conf_file)
    ).start()
    server.stop()
    with pytest.raises(ConfigError, match="file_store"):
        render_conf(store.load(), file_store=EVENTS_MAX_BYTES + RECORDS_MAX_BYTES)


def test_the_quota_is_rendered_and_checked() -> None:
    from kodo_bus.auth import User

    users = [User(name="alice", role="client", password_hash="x")]
    default = render_conf(users)
    assert f"jetstream: {{ max_file: {FILES_QUOTA}, max_mem: 0 }}" in default
    assert "max_file: 1024, max_mem: 0" in render_conf(users, files_quota=1024)
    with pytest.raises(ConfigError, match="files_quota"):
        render_conf(users, files_quota="5GB")  # type: ignore[arg-type]
