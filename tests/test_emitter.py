"""The emitter writes each event as `Event.model_dump_json` would, from a ready-made envelope."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from pydantic import BaseModel

from kodo_bus import subjects
from kodo_bus.executions import event_message, jsonable
from kodo_bus.models import Event
from kodo_bus.tracer import Emitter


class Point(BaseModel):
    x: int
    label: str = "p"


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


BASE = {
    "execution": "e" * 32,
    "node": "node-1",
    "flow": "hello",
    "launcher": "ada",
    "parent": None,
    "root": "e" * 32,
}


@pytest.mark.parametrize(
    "kind, data",
    [
        ("status", {"status": "running"}),
        ("markdown", '# héllo "quoted"\n'),
        ("final", None),
        ("final", Point(x=3)),
        ("text", {"when": dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC), "n": [1, 2.5]}),
        ("log", {"level": "info", "message": Opaque()}),
    ],
)
def test_same_message_as_the_event_model(kind: str, data: Any) -> None:
    sent: list[tuple[str, bytes, dict[str, str]]] = []
    emitter = Emitter(BASE, 4, lambda *message: sent.append(message))
    assert emitter.emit(kind, data) == 5
    subject, body, headers = sent[0]
    event = Event.model_validate_json(body)
    expected = Event(seq=5, ts=event.ts, kind=kind, data=jsonable(data), **BASE)
    assert (subject, headers) == event_message(expected)[::2]
    assert json.loads(body) == json.loads(event_message(expected)[1])
    assert subject == subjects.events("ada", "e" * 32, kind)


def test_unknown_kind_is_refused_and_nothing_sent() -> None:
    sent: list[object] = []
    emitter = Emitter(BASE, 0, lambda *message: sent.append(message))
    with pytest.raises(ValueError, match="not an event kind"):
        emitter.emit("shout", "x")
    assert (sent, emitter.seq) == ([], 0)
