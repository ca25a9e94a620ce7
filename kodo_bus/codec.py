"""Encoding of wire models as msgpack or JSON, told apart by the `Content-Type` header.

Control-plane traffic (catalogs, heartbeats) is msgpack because it is small and frequent;
events are JSON so that `nats sub` on the event subjects prints readable lines. Decoders accept
both, and sniff the body when a foreign publisher left the header out. Every failure becomes one
`WireError` that names the subject: callers never see msgpack, json or pydantic exceptions.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import msgpack
from pydantic import BaseModel, TypeAdapter, ValidationError

from .errors import (
    Busy,
    FieldProblem,
    InputsInvalid,
    RemoteError,
    UnsupportedVersion,
    WireError,
    problems_from,
)
from .models import ErrorReply, Event, FieldError

MSGPACK = "application/msgpack"
JSON = "application/json"
CONTENT_TYPE = "Content-Type"
ERROR_HEADER = "Kodo-Error"
"""Present (with the error kind) on error replies, so a reader knows which model to expect."""
MSG_ID = "Nats-Msg-Id"
"""JetStream de-duplicates messages carrying the same id within the stream's window."""
MSG_TTL = "Nats-TTL"
"""Per-message TTL header (nats-server 2.11+, streams with `allow_msg_ttl`), in `ttl_seconds`."""


def ttl_seconds(seconds: float) -> int:
    """A TTL in JetStream's unit: whole seconds, at least 1, rounded up (never shorter)."""
    return max(1, math.ceil(seconds))


M = TypeVar("M", bound=BaseModel)


class _Msg(Protocol):
    """The parts of a nats-py `Msg` the codec reads (kept structural so tests can build one)."""

    subject: str
    data: bytes
    headers: dict[str, str] | None


def encode(
    model: BaseModel, content_type: str = MSGPACK, extra: Mapping[str, str] | None = None
) -> tuple[bytes, dict[str, str]]:
    """Serialise `model`; returns the body and the headers to send with it."""
    if content_type == JSON:
        body = model.model_dump_json(exclude_none=True).encode()
    elif content_type == MSGPACK:
        body = msgpack.packb(model.model_dump(mode="json", exclude_none=True))
    else:
        raise ValueError(f"unsupported content type {content_type!r}")
    headers = {CONTENT_TYPE: content_type}
    if extra:
        headers.update(extra)
    return body, headers


def content_type_of(data: bytes, headers: Mapping[str, str] | None) -> str:
    """The body's content type: the header when present, else a sniff of the first byte."""
    declared = (headers or {}).get(CONTENT_TYPE)
    if declared:
        return declared.split(";", 1)[0].strip()
    stripped = data.lstrip()
    return JSON if stripped[:1] in (b"{", b"[") else MSGPACK


_MSGPACK_MAPS = frozenset({*range(0x80, 0x90), 0xDE, 0xDF})
"""First bytes of a msgpack map: the only msgpack body a request can be."""


def reply_content_type(request: _Msg) -> str:
    """A reply mirrors its request's content type. JSON when that type is unknown (an empty
    body without a header, a body that is neither a JSON nor a msgpack object) or not one we
    speak (`text/plain`): JSON is what any requester can read, a client in another language
    included, and the error reply it gets must be readable."""
    declared = (request.headers or {}).get(CONTENT_TYPE)
    if declared:
        kind = declared.split(";", 1)[0].strip()
        return MSGPACK if kind == MSGPACK else JSON
    return MSGPACK if request.data[:1] and request.data[0] in _MSGPACK_MAPS else JSON


def loads(subject: str, data: bytes, headers: Mapping[str, str] | None) -> Any:
    """Parse a body into plain Python data, or raise WireError."""
    kind = content_type_of(data, headers)
    try:
        if kind == JSON:
            return json.loads(data)
        if kind == MSGPACK:
            return msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise WireError(subject, f"undecodable {kind} body ({exc})") from None
    raise WireError(subject, f"unsupported content type {kind!r}")


