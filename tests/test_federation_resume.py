"""What a view stream costs after the first `full` (issue 18, the 5-bus chain at 2,000 nodes per
bus): a change that keeps a node's catalog travels without it, a registry that already holds a
stream does not read a `full` sent for another one again, and an entry is not sent back to a bus
whose registries heard it there. The decoding side is pure (no NATS); the sending side runs
real `kodo-bus run` registries on real nats-servers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import nats
import pytest
from nats.aio.msg import Msg as NatsMsg

from kodo_bus import peers as peers_mod
from kodo_bus import subjects
from kodo_bus.models import NodeEntry, RegistryView
from kodo_bus.peers import SAME, Peers
from kodo_bus.server import NatsServer

from .conftest import Processes
from .test_federation import eventually, flows
from .test_federation_topology import announce, registry
from .test_federation_topology import catalog as big_catalog
from .test_federation_wire import Msg, catalog, full, make_peers, message


def stream_message(sender: Peers, entries: list[bytes], **fields: Any) -> Any:
    head = {"v": 1, "registry": "other", "kind": "changes", "epoch": "e", **fields}
    return Msg(peers_mod._pack(head, entries, "nodes"))


def take(peers: Peers, msg: Any, urls: list[str] | None = None) -> RegistryView:
    """What `Registry.on_view_msg` does with a view message: decode, then receive."""
    view, problems = peers.decode(msg, urls)
    assert problems == []
    peers.receive(view, urls)
    return view


def test_a_same_entry_takes_the_catalog_held_and_asks_when_it_is_not() -> None:
    sender, receiver = make_peers(), make_peers()
    cat = catalog("n1", flows=20)
    entry = NodeEntry(catalog=cat, path=["other"])
    first = [sender.pack(entry, ["other"])]
    take(receiver, stream_message(sender, first, kind="full", seq=1, part=0, parts=1))
    held = receiver.registry.view.entries["n1"].catalog
    offline = entry.model_copy(update={"status": "offline"})
    stub = sender.pack_same(offline, ["other"])
    assert len(stub) < len(first[0]) / 4  # the catalog (20 flows with schemas) left out
    view = take(receiver, stream_message(sender, [stub], seq=2))
    assert view.nodes[0].catalog is held
    assert receiver.registry.view.entries["n1"].status == "offline"
    state = receiver._in[("other", "")]
    assert state.synced and state.asked == 0

    # a receiver that never got the catalog (or holds another revision) asks for a `full`
    late = make_peers()
    take(late, stream_message(sender, [stub], seq=2))
    assert "n1" not in late.registry.view.entries
    assert late._in[("other", "")].asked > 0
    moved = make_peers()
    old = NodeEntry(catalog=catalog("n1", flows=20, revision=0), path=["other"])
    take(moved, stream_message(sender, [moved.pack(old, ["other"])], seq=1))
    take(moved, stream_message(sender, [stub], seq=2))
    assert moved.registry.view.entries["n1"].catalog.revision == 0
    assert moved._in[("other", "")].asked > 0


def test_a_registry_holding_a_stream_does_not_read_a_full_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another registry on the bus asked: the `full` reaches every listener. One that took the
    stream in, in order, reads only its head; one that missed a message takes it in."""
    peers = make_peers()
    view = peers.registry.view
    peers.receive(full("e1", 1, 0, 1, "n1", "n2"), None)
    assert peers._in[("other", "")].synced
    read: list[str] = []
    catalog_of = Peers._catalog

    def counting(self: Peers, node: object, *args: Any) -> Any:
        read.append(str(node))
        return catalog_of(self, node, *args)

    monkeypatch.setattr(Peers, "_catalog", counting)
    sender = make_peers()
    entries = [NodeEntry(catalog=catalog(n), path=["other"]) for n in ("n1", "n2")]
    again = message(sender, entries, kind="full", epoch="e1", seq=2, part=0, parts=1)
    take(peers, again)
    assert read == []
    assert set(view.entries) == {"n1", "n2"} and peers._in[("other", "")].synced

    # a gap (seq 3 missed): the next `full` is read and puts the entries right
    gap = message(sender, entries[:1], kind="full", epoch="e1", seq=4, part=0, parts=1)
    take(peers, gap)
    assert read == ["n1"]


def test_an_entry_is_not_sent_back_to_the_bus_it_was_heard_on() -> None:
    """Every registry listening on a bus hears the streams sent there: a copy taken from one of
    them is not sent back there (in a 5-bus chain, half of what the middle registries sent)."""
    peers = make_peers()
    peers._in[("r3", "nats://b2")] = peers_mod._Inbound()
    via_r3 = NodeEntry(catalog=catalog("n3"), via="r3", path=["r3"])
    via_r4 = NodeEntry(catalog=catalog("n4"), via="r4", path=["r4"])
    local = NodeEntry(catalog=catalog("n2").model_copy(update={"urls": ["nats://b2"]}))
    assert peers._horizon("nats://b2", [via_r3, via_r4, local]) == ([1], ["n3", "n2"])
    assert peers._horizon("nats://b1", [via_r3, via_r4, local]) == ([0, 1, 2], [])


async def test_a_status_change_crosses_a_link_without_its_catalog(
    procs: Processes, server_factory: Callable[[str], NatsServer]
) -> None:
    """A node turns offline on bus 0: the registry there sends bus 1 its new status in a few
    hundred bytes (before: the whole entry, catalog and all), and bus 1 lists it offline, with
    its flows."""
    bus0, bus1 = server_factory("s0"), server_factory("s1")
    nc0, nc1 = await nats.connect(bus0.url), await nats.connect(bus1.url)
    try:
        seen: list[tuple[bool, int]] = []

        async def on_view(msg: NatsMsg) -> None:
            for entry in msgpack.unpackb(msg.data).get("nodes", []):
                if entry["catalog"]["node"] == "n0":
                    seen.append((entry.get(SAME) is True, len(msgpack.packb(entry))))

        await nc1.subscribe(subjects.registry_view("ra"), cb=on_view)
        await nc1.flush()
        registry(procs, bus1, "rb")
        registry(procs, bus0, "ra", bus1)
        for nc, rid in ((nc0, "ra"), (nc1, "rb")):
            await eventually(lambda nc=nc, rid=rid: flows(nc, rid, limit=1), lambda p: True)  # type: ignore[misc]
        cat = big_catalog("n0", 100)
        await announce(nc0, cat)
        # not beating: the node turns offline one ttl later, on bus 0, then on bus 1
        page = await eventually(
            lambda: flows(nc1, "rb", limit=1, node="n0"),
            lambda p: bool(p.items) and p.items[0].status == "offline",
        )
        assert page.total == 100
        assert seen[0][0] is False and seen[0][1] > 3000  # first: the catalog (100 flows)
        assert seen[-1][0] is True and seen[-1][1] < 600, seen  # offline: the status alone
    finally:
        await nc0.drain()
        await nc1.drain()
