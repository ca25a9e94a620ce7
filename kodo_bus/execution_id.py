"""Claiming an execution id: the first stored event of an id decides whose execution it is.

Clients choose execution ids (so a launch whose reply was lost can be sent again), which means
two launches may name the same id: a retry of one launch, or — by mistake or malice — another
user's launch. Per-user records cannot tell the second case (their keys differ), and events
de-duplicate on `<execution>:<seq>` whatever their user, so a second user's execution of an id
would silently drop the first one's events. So the node's first three events of an execution
(`meta`, `inputs`, the first `status`) are conditional publishes: JetStream stores each only if
no event of that kind exists yet for that id under ANY user (`Nats-Expected-Last-Subject-
Sequence: 0` on the wildcard subject `kodo.events.*.<id>.<kind>`). They travel, in order, with
the node's publisher, which counts a refused conditional publish as settled (an earlier copy is
stored: neither stored again nor re-sent) and remembers its subject for `preceded()`. The
`meta` event decides: a launch whose `meta` was refused is not the one that holds the id.

All of it goes out together with the record's create: one round trip per launch, not two.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext

from . import subjects
from .codec import MSG_ID, decode_events
from .errors import WireError
from .models import Event

EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
WRONG_LAST_SEQUENCE_ACK = b'"err_code":10071'
"""How the ack of a refused conditional publish reads (the publisher checks acks by bytes)."""

Message = tuple[str, bytes, dict[str, str]]


def first_of_its_kind(message: Message, execution: str, kind: str, attempt: str) -> Message:
    """`message` (an event of `execution`) stored only if no event of `kind` exists for that
    id under any user.

    Its Msg-Id names the launch `attempt` too: a copy of the same launch sent again must meet
    the condition (and be refused), not be taken for a re-send of this one and acknowledged
    as stored by JetStream's de-duplication. (The condition is checked before the Msg-Id: a
    re-send of this very event, whose first copy was stored, is refused too — `holder` tells
    it apart by its Msg-Id.)
    """
    subject, body, headers = message
    return (
        subject,
        body,
        {
            **headers,
            MSG_ID: f"{headers[MSG_ID]}:{attempt}",
            EXPECTED_LAST_SUBJECT_SEQUENCE: "0",
            EXPECTED_LAST_SUBJECT: subjects.events("*", execution, kind),
        },
    )


async def holder(js: JetStreamContext, execution: str) -> tuple[Event, str] | None:
    """The stored `meta` event of an id (its envelope names the user it belongs to) and its
    Msg-Id (which names the launch attempt that stored it)."""
    try:
        msg = await js.get_last_msg(
            subjects.STREAM_EVENTS, subjects.events("*", execution, "meta"), direct=True
        )
    except nats.js.errors.NotFoundError:
        return None
    try:
        event = decode_events(msg.subject or "", msg.data or b"", msg.headers)[-1]
    except (WireError, IndexError):
        return None
    return event, (msg.headers or {}).get(MSG_ID, "")
