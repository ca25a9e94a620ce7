"""Files on the secure profile: each client's bucket is private to it (and to the services).

One Object Store bucket per client (`KODO_FILES_<user>`) in a store account per client
(`accounts.FILES_ACCOUNT`). Bob's attacks on alice's files: through the API he may not use
(each a permission violation), through the API of his own bucket with alice's subjects as reply
or delivery subject, and by reconfiguring his own bucket's stream to capture alice's subjects
(both land in his own files account, where nothing of alice's passes).
"""

# ruff: noqa: F811  (pytest fixtures imported from test_security are parameters here)
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest
from nats.js import api

from kodo_bus import files, subjects
from kodo_bus.bus import jetstream
from kodo_bus.models import File

from .test_security import login, secure, settings, stored  # noqa: F401  (module fixtures)
from .test_security_reflection import heard_nothing

NO_ANSWER = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,  # no responders, as nats-py says it for JetStream
)
SECRET = b"alice's secret file " * 1000
API = subjects.JS_API_KODO
ALICE = subjects.bucket_files("alice")
ALICE_STREAM = subjects.obj_stream(ALICE)
BOB = subjects.bucket_files("bob")
BOB_STREAM = subjects.obj_stream(BOB)
OVERLAP = 10065
"""JetStream `err_code`: the subjects overlap with another stream of the account."""


async def alice_file(login: Any) -> File:
    """Alice uploads a file of her own (creating her bucket on first use)."""
    alice = await login("alice")
    name = subjects.file_name(os.urandom(16).hex(), "in", "data/secret.txt")
    ref = await files.upload(jetstream(alice.nc), "alice", name, SECRET)
    alice.clean()
    return ref


async def test_alice_and_the_services_use_her_bucket(login: Any, tmp_path: Path) -> None:
    ref = await alice_file(login)
    assert (ref.bucket, ref.size) == (ALICE, len(SECRET))
    assert ref.digest == hashlib.sha256(SECRET).hexdigest()
    alice = await login("alice")
    js = jetstream(alice.nc)
    assert (await files.download(js, ref, tmp_path / "a")).read_bytes() == SECRET
    # a node reads her input and hands her an output, as a worker does
    node = await login("node1")
    node_js = jetstream(node.nc)
    assert (await files.download(node_js, ref, tmp_path / "n")).read_bytes() == SECRET
    execution = ref.name.split("/")[0]
    out = subjects.file_name(execution, "out", "result.txt")
    made = await files.upload(node_js, "alice", out, b"for alice")
    assert (await files.download(js, made, tmp_path / "r")).read_bytes() == b"for alice"
    assert sorted(await files.names_of(js, "alice", execution)) == sorted([ref.name, out])
    assert await files.delete(js, "alice", execution) == 2
    node.clean()
    alice.clean()


async def test_bob_cannot_reach_alices_bucket(login: Any, tmp_path: Path) -> None:
    """Every JetStream API of alice's bucket and its put subjects: a violation for bob."""
    ref = await alice_file(login)
    bob = await login("bob")
    js = jetstream(bob.nc, timeout=1.0)
    meta = subjects.obj_subject(ALICE, "M." + base64.urlsafe_b64encode(ref.name.encode()).decode())
    attacks: list[tuple[Callable[[], Awaitable[Any]], str]] = [
        (lambda: js.object_store(ALICE), f"STREAM.INFO.{ALICE_STREAM}"),
        (lambda: js.get_last_msg(ALICE_STREAM, meta), f"STREAM.MSG.GET.{ALICE_STREAM}"),
        (lambda: js.get_last_msg(ALICE_STREAM, meta, direct=True), f"DIRECT.GET.{ALICE_STREAM}"),
        (
            lambda: js.subscribe(subjects.obj_subject(ALICE, ">"), stream=ALICE_STREAM),
            f"CONSUMER.CREATE.{ALICE_STREAM}",
        ),
        (lambda: js.purge_stream(ALICE_STREAM), f"STREAM.PURGE.{ALICE_STREAM}"),
        (lambda: js.delete_stream(ALICE_STREAM), f"STREAM.DELETE.{ALICE_STREAM}"),
        (
            lambda: js.publish(subjects.obj_subject(ALICE, "C.forged"), b"x"),
            subjects.obj_subject(ALICE, "C.forged"),
        ),
    ]
    for attack, fragment in attacks:
        with pytest.raises(NO_ANSWER):
            await attack()
        await bob.violation(fragment)
        bob.errors.clear()
    # and what the SDK does with a reference to alice's file, when bob got hold of one
    with pytest.raises(NO_ANSWER):
        await files.download(js, ref, tmp_path / "never-written")
    await bob.violation(f"STREAM.INFO.{ALICE_STREAM}")
    assert await asyncio.to_thread(os.listdir, tmp_path) == []  # not even a partial file