def decode(subject: str, data: bytes, headers: Mapping[str, str] | None, model: type[M]) -> M:
    """Decode and validate one message as `model`, or raise WireError naming the subject
    (`UnsupportedVersion` for a request whose `v` this code does not speak)."""
    if not data:
        data = b"\x80"  # an empty body is an empty msgpack map: every field takes its default
    try:
        if content_type_of(data, headers) == JSON:
            return model.model_validate_json(data)
        payload = loads(subject, data, headers)
        return model.model_validate(payload)
    except ValidationError as exc:
        raise _invalid(subject, model, exc) from None


def _invalid(subject: str, model: type[BaseModel], exc: ValidationError) -> WireError:
    """The WireError for a body that does not validate, naming unknown keys as such."""
    errors = exc.errors(include_url=False)
    for error in errors:
        if error["type"] == "unsupported_version":
            return UnsupportedVersion(subject, f"{model.__name__}: {error['msg']}")
    unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden" and e["loc"]]
    pairs = zip(problems_from(exc), errors, strict=True)
    parts = [f"{p.field}: {p.message}" for p, e in pairs if e["type"] != "extra_forbidden"]
    if unknown:
        known = ", ".join(model.model_fields)
        parts.insert(0, f"unknown field(s) {', '.join(unknown)} (a {model.__name__} has {known})")
    return WireError(subject, f"not a valid {model.__name__}: {'; '.join(parts)}")


def decode_many(
    subject: str, data: bytes, headers: Mapping[str, str] | None, model: type[M]
) -> list[M]:
    """A message holding one `model`, or a JSON array of them (a burst of events, published as
    one message: see `publisher.BATCH_KINDS`)."""
    if data[:1] != b"[":
        return [decode(subject, data, headers, model)]
    try:
        return _list_adapter(model).validate_json(data)
    except ValidationError as exc:
        detail = "; ".join(f"{p.field}: {p.message}" for p in problems_from(exc))
        raise WireError(subject, f"not a valid list of {model.__name__}: {detail}") from None


def decode_events(subject: str, data: bytes, headers: Mapping[str, str] | None) -> list[Event]:
    """The events of one message on `kodo.events.<user>.<execution>.<kind>`, each checked
    against its subject: an event whose execution, launcher or kind differ from the subject's
    is not that execution's event (a reflected or forged message), and the message is refused
    whole, like one that does not decode. Every reader of events goes through here."""
    events = decode_many(subject, data, headers, Event)
    parts = subject.split(".")
    if len(parts) != 5:
        raise WireError(subject, "not an event subject (see subjects.EVENTS)")
    _, _, user, execution, kind = parts
    for event in events:
        if (event.launcher, event.execution, event.kind) != (user, execution, kind):
            said = f"{event.launcher}/{event.execution}/{event.kind}"
            raise WireError(subject, f"an event of {said} does not belong on this subject")
    return events


@functools.cache
def _list_adapter(model: type[M]) -> TypeAdapter[list[M]]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


def decode_msg(msg: _Msg, model: type[M]) -> M:
    """`decode` for a received nats-py message."""
    return decode(msg.subject, msg.data, msg.headers, model)


def encode_error(
    kind: str,
    message: str,
    problems: list[FieldProblem] | None = None,
    content_type: str = MSGPACK,
) -> tuple[bytes, dict[str, str]]:
    """Serialise an error reply (body and headers, including `Kodo-Error`)."""
    reply = ErrorReply(
        error=kind,
        message=message,
        fields=[FieldError(field=p.field, message=p.message) for p in problems or []],
    )
    return encode(reply, content_type, {ERROR_HEADER: kind})


def decode_reply(msg: _Msg, model: type[M]) -> M:
    """Decode a reply as `model`, or raise the typed error an error reply stands for."""
    if msg.headers and ERROR_HEADER in msg.headers:
        err = decode_msg(msg, ErrorReply)
        raise error_from_reply(err)
    return decode_msg(msg, model)


def error_from_reply(err: ErrorReply) -> RemoteError:
    """The exception an `ErrorReply` stands for."""
    if err.error == "invalid_inputs":
        problems = [FieldProblem(f.field, f.message) for f in err.fields]
        return InputsInvalid(problems) if problems else RemoteError(err.error, err.message)
    if err.error == "busy":
        return Busy(err.error, err.message)
    return RemoteError(err.error, err.message)
