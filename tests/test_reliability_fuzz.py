"""Bad input: well over 1,000 malformed, oversized, wrong-schema and wrong-subject messages to
every subject a registry and a node listen on. Both stay up, count the rejects, answer valid
requests afterwards, and the registry's view is unchanged.

Hypothesis generates the messages (all of them first, in one collecting run); they are then sent
in concurrent batches and the services are checked once at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import nats.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from pydantic import BaseModel

from kodo_bus import subjects
from kodo_bus.bus import connect, request
from kodo_bus.client import Client
from kodo_bus.codec import CONTENT_TYPE, JSON, MSGPACK, decode, encode
from kodo_bus.config import ConnectSettings
from kodo_bus.errors import WireError
from kodo_bus.models import (
    Bye,
    Catalog,
    Empty,
    FlowsPage,
    FlowsQuery,
    Heartbeat,
    LaunchRequest,
    NodesPage,
    RegistryView,
    ServiceInfo,
    SyncRequest,
)
from kodo_bus.server import NatsServer

from .conftest import Processes
from .invariants import check_bus
from .test_reliability_support import eventually, node_body, online_flow, service

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REGISTRY, NODE = "fz-reg", "fz-node"
MIN_MESSAGES = 1000

# What each subject decodes, so the test knows which generated messages must be rejects.
ANNOUNCE: dict[str, type[BaseModel]] = {"catalog": Catalog, "heartbeat": Heartbeat, "bye": Bye}
PUBLISHED: list[tuple[str, type[BaseModel] | None]] = [
    (subjects.SYNC, SyncRequest),
    (subjects.registry_view("fz-peer"), RegistryView),
    (subjects.registry_view(REGISTRY), RegistryView),  # "from itself": ignored
]
REQUESTS: list[str] = [
    *(f"kodo.svc.{s}.{e}" for s in (REGISTRY, NODE) for e in ("info", "flows", "nodes")),
    *(subjects.svc_disconnect(s) for s in (REGISTRY, NODE)),
    subjects.svc_catalog(NODE),
    subjects.launch("local", NODE, "strict"),
    subjects.launch("local", NODE, "no-such-flow"),
    subjects.launch("someone", NODE, "echo"),
]
MODELS: list[type[BaseModel]] = [
    Catalog,
    Heartbeat,
    Bye,
    SyncRequest,
    RegistryView,
    FlowsQuery,
    LaunchRequest,
]


@dataclass
class Message:
    subject: str
    body: bytes
    headers: dict[str, str] | None
    request: bool


# -- strategies ----------------------------------------------------------------------------------
token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def wrong_schema(draw: st.DrawFn) -> dict[str, Any]:
    """A message model's own field names with values of any type (mostly the wrong one)."""
    model = draw(st.sampled_from(MODELS))
    names = sorted(model.model_fields)
    keys = draw(st.lists(st.sampled_from(names), max_size=len(names), unique=True))
    data = {k: draw(values) for k in keys}
    if draw(st.booleans()):
        data[draw(st.text(max_size=8))] = draw(values)
    return data


def _pack(data: Any, how: str) -> bytes:
    if how == "json":
        return json.dumps(data).encode()
    return bytes(msgpack.packb(data))


bodies = st.one_of(
    st.binary(max_size=256),
    st.integers(min_value=200_000, max_value=2_000_000).map(lambda n: b"\xff" * n),  # oversized
    st.integers(min_value=200_000, max_value=1_000_000).map(  # oversized but well-formed JSON
        lambda n: json.dumps({"node": "x" * n, "flows": [{}] * 10}).encode()
    ),
    st.tuples(values, st.sampled_from(["json", "msgpack"])).map(lambda t: _pack(*t)),
    st.tuples(wrong_schema(), st.sampled_from(["json", "msgpack"])).map(lambda t: _pack(*t)),
)
headers = st.one_of(
    st.none(),
    st.sampled_from([JSON, MSGPACK, "text/plain", "application/x-bogus", ""]).map(
        lambda ct: {CONTENT_TYPE: ct}
    ),
    st.dictionaries(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=12),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20),
        max_size=3,
    ),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kind = draw(st.sampled_from(["announce", "foreign", "published", "request", "wrong"]))
    body, hdrs = draw(bodies), draw(headers)
    if kind == "announce":  # another node's announcement, broken
        what = draw(st.sampled_from([*ANNOUNCE, "gossip", "x"]))
        return Message(f"kodo.node.{draw(token)}.{what}", body, hdrs, False)
    if kind == "foreign":  # a valid catalog, but on another node's subject
        other = draw(token)
        cat = Catalog(node=f"{other}-not", revision=1, started=time.time(), flows=[])
        body, hdrs = encode(cat, draw(st.sampled_from([JSON, MSGPACK])))
        return Message(subjects.node_catalog(other), body, hdrs, False)
    if kind == "published":
        return Message(draw(st.sampled_from(PUBLISHED))[0], body, hdrs, False)
    if kind == "request":
        return Message(draw(st.sampled_from(REQUESTS)), body, hdrs, True)
    subject = draw(  # subjects next to the ones the services listen on
        st.sampled_from(
            [
                f"kodo.node.{NODE}",
                "kodo.node.a.b.c.d",
                f"kodo.svc.{REGISTRY}.{draw(token)}",
                f"kodo.launch.local.{NODE}",
                f"kodo.launch.{draw(token)}.{NODE}.{draw(token)}.extra",
                f"kodo.exec.local.{draw(token)}.{draw(token)}",
                subjects.exec_cancel("local", "0" * 32),  # no such execution: nobody listens
                "kodo.sync.more",
                f"kodo.registry.{draw(token)}",
            ]
        )
    )
    return Message(subject, body, hdrs, draw(st.booleans()))


