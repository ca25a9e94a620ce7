"""Split horizon by the registries heard on a bus (issue 18, the 5-bus chain): every registry
listening on a bus hears the streams sent there, so an entry whose chosen copy came from one of
them is not sent back there (in the chain the middle registries sent half of every view back
where it came from). Pure: the rule and the streams a registry tracks, no NATS."""

from __future__ import annotations

from kodo_bus import peers as peers_mod
from kodo_bus.models import NodeEntry
from kodo_bus.peers import _split_horizon

from .test_federation_wire import catalog, make_peers


def test_an_entry_is_not_sent_back_to_the_bus_its_copy_was_heard_on() -> None:
    peers = make_peers()
    peers._in[("r3", "nats://b2")] = peers_mod._Inbound()
    peers._in[("r4", "")] = peers_mod._Inbound()
    via_r3 = NodeEntry(catalog=catalog("n3"), via="r3", path=["r3"])
    via_r4 = NodeEntry(catalog=catalog("n4"), via="r4", path=["r4"])
    local = NodeEntry(catalog=catalog("n2").model_copy(update={"urls": ["nats://b2"]}))
    entries = [via_r3, via_r4, local]
    bodies = [b"3", b"4", b"2"]
    assert peers._heard_on("nats://b2") == {"r3"}
    assert peers._heard_on("") == set()  # our own bus: every entry goes out (a provider)
    kept, skipped = _split_horizon("nats://b2", entries, bodies, peers._heard_on("nats://b2"))
    assert (kept, skipped) == ([b"4"], ["n3", "n2"])
    kept, skipped = _split_horizon("nats://b1", entries, bodies, peers._heard_on("nats://b1"))
    assert (kept, skipped) == (bodies, [])
    assert _split_horizon("", entries, bodies, {"r3", "r4"}) == (bodies, [])
