"""Node ids, flow names and user names are subject tokens and KV keys, checked where they enter.

A name NATS routes but the KV refuses (`nø@de`, `n+o:de`) used to be taken into a registry's
view from a catalog; the registry then failed to store it, and, since one failed write stopped
the flush, stopped storing every other node too (forever, and a restart lost the later nodes).
Here: config and auth refuse such names at load, a registry refuses (and counts) catalogs,
heartbeats and republished views that carry them, and one entry that cannot be stored never
holds back the others. The registries are in-process `KodoService`s on a real nats-server.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from kodo_bus import subjects
from kodo_bus.auth import UserStore, permissions
from kodo_bus.codec import encode
from kodo_bus.config import ServiceSettings
from kodo_bus.errors import ConfigError
from kodo_bus.models import Catalog, FlowInfo, Heartbeat, NodeEntry, RegistryView
from kodo_bus.server import NatsServer
from kodo_bus.service import KodoService
from kodo_bus.snapshot import kv_keys

from .test_reliability_support import eventually

BAD_NAMES = ["nø@de", "n+o:de", "a.b", "a*", ">", "a b", "", "abc\n", "tab\there", "é"]
"""Not tokens: a KV key refuses the first two (NATS routes them), the rest break subjects
(`abc\\n`: a `$`-anchored `re.match` let a trailing newline through)."""


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# -- where names enter: subjects, config, auth ---------------------------------------------------
@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_token_refuses_what_is_not_a_subject_token_and_kv_key(name: str) -> None:
    with pytest.raises(ConfigError, match="cannot be used in NATS subjects"):
        subjects.check_token(name, "node id")


def test_check_token_takes_letters_digits_underscore_and_dash() -> None:
    assert subjects.check_token("Node_1-a", "node id") == "Node_1-a"


@pytest.mark.parametrize("name", ["nø@de", "n+o:de", "abc\n"])
def test_config_refuses_a_bad_node_id(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="cannot be used in NATS subjects"):
        ServiceSettings.build(env={}, overrides={"id": name})
    file = tmp_path / "node.yaml"
    file.write_text(f"id: {name!r}\nrole: node\n")
    with pytest.raises(ConfigError, match="cannot be used in NATS subjects"):
        ServiceSettings.build(file, env={})


@pytest.mark.parametrize("name", ["nø@de", "n+o:de", "my.flow"])
def test_config_refuses_a_bad_flow_name_at_load(tmp_path: Path, name: str) -> None:
    file = tmp_path / "node.yaml"
    file.write_text(f"id: n1\nflows:\n  - {{name: {name!r}, entry: 'examples.hello:hello'}}\n")
    with pytest.raises(ConfigError) as info:
        ServiceSettings.build(file, env={})
    assert str(file) in str(info.value) and "flows.0" in str(info.value)
    assert "flow name" in str(info.value)


def test_default_id_of_a_host_with_non_ascii_letters_is_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "hôst.exämple")
    settings = ServiceSettings(role="node")
    assert settings.id == "node-h-st-ex-mple"
    assert subjects.check_token(settings.id, "node id") == settings.id


@pytest.mark.parametrize("name", ["nø@de", "n+o:de", "alice\n", "al.ice"])
def test_auth_refuses_a_bad_user_name(tmp_path: Path, name: str) -> None:
    store = UserStore(tmp_path / "secure")
    with pytest.raises(ConfigError, match="cannot be used in NATS subjects"):
        store.add(name, "client", password="pw", rounds=4)
    assert store.load() == []
    with pytest.raises(ConfigError):
        permissions("client", name)


# -- where names enter: a registry ---------------------------------------------------------------


class Registries:
    """In-process registries on this test's own server (no other node's announcements there);
    every one still running is stopped at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.running: list[KodoService] = []

    async def start(self, registry: str) -> KodoService:
        settings = ServiceSettings(id=registry, role="registry", nats=[self.url], heartbeat=0.5)
        svc = KodoService(settings, [])
        self.running.append(svc)
        await svc.start()
        return svc

    async def stop(self, svc: KodoService) -> None:
        self.running.remove(svc)
        await asyncio.wait_for(svc.stop(), 30)


@pytest.fixture
async def registries(fresh_server: NatsServer) -> AsyncIterator[Registries]:
    regs = Registries(fresh_server.url)
    try:
        yield regs
    finally:
        for svc in reversed(regs.running):
            await asyncio.wait_for(svc.stop(), 30)


def catalog(node: str, *flows: str) -> Catalog:
    return Catalog(
        node=node,
        revision=1,
        instance="i1",
        flows=[FlowInfo(name=f, summary=f"flow {f}") for f in flows or ("f",)],
    )


async def announce(nc: NATS, cat: Catalog) -> None:
    """A node's catalog on its own subject, as a node (or an attacker with node rights) sends it."""
    body, headers = encode(cat)
    await nc.publish(subjects.node_catalog(cat.node), body, headers=headers)
    await nc.flush()


async def stored(nc: NATS, registry: str) -> set[str]:
    """Node ids in the registry's KV bucket (what a restarted registry would serve)."""
    keys = await kv_keys(nc.jetstream(), subjects.bucket_view(registry))
    return {key.removeprefix("node.") for key in keys}


