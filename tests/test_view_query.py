"""`View.flows` (the registry's indexed flows query) against the plain reference filter.

The registry answers flows queries from a text index maintained node by node and from item
bodies cached per catalog; whatever happens to the view (catalogs changing, nodes leaving, views
taken in from other registries, an index compacted), every answer must equal `query_flows` over
every flow item, and the encoded reply must be what `encode` makes of that page.
"""

from __future__ import annotations

import random
import time

import pytest

from kodo_bus import view as view_module
from kodo_bus.bench.simnodes import catalog
from kodo_bus.codec import JSON, MSGPACK, decode, encode
from kodo_bus.models import (
    Catalog,
    FlowInfo,
    FlowsPage,
    FlowsQuery,
    Heartbeat,
    NodeEntry,
    RegistryView,
)
from kodo_bus.view import View, flow_items, query_flows

WORDS = ["alpha", "Beta", "gamma", "ΣIGMA", "delta", "x", "flow", "Ab", "é"]
TAGS = ["bench", "gpu", "Cpu", "group1", "group2", ""]


def random_catalog(rng: random.Random, node: str, revision: int) -> Catalog:
    flows = []
    for j in range(rng.randint(0, 8)):
        words = rng.sample(WORDS, rng.randint(0, 3))
        flows.append(
            FlowInfo(
                # a name may repeat within a catalog (nothing forbids it): the name index
                # holds a mask per node, not a position
                name=f"{rng.choice(WORDS).lower()}{rng.choice([j, j, 0])}",
                summary=" ".join(words),
                description=rng.choice(["", "shared description", f"about {node}", "a\0b"]),
                tags=rng.sample(TAGS, rng.randint(0, 3)),
                timeout=rng.choice([None, 1.5]),
                input_schema=rng.choice([{}, {"type": "object"}]),
            )
        )
    return Catalog(
        node=node,
        organization=rng.choice(["", "acme", "other"]),
        revision=revision,
        flows=flows,
        urls=rng.choice([[], ["nats://elsewhere:4222"]]),
    )


def random_query(rng: random.Random, nodes: list[str]) -> FlowsQuery:
    return FlowsQuery(
        q=rng.choice(
            [None, "", "a", "ALPHA", "flow", "shared", "\u03c3", "about n", "a\0b", "\1", "zz"]
        ),
        name=rng.choice([None, None, None, "alpha0", "x1", "flow0", "missing"]),
        tags=rng.sample(TAGS, rng.choice([0, 0, 1, 2])),
        organization=rng.choice([None, None, "acme", ""]),
        node=rng.choice([None, None, None, *nodes[:3], "missing"]),
        offset=rng.choice([0, 0, 1, 5, 40]),
        limit=rng.choice([1, 3, 100]),
    )


def check(view: View, query: FlowsQuery) -> None:
    items = (item for entry in view.all_entries() for item in flow_items(entry))
    expected = query_flows(items, query)
    page = view.flows(query)
    assert page == expected, query
    for content_type in (MSGPACK, JSON):
        body, headers = view.flows_encoded(query, content_type)
        assert (body, headers) == encode(page, content_type), (query, content_type)
        assert decode("flows", body, headers, FlowsPage) == expected


@pytest.mark.parametrize("seed", range(16))
def test_indexed_query_matches_the_plain_filter_through_changes(seed: int) -> None:
    rng = random.Random(seed)
    local = random_catalog(rng, "local", 1) if seed % 2 else None
    view = View("me", local=local)
    nodes = [f"n{i}" for i in range(12)]
    for revision in range(1, 61):
        action = rng.random()
        node = rng.choice(nodes)
        if action < 0.45:
            view.put_catalog(random_catalog(rng, node, revision), time.time())
        elif action < 0.55 and node in view.entries:
            view.put_catalog(view.entries[node].catalog.model_copy(), time.time())  # same again
        elif action < 0.65:
            view.remove(node)
        elif action < 0.75:
            view.stopped(node)
        elif action < 0.9:
            entries = [
                NodeEntry(catalog=random_catalog(rng, f"p{i}", revision), status="offline")
                for i in range(rng.randint(0, 4))
            ]
            view.take_in(RegistryView(registry="peer", nodes=entries), ["nats://p"], time.time())
        else:
            view.load([NodeEntry(catalog=random_catalog(rng, node, revision))], time.time())
        for _ in range(4):
            check(view, random_query(rng, nodes))


