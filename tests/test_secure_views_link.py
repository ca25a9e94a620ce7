"""A registry reads the views of a secure `connect` bus through its `KODO_VIEWS` stream too (issue
18 review).

On the secure profile a user may subscribe to its own inboxes only (`_INBOX_<user>`); the
JetStream API answers on the requester's reply inbox. The connection reading a link's views made
no such inbox, every JetStream request timed out there, and the link's views (the chain's, where
the slow-consumer cuts were) fell back to a core subscription. A real secure nats-server as the
link bus, a plain one as the registry's own, a real `kodo-bus run` registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from kodo_bus import subjects
from kodo_bus.auth import UserStore
from kodo_bus.bus import connect
from kodo_bus.codec import CONTENT_TYPE, MSGPACK
from kodo_bus.config import ConnectSettings, Credentials, ServerSettings
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .test_federation import eventually, nodes
from .test_federation_resume import far, view

USERS = {"lreg": "registry", "lreg2": "registry"}


def password(name: str) -> str:
    return f"secret-of-{name}"


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[NatsServer]:
    store = UserStore(tmp_path / "conf")
    for name, role in USERS.items():
        store.add(name, role, password=password(name), rounds=4)
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=tmp_path / "store", config=store.conf_file)
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def sender(secure: NatsServer) -> AsyncIterator[NATS]:
    nc = await connect(
        ConnectSettings(
            nats=[secure.url],
            retry=0,
            credentials=Credentials(user="lreg2", password=password("lreg2")),
            inbox_prefix=subjects.inbox("lreg2"),
        )
    )
    try:
        yield nc
    finally:
        await nc.close()


@pytest.mark.slow
async def test_a_secure_link_is_read_through_its_stream(
    secure: NatsServer,
    sender: NATS,
    server_factory: Callable[[str], NatsServer],
    procs: Processes,
    tmp_path: Path,
) -> None:
    home = server_factory("home")  # no auth: the credentials are the link's
    log = tmp_path / "lreg.log"
    procs.start(
        "run", "--role", "registry", "--id", "lreg", "--nats", home.url,
        "--connect", secure.url, "--heartbeat", "0.5", "--cache-reset",
        "--log-file", str(log),
        env={"KODO_USER": "lreg", "KODO_PASSWORD": password("lreg")}, cwd=str(REPO),
    )  # fmt: skip
    home_nc = await connect(ConnectSettings(nats=[home.url], retry=0))
    try:

        async def logged() -> str:
            return log.read_text() if log.exists() else ""

        where = f"views on {secure.url} read"
        text = await eventually(logged, lambda t: where in t, timeout=20)
        assert f"{where} through the stream" in text, text
        body = view("full", 1, ["far-0"], part=0, parts=1, registry="lreg2")
        await sender.publish(subjects.registry_view("lreg2"), body, headers={CONTENT_TYPE: MSGPACK})
        await sender.flush()
        await eventually(lambda: nodes(home_nc, "lreg"), lambda p: far(p) == {"far-0"})
    finally:
        await home_nc.close()