def rejects_of(svc: KodoService) -> Callable[[], Awaitable[int]]:
    async def count() -> int:
        return svc.rejects.count

    return count


def in_view(svc: KodoService) -> set[str]:
    assert svc.registry is not None
    return set(svc.registry.view.entries)


async def test_catalog_from_a_bad_node_id_is_refused_and_never_stops_persistence(
    nc: NATS, registries: Registries
) -> None:
    """The issue's reproduction: `nø@de` and `n+o:de` announce, then a good node; before the
    fix both bad ids entered the view and the good node was (most likely) never stored."""
    registry = unique("reg-tok")
    svc = await registries.start(registry)
    before = svc.rejects.count
    for bad in ("nø@de", "n+o:de"):
        await announce(nc, catalog(bad))
        hb = Heartbeat(node=bad, revision=1, ts=time.time(), instance="i1")
        body, headers = encode(hb)
        await nc.publish(subjects.node_heartbeat(bad), body, headers=headers)
    good = unique("good")
    await announce(nc, catalog(good))
    await eventually(lambda: stored(nc, registry), lambda keys: good in keys, timeout=15)
    assert in_view(svc) == {good}
    # two catalogs, two heartbeats; the heartbeats come on their own subscription, so they
    # may be counted after the good catalog is stored
    await eventually(rejects_of(svc), lambda count: count - before >= 4, timeout=15)
    assert svc.rejects.count - before == 4
    # a later node is stored too (the flush is not stuck on a bad entry)
    later = unique("later")
    await announce(nc, catalog(later))
    await eventually(lambda: stored(nc, registry), lambda keys: later in keys, timeout=15)
    assert await stored(nc, registry) == {good, later}

    await registries.stop(svc)
    again = await registries.start(registry)  # the same bucket: a restart serves what was stored
    assert in_view(again) == {good, later}


async def test_catalog_with_a_bad_flow_name_is_refused(nc: NATS, registries: Registries) -> None:
    registry = unique("reg-flow")
    svc = await registries.start(registry)
    before = svc.rejects.count
    node = unique("node")
    await announce(nc, catalog(node, "fine", "n+o:de"))
    await announce(nc, catalog(node, "fine", "bad.name"))
    good = unique("good")
    await announce(nc, catalog(good, "fine"))
    await eventually(lambda: stored(nc, registry), lambda keys: good in keys, timeout=15)
    assert in_view(svc) == {good}
    assert node not in await stored(nc, registry)
    assert svc.rejects.count - before == 2


async def test_republished_view_keeps_its_good_entries_and_counts_the_bad(
    nc: NATS, registries: Registries
) -> None:
    """A peer's view is catalogs taken in: each entry is checked like a catalog."""
    registry, peer = unique("reg-feed"), unique("peer")
    svc = await registries.start(registry)
    before = svc.rejects.count
    good = unique("good")
    view = RegistryView(
        registry=peer,
        nodes=[
            NodeEntry(catalog=catalog("nø@de")),
            NodeEntry(catalog=catalog(good)),
            NodeEntry(catalog=catalog(unique("flow"), "n+o:de")),
        ],
    )
    body, headers = encode(view)
    await nc.publish(subjects.registry_view(peer), body, headers=headers)
    await eventually(lambda: stored(nc, registry), lambda keys: good in keys, timeout=15)
    assert in_view(svc) == {good}
    assert svc.rejects.count - before == 2
    # a view sent on a subject whose registry id is no token is refused whole
    body, headers = encode(
        RegistryView(registry="p+e:er", nodes=[NodeEntry(catalog=catalog(good))])
    )
    await nc.publish(subjects.registry_view("p+e:er"), body, headers=headers)
    await nc.flush()
    await eventually(lambda: _count(svc), lambda n: n - before == 3, timeout=15)


async def _count(svc: KodoService) -> int:
    return svc.rejects.count


async def test_one_entry_that_cannot_be_stored_never_holds_back_the_others(
    nc: NATS, registries: Registries
) -> None:
    """Belt and braces: an entry the KV refuses got into the view anyway (here put there by
    hand, past the checks); every other changed entry is still stored, on the same flush.

    Before the fix the flush stopped at the first failure and kept it queued, so unless the
    bad entry came last out of the set (1 chance in 41 here) some good ones were never stored.
    """
    registry = unique("reg-kv")
    svc = await registries.start(registry)
    assert svc.registry is not None
    reg = svc.registry
    goods = [unique(f"n{i}") for i in range(40)]
    now = time.time()
    for node in ["nø@de", *goods]:
        reg.view.put_catalog(Catalog(node=node, revision=1, instance="i1"), now)
    reg._mark("nø@de", *goods)
    await eventually(lambda: stored(nc, registry), lambda keys: set(goods) <= keys, timeout=20)
    assert "nø@de" not in await stored(nc, registry)
    # the bad entry is dropped (with an error), not queued again for ever
    await eventually(_none, lambda _: "nø@de" not in reg._dirty, timeout=10)


async def _none() -> None:
    return None