def test_the_index_compacts_and_still_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(view_module._Values, "COMPACT_MIN", 5)
    view = View("me")
    for revision in range(1, 30):  # every catalog brings new values, the old ones fall out
        view.put_catalog(
            catalog(f"node-{revision % 3}", 4).model_copy(
                update={
                    "revision": revision,
                    "flows": [
                        FlowInfo(name=f"f{revision}-{j}", summary=f"s{revision}") for j in range(4)
                    ],
                }
            ),
            time.time(),
        )
        check(view, FlowsQuery(q="f"))
        check(view, FlowsQuery(q=f"s{revision}"))
    assert len(view._values.values) < 29 * 5  # compacted at least once


def test_an_unchanged_catalog_keeps_its_cached_bodies() -> None:
    view = View("me")
    view.put_catalog(catalog("n", 3), time.time())
    query = FlowsQuery(q="flow1")
    first = view.flows_encoded(query, MSGPACK)
    node = view._nodes["n"]
    view.put_catalog(catalog("n", 3).model_copy(update={"started": node.catalog.started}), 1.0)
    assert view.flows_encoded(query, MSGPACK) == first
    assert view._nodes["n"] is node  # the same catalog again: index and bodies kept
    view.stopped("n")
    offline = view.flows(query)
    assert {item.status for item in offline.items} == {"offline"}
    check(view, query)
    view.beat(Heartbeat(node="n", revision=node.catalog.revision), 2.0)  # back online
    assert view.flows_encoded(query, MSGPACK) == first
    check(view, query)


def test_a_text_searched_again_sees_the_values_added_since() -> None:
    """The index remembers the slots a text matched; values added later must still be found,
    values no flow holds any more must not."""
    view = View("me")
    view.put_catalog(catalog("n1", 3), time.time())
    query = FlowsQuery(q="zeta")
    check(view, query)
    assert "zeta" in view._values._memo
    zeta = [FlowInfo(name="z", summary="the zeta flow")]
    view.put_catalog(catalog("n2", 1).model_copy(update={"revision": 2, "flows": zeta}), 1.0)
    check(view, query)
    assert view.flows(query).total == 1
    view.remove("n2")
    check(view, query)
    assert view.flows(query).total == 0
    view.put_catalog(catalog("n3", 1).model_copy(update={"revision": 3, "flows": zeta}), 1.0)
    assert view.flows(query).total == 1


def test_catalogs_in_a_view_share_equal_schemas_and_keep_their_values() -> None:
    """Equal schemas become one object (memory at 200,000 flows); a schema that only compares
    equal (1 and 1.0, a flag and 1) is not taken for another, and nothing changes value."""

    def flows(schema: dict[str, object]) -> list[FlowInfo]:
        return [FlowInfo(name="f", description="same words", tags=["t"], input_schema=schema)]

    view = View("me")
    schemas: list[dict[str, object]] = [
        {"type": "object", "maximum": 1},
        {"type": "object", "maximum": 1},
        {"type": "object", "maximum": 1.0},
        {"type": "object", "maximum": True},
    ]
    sent = []
    for i, schema in enumerate(schemas):
        cat = Catalog.model_validate_json(
            Catalog(node=f"n{i}", revision=1, flows=flows(schema)).model_dump_json()
        )
        sent.append(cat.model_copy(deep=True))
        view.put_catalog(cat, 1.0)
    held = [view.entries[f"n{i}"].catalog for i in range(4)]
    assert held == sent
    got = [c.flows[0].input_schema for c in held]
    assert got[0] is got[1]
    assert got[2] is not got[0] and got[3] is not got[0] and got[3] is not got[2]
    assert [type(s["maximum"]) for s in got] == [int, int, float, bool]
    assert held[0].flows[0].description is held[3].flows[0].description