def generate() -> list[Message]:
    out: list[Message] = []

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(messages(), min_size=30, max_size=40))
    def collect(batch: list[Message]) -> None:
        out.extend(batch)

    while len(out) < MIN_MESSAGES:
        collect()
    return out


def must_reject(msg: Message) -> bool:
    """Whether the receiving service has to count this message as a reject."""
    parts = msg.subject.split(".")
    if msg.request or len(parts) != 4 or parts[:2] != ["kodo", "node"]:
        return False
    model = ANNOUNCE.get(parts[3])
    if model is None:
        return True
    try:
        decoded = decode(msg.subject, msg.body, msg.headers, model)
    except WireError:
        return True
    return getattr(decoded, "node", None) != parts[2]


def is_disconnect(msg: Message) -> bool:
    """A body that happens to be a valid `Empty` would really disconnect the service."""
    if not msg.subject.endswith(".disconnect"):
        return False
    try:
        decode(msg.subject, msg.body, msg.headers, Empty)
    except WireError:
        return False
    return True


# -- the test ------------------------------------------------------------------------------------
async def _send(nc: NATS, batch: list[Message]) -> list[str]:
    """Send a batch concurrently; the subjects of the requests nobody answered."""

    async def one(msg: Message) -> str | None:
        if not msg.request:
            await nc.publish(msg.subject, msg.body, headers=msg.headers)
            return None
        try:
            await nc.request(msg.subject, msg.body, timeout=5, headers=msg.headers)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            return f"{msg.subject} {type(exc).__name__}"
        return None

    unanswered = await asyncio.gather(*(one(m) for m in batch))
    await nc.flush()
    return [u for u in unanswered if u is not None]


async def _state(nc: NATS) -> tuple[Any, ...]:
    """What a reader of the registry's view sees (heartbeat ages and loads left out)."""
    page = await request(
        nc, subjects.svc_flows(REGISTRY), FlowsQuery(limit=1000), FlowsPage, timeout=5
    )
    listed = await request(nc, subjects.svc_nodes(REGISTRY), Empty(), NodesPage, timeout=5)
    return (
        sorted((f.node, f.name, f.status) for f in page.items),
        sorted((n.id, n.status, n.flows) for n in listed.items),
    )


async def _info(nc: NATS, service: str) -> ServiceInfo:
    return await request(nc, subjects.svc_info(service), Empty(), ServiceInfo, timeout=5)


async def test_fuzz_every_subject(
    fresh_server: NatsServer, ray_address: str, procs: Processes, tmp_path: Path
) -> None:
    """What is lost: nothing — the bad messages are dropped and counted, the view is intact."""
    urls = [fresh_server.url]
    reg = service(procs, tmp_path, urls, id=REGISTRY, role="registry")
    node = service(procs, tmp_path, urls, ray_address, **node_body(NODE))
    corpus = [m for m in await asyncio.to_thread(generate) if not is_disconnect(m)]
    assert len(corpus) >= MIN_MESSAGES
    nc = await connect(ConnectSettings(nats=urls))
    try:
        async with Client(urls) as kb:
            await online_flow(kb, f"{NODE}/strict")
        before = await _state(nc)
        rejected_before = (await _info(nc, REGISTRY)).rejected
        unanswered: list[str] = []
        for i in range(0, len(corpus), 100):
            unanswered += await _send(nc, corpus[i : i + 100])
        assert reg.poll() is None and node.poll() is None, "a service died"
        expected = sum(must_reject(m) for m in corpus)
        assert expected > 100
        info = await eventually(
            lambda: _info(nc, REGISTRY),
            lambda i: i.rejected - rejected_before >= expected,
            timeout=30,
        )
        assert info.nodes == 1
        assert (await _info(nc, NODE)).rejected > 0  # the broken kodo.sync messages
        assert await _state(nc) == before
        # every request to a subject a service listens on got a reply (an error, mostly)
        assert not [u for u in unanswered if u.split()[0] in REQUESTS], unanswered
        async with Client(urls) as kb:
            ex = await (await kb.flow(f"{NODE}/strict")).launch({"token": "kodo-fuzz-ok"})
            assert await ex.result(timeout=60) == "kodo-fuzz-ok"
        print(f"{len(corpus)} messages, {expected} counted rejects")
    finally:
        await nc.close()
    (await check_bus(urls)).assert_ok()
