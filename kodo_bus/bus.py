"""The connection to NATS: connect with retries, typed request/reply, streams and buckets.

The first connection is tried `retry` more times with exponential backoff, each time over every
URL given; once connected, nats-py reconnects by itself forever, so a service rides out a server
restart. Request/reply helpers turn NATS and decoding failures into kodo-bus errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import secrets
import ssl
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import nats
import nats.aio.client
import nats.aio.transport
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from nats.protocol.parser import AUTHORIZATION_VIOLATION
from pydantic import BaseModel

from . import subjects
from .codec import MSGPACK, decode_reply, encode, encode_error, reply_content_type
from .config import (
    DUPLICATE_WINDOW,
    EVENTS_MAX_BYTES,
    RECORDS_MAX_BYTES,
    ConnectSettings,
    Credentials,
)
from .errors import (
    AuthError,
    ConfigError,
    ConnectError,
    FieldProblem,
    KodoTimeout,
    NoResponders,
    StorageTimeout,
    TlsError,
)
from .models import Ack

log = logging.getLogger("kodo_bus.bus")

M = TypeVar("M", bound=BaseModel)

STREAM_NAME_IN_USE = 10058
"""JetStream API error code: a stream with that name exists with another configuration."""
MAX_CONSUMERS_REACHED = 10026
"""JetStream API error code: the stream (or account) is at its consumer limit."""

_MAX_BACKOFF = 5.0
CONNECT_TIMEOUT = 2.0
"""Seconds one connection attempt (TCP, TLS handshake, INFO/CONNECT/PONG) may take."""
_SEEN_AT_CONNECT = 16
"""Errors of the connection attempts kept to name the cause (the last ones are the telling)."""


class _TcpTransport(nats.aio.transport.TcpTransport):
    """nats-py's TCP transport, upgraded to TLS by `StreamWriter.start_tls` in place.

    nats-py builds a new stream around `loop.start_tls` itself, and so (1) the stream's protocol
    never learns it runs over TLS: closing the connection logs asyncio's "returning true from
    eof_received() has no effect when using ssl" on every TLS command; (2) when the handshake
    fails (a certificate not trusted: TLS without `--tls-ca`), asyncio closes the socket under
    a protocol that never hears of it, and the `wait_closed` nats-py then awaits never returns:
    the command hung with no message. `StreamWriter.start_tls` tells the protocol (1); after a
    failed handshake the socket is closed already, so this transport drops its streams (2).
    """

    async def connect_tls(
        self,
        uri: str | Any,
        ssl_context: ssl.SSLContext,
        buffer_size: int,
        connect_timeout: int,
    ) -> None:
        writer = self._io_writer
        assert writer is not None, "connect must be called first"
        hostname = uri if isinstance(uri, str) else uri.hostname
        try:
            await writer.start_tls(
                ssl_context, server_hostname=hostname, ssl_handshake_timeout=connect_timeout
            )
        except BaseException:
            self._io_reader = self._io_writer = None
            self._bare_io_reader = self._bare_io_writer = None
            raise


nats.aio.client.TcpTransport = _TcpTransport  # type: ignore[attr-defined]
"""nats-py looks its transport class up in this module global at each connection attempt."""


def _auth_options(creds: Credentials) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if creds.user is not None:
        opts["user"] = creds.user
        opts["password"] = creds.password or ""
    if creds.creds is not None:
        opts["user_credentials"] = str(creds.creds)
    if creds.nkey is not None:
        opts["nkeys_seed"] = str(creds.nkey)
    if creds.tls_ca or creds.tls_cert:
        ctx = ssl.create_default_context(cafile=str(creds.tls_ca) if creds.tls_ca else None)
        if creds.tls_cert:
            ctx.load_cert_chain(str(creds.tls_cert), str(creds.tls_key) if creds.tls_key else None)
        opts["tls"] = ctx
    return opts


async def connect(settings: ConnectSettings | None = None, **callbacks: Any) -> NATS:
    """Connect to the first reachable URL, retrying with backoff; raise ConnectError at the end.

    `callbacks` are passed to nats-py (`disconnected_cb`, `reconnected_cb`, `error_cb`, ...).
    """
    s = settings or ConnectSettings()
    urls = list(s.nats)
    attempt = 0
    last: BaseException | None = None
    options = _auth_options(s.credentials)
    seen: list[Exception] = []
    user_error_cb = callbacks.pop("error_cb", _log_error)

    async def error_cb(exc: Exception) -> None:
        if not box:  # still connecting: kept to name the cause (bounded)
            seen.append(exc)
            del seen[:-_SEEN_AT_CONNECT]
        await user_error_cb(exc)

    callbacks["error_cb"] = error_cb
    box: list[NATS] = []

    async def disconnected_cb() -> None:
        if box and not (box[0].is_closed or box[0].is_draining):
            log.warning("disconnected from NATS; reconnecting")

    async def closed_cb() -> None:
        # Python 3.11's wait_for can swallow the cancel that close() sends the reconnect task
        # (a refused loopback connect completes in the same loop turn); that task then retries
        # forever and hangs the loop's shutdown. A bounded budget lets it end by itself.
        if box:
            box[0].options["max_reconnect_attempts"] = 1

    callbacks.setdefault("disconnected_cb", disconnected_cb)
    callbacks.setdefault("closed_cb", closed_cb)
    callbacks.setdefault("reconnected_cb", _log_reconnected)
    while True:
        try:
            # max_reconnect_attempts=1: nats-py tries each URL at most twice, then gives up
            # with NoServersError, so this loop (not nats-py) owns the retry budget.
            nc = await nats.connect(
                servers=urls,
                name=s.name,
                inbox_prefix=s.inbox_prefix or nats.aio.client.DEFAULT_INBOX_PREFIX,
                dont_randomize=True,
                connect_timeout=CONNECT_TIMEOUT,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.05,
                **options,
                **callbacks,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            final = _final_error(urls, [exc, *seen], s.credentials)
            if final is not None:
                raise final from None
            last = seen[-1] if seen else exc
        else:
            # Connected: from now on nats-py reconnects by itself, forever, over every URL.
            nc.options["max_reconnect_attempts"] = -1
            nc.options["reconnect_time_wait"] = 0.5
            box.append(nc)
            _API_PREFIX[nc] = await _find_api_prefix(nc)
            return nc
        if s.retry != -1 and attempt >= s.retry:
            break
        attempt += 1
        delay = min(_MAX_BACKOFF, 0.1 * 2**attempt) * (0.5 + random.random() / 2)
        log.debug("NATS unreachable (%s), attempt %d, retrying in %.2f s", last, attempt, delay)
        await asyncio.sleep(delay)
    where = ", ".join(urls)
    raise ConnectError(
        f"cannot reach NATS at {where} — start one with 'kodo-bus server' "
        f"(gave up after {attempt + 1} attempts: {_cause(last)})"
    )


def _final_error(
    urls: Sequence[str], errors: Sequence[BaseException], creds: Credentials
) -> ConnectError | None:
    """The error no further attempt can change: credentials refused, or TLS failed (a
    certificate does not become trusted by trying again). The server's "Authorization
    Violation" may reach error_cb just before the connection drops, so the raised error can be
    a reset: every error of the attempts is looked at."""
    refused = [e for e in errors if _is_auth_violation(e)]
    if refused:
        return AuthError(
            f"NATS at {', '.join(urls)} refused the credentials ({refused[0]}) — check "
            "--user/--password, --creds or the KODO_* variables"
        )
    tls = [e for e in errors if isinstance(e, ssl.SSLError)]
    if tls:
        return _tls_error(urls, tls[-1], creds)
    return None


def _cause(exc: BaseException | None) -> str:
    """Why an attempt failed, in words (a timeout's own text is empty)."""
    if exc is None:
        return "no reason given"
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s (a firewall, or not a NATS port?)"
    return str(exc) or type(exc).__name__


def _tls_error(urls: Sequence[str], exc: ssl.SSLError, creds: Credentials) -> TlsError:
    """The TLS failure of a connection attempt, with what to give instead."""
    where = ", ".join(urls)
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        fix = (
            f"is {creds.tls_ca} the CA that signed the server's certificate, and does the "
            "certificate name the host of the URL?"
            if creds.tls_ca
            else "give the CA that signed the server's certificate with --tls-ca (or KODO_TLS_CA)"
        )
        return TlsError(
            f"NATS at {where}: the server's TLS certificate is not trusted ({reason}) — {fix}"
        )
    reason = exc.reason or str(exc)
    return TlsError(
        f"TLS with NATS at {where} failed ({reason}) — if the server asks for a client "
        "certificate, give it with --tls-cert and --tls-key"
    )


def _is_auth_violation(exc: BaseException) -> bool:
    """Whether the server refused the credentials.

    nats-py has `AuthorizationError` but raises it only after a connection was up; during the
    handshake it reports the server's `-ERR 'Authorization Violation'` as a plain `Error`. That
    string is the protocol's error code (nats-py's own parser constant), so it is compared here,
    case-insensitively, in this one place.
    """
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    return isinstance(exc, nats.errors.Error) and AUTHORIZATION_VIOLATION in str(exc).lower()


async def _log_error(exc: Exception) -> None:
    log.debug("nats: %s", exc)


async def _log_reconnected() -> None:
    log.info("reconnected to NATS")


# -- request / reply -----------------------------------------------------------------------------
async def request(
    nc: NATS,
    subject: str,
    message: BaseModel,
    reply_model: type[M],
    *,
    timeout: float = 5.0,
    content_type: str = MSGPACK,
) -> M:
    """Send `message`, await and decode the reply; typed errors for every way it can fail."""
    body, headers = encode(message, content_type)
    try:
        msg = await nc.request(subject, body, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        raise NoResponders(f"no service answers on {subject!r} — is it running?") from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise KodoTimeout(f"no reply on {subject!r} within {timeout:g} s") from None
    return decode_reply(msg, reply_model)


async def deliver(
    nc: NATS,
    subject: str,
    message: BaseModel,
    *,
    ack_wait: float = 2.0,
    within: float | None = None,
    content_type: str = MSGPACK,
) -> None:
    """Request until the receiver acknowledges (at least once: the receiver de-duplicates).

    For messages that must not be lost to a reconnect or a server restart between two of our
    own processes. Retried with backoff for `within` seconds (None: until cancelled).
    """
    loop = asyncio.get_running_loop()
    deadline = None if within is None else loop.time() + within
    delay = 0.05
    while True:
        try:
            await request(nc, subject, message, Ack, timeout=ack_wait, content_type=content_type)
            return
        except nats.errors.MaxPayloadError:
            raise  # no retry makes it fit
        except (KodoTimeout, NoResponders, nats.errors.Error) as exc:
            if deadline is not None and loop.time() + delay > deadline:
                raise
            log.debug("delivery on %s: %r, retrying in %.2f s", subject, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def respond(msg: Msg, reply: BaseModel) -> None:
    """Answer a request in its own content type (an empty request gets msgpack)."""
    if not msg.reply:
        return
    body, headers = encode(reply, reply_content_type(msg))
    await msg._client.publish(msg.reply, body, headers=headers)


async def respond_error(
    msg: Msg, kind: str, message: str, problems: list[FieldProblem] | None = None
) -> None:
    """Answer a request with an `ErrorReply` (and the `Kodo-Error` header)."""
    if not msg.reply:
        return
    body, headers = encode_error(kind, message, problems, reply_content_type(msg))
    await msg._client.publish(msg.reply, body, headers=headers)


# -- JetStream -----------------------------------------------------------------------------------
_API_PREFIX: weakref.WeakKeyDictionary[NATS, str] = weakref.WeakKeyDictionary()
"""The JetStream API prefix each connection found (`jetstream`)."""


JETSTREAM_NOT_ENABLED_FOR_ACCOUNT = 10039


async def _find_api_prefix(nc: NATS) -> str:
    """`subjects.JS_API_KODO` in an account without JetStream of its own (the secure profile's
    accounts import the stores' API under it), else `subjects.JS_API`: asked once per
    connection, so a client needs no setting. Such an account's `$JS.API.INFO` is answered by
    the server itself, with `err_code` 10039."""
    try:
        msg = await nc.request(f"{subjects.JS_API}.INFO", b"", timeout=2)
    except (nats.errors.Error, TimeoutError):  # no JetStream at all, or not allowed to ask
        return subjects.JS_API
    try:
        code = json.loads(msg.data)["error"]["err_code"]
    except (ValueError, KeyError, TypeError):
        return subjects.JS_API
    return subjects.JS_API_KODO if code == JETSTREAM_NOT_ENABLED_FOR_ACCOUNT else subjects.JS_API


def jetstream(nc: NATS, *, timeout: float = 5.0) -> JetStreamContext:
    """The JetStream context of a connection made by `connect`, on whatever API prefix its bus
    uses. Every JetStream call of kodo-bus goes through one of these."""
    return nc.jetstream(prefix=_API_PREFIX.get(nc, subjects.JS_API), timeout=timeout)


def kv_handle(js: JetStreamContext, bucket: str) -> KeyValue:
    """A KV bucket to read and write, without the stream info `js.key_value` asks first: a
    client may not ask it on the secure profile (its `subjects_filter` would list every user's
    keys). Whether the bucket exists shows at the first read (`NoRespondersError` or
    `NotFoundError`)."""
    return KeyValue(
        name=bucket,
        stream=subjects.kv_stream(bucket),
        pre=subjects.kv_subject(bucket, ""),
        js=js,
        direct=True,
    )


JETSTREAM_TRANSIENT: tuple[type[Exception], ...] = (
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
)
"""What a JetStream call raises while a server fails over or a stream elects a new leader."""

T = TypeVar("T")


async def js_retry(call: Callable[[], Awaitable[T]], what: str, within: float = 30.0) -> T:
    """`call()`, retried with backoff on transient JetStream errors for up to `within` seconds.

    On a cluster, a killed server leaves its streams without a leader for a few seconds; a
    write in that window would otherwise be lost (a record left `running`, say).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.1
    while True:
        try:
            return await call()
        except JETSTREAM_TRANSIENT as exc:
            if loop.time() + delay > deadline:
                raise
            log.debug("%s: %r, retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


@dataclass
class _FreshlyNamed(api.ConsumerConfig):
    """A consumer config that takes a new random name each time nats-py creates the consumer.

    A named consumer is created through `CONSUMER.CREATE.<stream>.<name>.<filter>`, the form
    server permissions can confine to one user's subjects. Ordered consumers re-create
    themselves after a gap or a server restart; a fresh name keeps that from colliding with the
    consumer they replace.
    """

    def evolve(self, **params: Any) -> _FreshlyNamed:
        new: _FreshlyNamed = replace(self, **params)
        new.name = secrets.token_hex(8)
        return new


def consumer_config(**fields: Any) -> api.ConsumerConfig:
    """Config for `js.subscribe`: named consumers, so permissions can check their filter."""
    return _FreshlyNamed(name=secrets.token_hex(8), **fields)


async def ensure_stream(
    js: JetStreamContext,
    name: str,
    subjects: Sequence[str],
    *,
    max_age: float | None = None,
    replicas: int = 1,
    max_bytes: int | None = None,
    duplicate_window: float = 120.0,
    allow_msg_ttl: bool = False,
) -> api.StreamInfo:
    """Create the stream, or bring an existing one to this configuration in place (idempotent).

    Limits retention with `discard: old`: at `max_bytes` (or `max_age`) the oldest messages
    go, never a new one refused. An existing stream that already matches is left alone without
    a write, so processes with read-only rights on it (nodes in the secure profile) start
    fine; one whose limits drifted is updated, and if that is refused (no right to) it is used
    as it is, with a warning. Waits for JetStream's leaders first (`_when_storage_answers`).
    """
    config = api.StreamConfig(
        name=name,
        subjects=list(subjects),
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_age=max_age,
        max_bytes=max_bytes,
        num_replicas=replicas,
        duplicate_window=min(duplicate_window, max_age) if max_age else duplicate_window,
        allow_direct=True,
        allow_msg_ttl=allow_msg_ttl or None,
    )

    async def make() -> api.StreamInfo:
        return await _ensure_stream(js, config)

    return await _when_storage_answers(make, f"stream {name}")


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> api.StreamInfo:
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        pass
    else:
        return await _conform(js, info, config)
    try:
        return await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
        # Another process created it between our look-up and our create.
        return await _conform(js, await js.stream_info(config.name), config)


def _drift(have: api.StreamConfig, want: api.StreamConfig) -> list[str]:
    """The settings in which an existing stream differs from `want` (empty: leave it alone).
    Per-message TTLs, once allowed, cannot be disallowed (JetStream's rule), so only a missing
    `allow_msg_ttl` counts."""
    drift = []
    if list(have.subjects or []) != list(want.subjects or []):
        drift.append("subjects")
    if (have.max_age or 0) != (want.max_age or 0):
        drift.append("max_age")
    if (have.max_bytes or -1) != (want.max_bytes or -1):
        drift.append("max_bytes")
    if (have.num_replicas or 1) != (want.num_replicas or 1):
        drift.append("num_replicas")
    if have.discard != want.discard:
        drift.append("discard")
    if want.allow_msg_ttl and not have.allow_msg_ttl:
        drift.append("allow_msg_ttl")
    if want.duplicate_window and have.duplicate_window != want.duplicate_window:  # 0: unset
        drift.append("duplicate_window")
    return drift


async def _conform(
    js: JetStreamContext, info: api.StreamInfo, want: api.StreamConfig
) -> api.StreamInfo:
    """Bring an existing stream to `want`'s subjects and limits in place; its other settings
    (a KV bucket's history, rollups, deny-delete) are kept as they are."""
    drift = _drift(info.config, want)
    if not drift:
        return info
    config = replace(
        info.config,
        subjects=want.subjects,
        max_age=want.max_age,
        max_bytes=want.max_bytes if want.max_bytes is not None else -1,
        num_replicas=want.num_replicas,
        discard=want.discard,
        allow_msg_ttl=bool(info.config.allow_msg_ttl or want.allow_msg_ttl) or None,
        duplicate_window=want.duplicate_window
        or min(info.config.duplicate_window, want.max_age or math.inf),
    )
    try:
        updated = await js.update_stream(config)
    except (nats.errors.TimeoutError, nats.js.errors.APIError) as exc:
        # A node of the secure profile may create the stream but not update it: the registry
        # (or an admin) brings it to the new limits; until then it is used as it is.
        log.warning(
            "stream %s differs from this configuration (%s) and could not be updated (%r): "
            "using it as it is",
            want.name,
            ", ".join(drift),
            exc,
        )
        return info
    log.info("stream %s brought to the configured %s", want.name, ", ".join(drift))
    return updated


STORAGE_WAIT = 30.0
"""Seconds `ensure_stream` and `ensure_bucket` wait for JetStream to answer: a cluster that
just started, or lost a server, has no JetStream leader for a few seconds."""


async def _when_storage_answers(call: Callable[[], Awaitable[T]], what: str) -> T:
    """`call()` retried while JetStream elects its leaders (`STORAGE_WAIT` at most), then one
    clear error: a service started just after its cluster crashed with a bare TimeoutError."""
    try:
        return await js_retry(call, what, STORAGE_WAIT)
    except nats.errors.NoRespondersError:
        raise ConnectError(
            f"no JetStream answers on this bus ({what}) within {STORAGE_WAIT:g} s — kodo-bus "
            "needs a nats-server with JetStream on ('kodo-bus server', or nats-server -js)"
        ) from None
    except JETSTREAM_TRANSIENT as exc:
        raise StorageTimeout(
            f"JetStream did not answer ({what}) within {STORAGE_WAIT:g} s "
            f"({exc or type(exc).__name__}) — on a cluster, a majority of its servers must be "
            "up for it to elect a leader"
        ) from None


async def ensure_bucket(
    js: JetStreamContext,
    bucket: str,
    *,
    ttl: float | None = None,
    history: int = 1,
    replicas: int = 1,
    max_bytes: int | None = None,
    description: str | None = None,
    limits: bool = False,
) -> KeyValue:
    """Create the KV bucket if it is missing and return it. An existing one is kept as it is,
    unless `limits`: then its `ttl`, `max_bytes` and replicas are brought to these in place,
    with `discard: old` (at its limit the least recently written keys go, a write is never
    refused — nats-py makes buckets `discard: new`) and per-message TTLs allowed.
    Waits for JetStream's leaders first (`_when_storage_answers`)."""

    async def make() -> KeyValue:
        kv = await _ensure_bucket(js, bucket, ttl, history, replicas, max_bytes, description)
        if limits:
            want = api.StreamConfig(
                name=subjects.kv_stream(bucket),
                subjects=[subjects.kv_subject(bucket, ">")],
                max_age=ttl,
                max_bytes=max_bytes,
                num_replicas=replicas,
                discard=api.DiscardPolicy.OLD,
                allow_msg_ttl=True,
            )
            await _conform(js, await js.stream_info(subjects.kv_stream(bucket)), want)
        return kv

    return await _when_storage_answers(make, f"bucket {bucket}")


async def _ensure_bucket(  # noqa: PLR0917
    js: JetStreamContext,
    bucket: str,
    ttl: float | None,
    history: int,
    replicas: int,
    max_bytes: int | None,
    description: str | None,
) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(
            bucket=bucket,
            ttl=ttl,
            history=history,
            replicas=replicas,
            max_bytes=max_bytes,
            description=description,
            storage=api.StorageType.FILE,
            direct=True,
        )
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
        # Another process created it between our look-up and our create: use theirs.
        return await js.key_value(bucket)


INSUFFICIENT_RESOURCES = (10023, 10047)
"""JetStream API error codes: the server's (or account's) store cannot reserve a stream's
`max_bytes` (`max_file_store` smaller than the limits asked for)."""


async def ensure_execution_storage(
    js: JetStreamContext,
    *,
    max_age: float,
    replicas: int = 1,
    max_bytes: int = EVENTS_MAX_BYTES,
    records_max_bytes: int = RECORDS_MAX_BYTES,
) -> KeyValue:
    """The events stream and the executions bucket every node and registry relies on, with
    their size limits (`-1`: none) and per-message TTLs allowed (`@flow(retention=...)`).

    What a full store loses first is written in README ("Storage limits"): the oldest events
    and the least recently written records; an existing deployment's stream and bucket are
    brought to these limits in place.
    """
    from .subjects import BUCKET_EXECUTIONS, EVENTS_ALL, FENCE_ALL, STREAM_EVENTS

    try:
        await ensure_stream(
            js,
            STREAM_EVENTS,
            [EVENTS_ALL, FENCE_ALL],
            max_age=max_age,
            replicas=replicas,
            max_bytes=_limit(max_bytes),
            duplicate_window=DUPLICATE_WINDOW,
            allow_msg_ttl=True,
        )
        return await ensure_bucket(
            js,
            BUCKET_EXECUTIONS,
            ttl=max_age,
            replicas=replicas,
            max_bytes=_limit(records_max_bytes),
            description="kodo-bus: current record of every execution",
            limits=True,
        )
    except nats.js.errors.APIError as exc:
        if exc.err_code not in INSUFFICIENT_RESOURCES:
            raise
        raise ConfigError(
            f"JetStream cannot reserve the execution storage ({exc.description}): the events "
            f"stream asks {max_bytes} bytes and the records bucket {records_max_bytes} — lower "
            "events_max_bytes / records_max_bytes, or raise the server's max_file_store"
        ) from None


def _limit(max_bytes: int) -> int | None:
    return None if max_bytes < 0 else max_bytes
