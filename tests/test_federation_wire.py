"""View messages between registries, taken in without decoding what is already known.

The registry-side decoder (`Peers.decode`) skips the flows of every catalog while cutting a
message apart and decodes a catalog only when its bytes are new; these tests hold it to the
same answers as a plain `decode_msg` of the whole `RegistryView`, and show what it skips.
No NATS here: decoding is pure (the federation itself runs in tests/test_federation_topology.py).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgpack
import pytest

from kodo_bus import peers as peers_mod
from kodo_bus.codec import CONTENT_TYPE, MSGPACK, decode_msg, encode
from kodo_bus.errors import WireError
from kodo_bus.models import Catalog, FlowInfo, Heartbeat, NodeEntry, RegistryView
from kodo_bus.peers import Peers, parse_view
from kodo_bus.view import View

ME = "me"


def catalog(node: str, flows: int = 3, revision: int = 1) -> Catalog:
    return Catalog(
        node=node,
        organization="org",
        revision=revision,
        flows=[
            FlowInfo(
                name=f"f{j}",
                summary=f"flow {j}",
                tags=["t"],
                input_schema={"type": "object", "properties": {"x": {"type": "string"}}},
            )
            for j in range(flows)
        ],
    )


def make_peers() -> Peers:
    settings = SimpleNamespace(id=ME, connect=[], feeds=True, heartbeat=1.0)
    registry: Any = SimpleNamespace(settings=settings, view=View(ME), changed=None, nc=None)
    return Peers(registry)


class Msg:
    def __init__(self, data: bytes) -> None:
        self.subject = "kodo.registry.other.view"
        self.data = data
        self.headers = {CONTENT_TYPE: MSGPACK}


def message(sender: Peers, entries: list[NodeEntry], **fields: Any) -> Any:
    head = {"v": 1, "registry": "other", "kind": "changes", "epoch": "e", "seq": 1, **fields}
    packed = [sender.pack(e, [*e.path, "other"]) for e in entries]
    return Msg(peers_mod._pack(head, packed, "nodes"))


def test_an_entry_packed_reads_as_encode_writes_it() -> None:
    entry = NodeEntry(
        catalog=catalog("n1"),
        status="offline",
        last_seen=12.5,
        heartbeat=Heartbeat(node="n1", revision=1, ts=3.0),
        via="x",
        replicas=2,
        path=["a"],
    )
    peers = make_peers()
    assert msgpack.unpackb(peers.pack(entry)) == msgpack.unpackb(encode(entry)[0])
    flows = [f.model_dump(mode="json", exclude_none=True) for f in entry.catalog.flows]
    assert bytes(peers._flows_of(entry.catalog)) == msgpack.packb(flows)
    # a new catalog object sharing the flows: its bytes built from the flows' bytes held
    moved = entry.catalog.model_copy(update={"urls": ["nats://x:4222"]})
    assert moved.flows is entry.catalog.flows
    packed = peers.pack(entry.model_copy(update={"catalog": moved}))
    assert msgpack.unpackb(packed)["catalog"] == moved.model_dump(mode="json", exclude_none=True)
    assert bytes(peers._flows_of(moved)) == msgpack.packb(flows)


def test_decode_agrees_with_a_plain_decode() -> None:
    sender = make_peers()
    entries = [NodeEntry(catalog=catalog(f"n{i}"), path=["a"]) for i in range(5)]
    msg = message(sender, entries, urls=["nats://other:4222"])
    view, problems = make_peers().decode(msg, None)
    assert problems == []
    plain = decode_msg(msg, RegistryView)
    for entry in plain.nodes:  # what `View._copy` does to a plain decode's entries
        entry.catalog = entry.catalog.model_copy(update={"urls": plain.urls})
    assert view == plain


def test_a_catalog_seen_before_is_not_decoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    sender, receiver = make_peers(), make_peers()
    msg = message(sender, [NodeEntry(catalog=catalog("n1"), path=["a"])])
    first, _ = receiver.decode(msg, ["nats://b"])
    calls = 0
    validate = Catalog.model_validate

    def counting(obj: Any, *args: Any, **kwargs: Any) -> Catalog:
        nonlocal calls
        calls += 1
        return validate(obj, *args, **kwargs)

    monkeypatch.setattr(Catalog, "model_validate", counting)
    again, _ = receiver.decode(msg, ["nats://b"])
    assert calls == 0
    assert again.nodes[0].catalog is first.nodes[0].catalog
    # the same catalog with urls to fill from another bus: another catalog (its urls differ)
    other, _ = receiver.decode(msg, ["nats://c"])
    assert other.nodes[0].catalog.urls == ["nats://c"]


def test_entries_that_came_around_a_loop_are_removals() -> None:
    sender, receiver = make_peers(), make_peers()
    looped = NodeEntry(catalog=catalog("n1"), path=["x", ME])
    fine = NodeEntry(catalog=catalog("n2"), path=["x"])
    view, _ = receiver.decode(message(sender, [looped, fine]), None)
    assert [e.catalog.node for e in view.nodes] == ["n2"]
    assert view.removed == ["n1"]
    full, _ = receiver.decode(message(sender, [looped, fine], kind="full"), None)
    assert [e.catalog.node for e in full.nodes] == ["n2"] and full.removed == []


def test_a_bad_entry_is_left_out_and_named() -> None:
    sender = make_peers()
    bad = NodeEntry(catalog=catalog("n1").model_copy(update={"node": "bad id"}), path=[])
    good = NodeEntry(catalog=catalog("n2"), path=[])
    view, problems = make_peers().decode(message(sender, [bad, good]), None)
    assert [e.catalog.node for e in view.nodes] == ["n2"]
    assert len(problems) == 1 and "bad id" in problems[0]


def test_garbage_is_a_wire_error() -> None:
    with pytest.raises(WireError):
        parse_view("s", b"\x81\xa5nodes\x91\x01")
    with pytest.raises(WireError):
        parse_view("s", msgpack.packb({"registry": "x"}) + b"\x00")


def test_a_json_view_follows_the_same_rules() -> None:
    """A foreign publisher's JSON view is decoded whole, then held to the msgpack path's rules:
    loops left out (removals in `changes`), entries with bad names left out and named."""
    looped = NodeEntry(catalog=catalog("n1"), path=["x", ME])
    bad = NodeEntry(catalog=catalog("n3").model_copy(update={"node": "bad id"}), path=["x"])
    fine = NodeEntry(catalog=catalog("n2"), path=["x"])
    view = RegistryView(
        registry="other", kind="changes", epoch="e", seq=1, nodes=[looped, bad, fine]
    )
    body, headers = encode(view, "application/json")
    msg: Any = Msg(body)
    msg.headers = headers
    decoded, problems = make_peers().decode(msg, None)
    assert [e.catalog.node for e in decoded.nodes] == ["n2"]
    assert decoded.removed == ["n1"]
    assert len(problems) == 1 and "bad id" in problems[0]


def full(epoch: str, seq: int, part: int, parts: int, *nodes: str) -> RegistryView:
    entries = [NodeEntry(catalog=catalog(n), path=["other"]) for n in nodes]
    return RegistryView(
        registry="other", kind="full", epoch=epoch, seq=seq, part=part, parts=parts, nodes=entries
    )


def test_a_full_missing_a_part_brings_what_arrived_and_asks_with_a_growing_wait() -> None:
    """A receiver too busy to read loses a part of a `full`: the parts that did arrive are
    taken in all the same (before, the whole `full` was dropped and asked for again every
    second, tens of MB each time at 10,000 nodes); nothing is removed until a whole one
    arrives; asks come further and further apart until it does."""
    peers = make_peers()
    view = peers.registry.view
    peers.receive(full("e1", 1, 0, 1, "old"), None)
    assert set(view.entries) == {"old"}
    state = peers._in[("other", "")]
    assert state.synced

    peers.receive(full("e2", 1, 0, 3, "n1"), None)
    peers.receive(full("e2", 3, 2, 3, "n3"), None)  # part 1 (seq 2) lost
    assert set(view.entries) == {"old", "n1", "n3"}  # nothing removed on an incomplete full
    assert not state.synced
    asked, wait = state.asked, state.backoff
    assert asked > 0 and wait > 0
    peers.receive(RegistryView(registry="other", kind="beat", epoch="e2", seq=4), None)
    assert state.asked == asked  # within the wait: no second ask
    state.asked -= wait  # the wait has passed
    peers.receive(RegistryView(registry="other", kind="beat", epoch="e2", seq=5), None)
    assert state.asked > asked - wait and state.backoff == 2 * wait

    peers.receive(full("e2", 6, 0, 2, "n1"), None)
    peers.receive(full("e2", 7, 1, 2, "n3"), None)
    assert set(view.entries) == {"n1", "n3"}  # a whole full: "old" is gone
    assert state.synced and state.backoff == 0
