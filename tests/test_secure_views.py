"""On the secure profile a registry reads views through the `KODO_VIEWS` stream too (issue 18).

The stream lives in the views store account: a registry's view publish in `KODO` crosses into it
(a service import of `kodo.registry.*.view`), and the registry makes the stream and reads it
under the API prefix with the rights `auth._registry` gives it. A real secure nats-server and a
real `kodo-bus run` registry; a second registry user publishes a view."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from kodo_bus import subjects
from kodo_bus.auth import UserStore
from kodo_bus.bus import connect, jetstream
from kodo_bus.codec import CONTENT_TYPE, MSGPACK
from kodo_bus.config import ConnectSettings, Credentials, ServerSettings
from kodo_bus.server import NatsServer

from .conftest import REPO, Processes
from .test_federation import eventually, nodes
from .test_federation_resume import far, view

USERS = {"vreg1": "registry", "vreg2": "registry", "vroot": "admin"}


def password(name: str) -> str:
    return f"secret-of-{name}"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    directory = tmp_path_factory.mktemp("secure-views")
    store = UserStore(directory)
    for name, role in USERS.items():
        store.add(name, role, password=password(name), rounds=4)
    server = NatsServer(
        ServerSettings(port=0, http_port=0, store=directory / "store", config=store.conf_file)
    ).start()
    try:
        yield server
    finally:
        server.stop()


async def login(server: NatsServer, name: str) -> NATS:
    return await connect(
        ConnectSettings(
            nats=[server.url],
            retry=0,
            credentials=Credentials(user=name, password=password(name)),
            inbox_prefix=subjects.inbox(name),
        )
    )


@pytest.fixture
async def root(secure: NatsServer) -> AsyncIterator[NATS]:
    nc = await login(secure, "vroot")
    try:
        yield nc
    finally:
        await nc.close()


@pytest.mark.slow
async def test_a_secure_registry_reads_views_through_the_stream(
    secure: NatsServer, root: NATS, procs: Processes, tmp_path: Path
) -> None:
    log = tmp_path / "vreg1.log"
    procs.start(
        "run", "--role", "registry", "--id", "vreg1", "--nats", secure.url,
        "--heartbeat", "0.5", "--cache-reset", "--log-file", str(log),
        env={"KODO_USER": "vreg1", "KODO_PASSWORD": password("vreg1")}, cwd=str(REPO),
    )  # fmt: skip
    await eventually(lambda: nodes(root, "vreg1"), lambda p: True, timeout=30)
    assert b"read through the stream" in log.read_bytes(), log.read_text()
    sender = await login(secure, "vreg2")
    core = await root.subscribe(subjects.REGISTRY_VIEW_ALL)  # in KODO, beside the import
    await root.flush()  # subscribed at the server before anything is published
    try:
        # another registry's view (its user may publish only its own view subject)
        body = view("full", 1, ["far-0", "far-1"], part=0, parts=1, registry="vreg2")
        await sender.publish(subjects.registry_view("vreg2"), body, headers={CONTENT_TYPE: MSGPACK})
        await sender.flush()
        await eventually(lambda: nodes(root, "vreg1"), lambda p: far(p) == {"far-0", "far-1"})
        # a core subscriber of the services account still hears it (providers, fallbacks)
        assert (await core.next_msg(timeout=5)).data == body
    finally:
        await core.unsubscribe()
        await sender.close()
    info = await jetstream(root).stream_info(subjects.STREAM_VIEWS)
    assert info.state.messages >= 1  # captured in the views store account
    assert b"core subscription" not in log.read_bytes()


if sys.platform == "win32":  # pragma: no cover
    pytest.skip("loopback nats-server tests need a POSIX host", allow_module_level=True)