async def test_reflection_through_bobs_own_bucket(login: Any, tmp_path: Path) -> None:
    """Bob uses the API he may use (his own bucket's) with alice's subjects as the reply and as
    a consumer's delivery subject, and makes his stream capture alice's subjects: none of it
    reaches alice, nor her bucket."""
    ref = await alice_file(login)
    alice = await login("alice")
    alice_js = jetstream(alice.nc)
    before = (await alice_js.stream_info(ALICE_STREAM)).state.messages
    listener = await alice.nc.subscribe(subjects.inbox("alice") + ".>")
    await alice.nc.flush()

    bob = await login("bob")
    bob_js = jetstream(bob.nc)
    mine = subjects.file_name(os.urandom(16).hex(), "in", "x/own.txt")
    await files.upload(bob_js, "bob", mine, b"bob's own")  # creates bob's bucket
    # 1. his own API answering onto alice's inbox and onto her bucket's put subjects
    for reply in (subjects.inbox("alice") + ".steal", subjects.obj_subject(ALICE, "C.forged")):
        await bob.nc.publish(f"{API}.STREAM.INFO.{BOB_STREAM}", b"", reply=reply)
    await bob.nc.flush()
    # 2. a push consumer on his own bucket delivering onto alice's subjects
    for target in (subjects.inbox("alice") + ".push", subjects.obj_subject(ALICE, "C.pushed")):
        push = api.ConsumerConfig(deliver_subject=target, ack_policy=api.AckPolicy.NONE)
        await bob_js.add_consumer(BOB_STREAM, config=push)
    # 3. his stream reconfigured to capture alice's inbox (her downloads' deliveries) and her
    #    bucket's subjects; a capture that overlaps a stream of the account is refused (10065)
    config = (await bob_js.stream_info(BOB_STREAM)).config
    own = list(config.subjects or [])
    for extra in (subjects.inbox("alice") + ".>", subjects.obj_subject(ALICE, ">")):
        config.subjects = [*own, extra]
        try:
            await bob_js.update_stream(config)
        except nats.js.errors.BadRequestError as exc:
            assert exc.err_code == OVERLAP, exc
            continue
        own = list(config.subjects)
    bob.clean()

    await heard_nothing(listener)
    assert (await alice_js.stream_info(ALICE_STREAM)).state.messages == before
    # alice's files keep flowing in her account only: bob's stream captures none of them
    captured = (await bob_js.stream_info(BOB_STREAM)).state.messages
    again = await files.upload(alice_js, "alice", ref.name.replace("secret", "second"), SECRET)
    assert (await files.download(alice_js, again, tmp_path / "b")).read_bytes() == SECRET
    assert (await bob_js.stream_info(BOB_STREAM)).state.messages == captured
    alice.clean()


async def test_a_monitor_does_not_read_files(login: Any) -> None:
    """Monitors read every event and record, not the files: their account imports no bucket."""
    await alice_file(login)
    mon = await login("mon")
    js = jetstream(mon.nc, timeout=1.0)
    with pytest.raises((*NO_ANSWER, nats.js.errors.NotFoundError)):
        await js.object_store(ALICE)
    with pytest.raises(NO_ANSWER):
        await js.get_last_msg(ALICE_STREAM, subjects.obj_subject(ALICE, "M.>"), direct=True)
