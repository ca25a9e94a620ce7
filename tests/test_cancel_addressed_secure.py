"""The SDK's cancel addressed to the execution's node, on the secure profile (accounts): it
crosses from the client's account to the node's, and with no process of that node up it turns
to the public subject, where any node answers from the record."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from kodo_bus import subjects
from kodo_bus.bus import connect, ensure_execution_storage, jetstream
from kodo_bus.client import Client
from kodo_bus.config import Credentials, ServiceSettings
from kodo_bus.errors import RemoteError
from kodo_bus.executions import create_record
from kodo_bus.models import ExecutionRecord
from kodo_bus.runner import Runner
from kodo_bus.server import NatsServer

from .test_security import login, password, secure, settings  # noqa: F401  (module fixtures)


async def _runner(server: NatsServer, name: str) -> tuple[Any, Runner]:
    nc = await connect(settings(server, name))
    runner = Runner(nc, ServiceSettings(id=name, nats=[server.url]), [])
    await runner.start()
    return nc, runner


async def test_an_addressed_cancel_crosses_accounts_and_falls_back(
    secure: NatsServer,  # noqa: F811
) -> None:
    root = await connect(settings(secure, "root"))
    opened = [root]
    runners: list[Runner] = []
    try:
        kv = await ensure_execution_storage(
            jetstream(root), max_age=ServiceSettings().events_max_age
        )
        execution = os.urandom(16).hex()
        now = time.time()
        await create_record(
            kv,
            ExecutionRecord(
                execution=execution, flow="f", node="node1", launcher="alice",
                status="cancelled", created=now, updated=now,
            ),
        )  # fmt: skip
        addressed = await root.subscribe(subjects.exec_cancel_at("alice", execution, "node1"))
        nc, node1 = await _runner(secure, "node1")
        opened.append(nc)
        runners.append(node1)
        creds = Credentials(user="alice", password=password("alice"))
        async with Client(secure.url, user="alice", credentials=creds, timeout=5) as alice:
            ex = alice.execution(execution)
            with pytest.raises(RemoteError) as ended:
                await ex.cancel()
            assert ended.value.kind == "not_found" and "already ended" in ended.value.message
            seen = await addressed.next_msg(timeout=5)  # it went the addressed way
            assert seen.subject == subjects.exec_cancel_at("alice", execution, "node1")
            await addressed.unsubscribe()

            await node1.stop()  # no process of node1: another node answers from the record
            runners.remove(node1)
            nc, other = await _runner(secure, "reg1")
            opened.append(nc)
            runners.append(other)
            with pytest.raises(RemoteError) as again:
                await ex.cancel()
            assert again.value.kind == "not_found" and "already ended" in again.value.message
    finally:
        for runner in runners:
            await runner.stop()
        for conn in opened:
            await conn.close()
