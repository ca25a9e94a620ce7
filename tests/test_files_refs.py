"""A `file` event is written by a flow: it names an object, and a reader (the SDK's `files()` /
`download()`, the web panel's downloads) fetches what it names. A flow naming another user's
object (or another execution's) must not make a reader with wider rights — an admin's script,
a panel on the default profile — fetch it: such references are dropped (`File.belongs_to`).
Real nats-server; the execution is written by hand as a node would leave it.
"""

from __future__ import annotations

import os

from kodo_bus import Client, files, subjects
from kodo_bus.bus import connect, ensure_execution_storage, jetstream
from kodo_bus.config import ConnectSettings
from kodo_bus.models import File
from kodo_bus.server import NatsServer
from kodo_bus.web.downloads import file_refs

from .test_execution_support import handmade


def ref(user: str, name: str) -> dict[str, object]:
    return File(bucket=subjects.bucket_files(user), name=name, size=3, digest="0" * 64).model_dump()


async def test_a_file_event_naming_another_users_object_is_dropped(
    fresh_server: NatsServer,
) -> None:
    nc = await connect(ConnectSettings(nats=[fresh_server.url], retry=0))
    execution = os.urandom(16).hex()
    own = f"{execution}/out/mine.txt"
    try:
        js = jetstream(nc)
        kv = await ensure_execution_storage(js, max_age=3600)
        await files.upload(js, "alice", "secret-run/out/secret.txt", b"abc")
        await handmade(
            js,
            kv,
            [
                ("file", ref("alice", "secret-run/out/secret.txt")),  # another user's
                ("file", ref(subjects.DEFAULT_USER, "other-run/out/theirs.txt")),  # not its own
                ("file", ref(subjects.DEFAULT_USER, own)),
                ("status", {"status": "finished"}),
            ],
            execution=execution,
            launcher=subjects.DEFAULT_USER,
            status="finished",
        )
        assert [r.name for r in await file_refs(js, subjects.DEFAULT_USER, execution)] == [own]
        async with Client(fresh_server.url) as kb:
            assert [r.name for r in await kb.execution(execution).files()] == [own]
    finally:
        await nc.close()
