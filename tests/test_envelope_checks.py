"""Issue 15, defence in depth: an event whose envelope does not agree with its subject is not
that execution's event. A reader (the SDK's follow, an outside ender) skips it, so a message
reflected or forged onto an execution's subject cannot end it or change its result."""

# ruff: noqa: F811  (the `kb` fixture imported from test_follow is a parameter here)
from __future__ import annotations

import asyncio

import pytest
from nats.js.kv import KeyValue

from kodo_bus import Client, subjects
from kodo_bus.codec import JSON, MSG_ID, decode_events, encode
from kodo_bus.errors import WireError
from kodo_bus.lifecycle import stored_tail
from kodo_bus.models import Event, ExecutionRecord

from .test_follow import USER, complete, event, kb, new_id, publish  # noqa: F401  (fixture)


async def forge(client: Client, subject: str, e: Event) -> None:
    body, headers = encode(e, JSON, {MSG_ID: f"forged:{subject}:{e.seq}"})
    await client.js.publish(subject, body, headers=headers)


def forgeries(execution: str) -> list[tuple[str, Event]]:
    """Each would pass for seq 5 of `execution` if only its body were read."""
    other = new_id()
    theirs = event(other, 5, "final", "forged: another execution's final")
    kind = event(execution, 5, "final", "forged: a final on the text subject")
    user = event(execution, 5, "final", "forged: another launcher's final")
    user = user.model_copy(update={"launcher": "mallory"})
    return [
        (subjects.events(USER, execution, "final"), theirs),
        (subjects.events(USER, execution, "text"), kind),
        (subjects.events(USER, execution, "final"), user),
    ]


def test_decode_events_refuses_an_envelope_that_disagrees_with_its_subject() -> None:
    execution = new_id()
    for subject, forged in forgeries(execution):
        body, headers = encode(forged, JSON)
        with pytest.raises(WireError, match="does not belong on this subject"):
            decode_events(subject, body, headers)
    good = event(execution, 5, "final", 1)
    body, headers = encode(good, JSON)
    assert decode_events(subjects.events(USER, execution, "final"), body, headers) == [good]


async def test_follow_skips_forged_events(kb: tuple[Client, KeyValue]) -> None:
    client, _ = kb
    execution = new_id()
    true = complete(execution, "the flow's own value")
    await publish(client.js, *true[:4])
    for subject, forged in forgeries(execution):
        await forge(client, subject, forged)
    await publish(client.js, *true[4:])
    ex = client.execution(execution)
    async with asyncio.timeout(20):
        assert await ex.result() == "the flow's own value"
        seen = [e async for e in ex.events()]
    assert [(e.seq, e.kind) for e in seen] == [(e.seq, e.kind) for e in true]


async def test_outside_ender_numbers_after_valid_events_only(
    kb: tuple[Client, KeyValue],
) -> None:
    client, _ = kb
    execution = new_id()
    await publish(client.js, *complete(execution, 1)[:4])
    for subject, forged in forgeries(execution):
        await forge(client, subject, forged)
    record = ExecutionRecord.model_validate(
        {"execution": execution, "flow": "f-follow", "node": "n-follow", "launcher": USER,
         "status": "running", "created": 0.0, "updated": 0.0}
    )  # fmt: skip
    tail = await stored_tail(client.js, record)
    assert tail.last_seq == 4 and tail.terminal is None
