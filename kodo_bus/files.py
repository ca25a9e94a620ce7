"""Files in and out of executions, on the JetStream Object Store: one bucket per user.

Why one bucket per user (`subjects.BUCKET_FILES`): an object's chunks go on a random subject and
its metadata on its name in base64, so no subject permission confines a user to a prefix of a
shared bucket. A bucket of one's own is a stream of one's own, which the secure profile gives
each client in a store account of its own (`accounts.py`).

Nothing here holds a file in memory: uploads stream from a file object chunk by chunk (nats-py's
`put` reads into one reused buffer), downloads are written chunk by chunk to a temporary file
beside the destination, hashed on the way, and renamed into place only when the SHA-256 is the
one the reference names.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.object_store import ObjectStore
from pydantic import BaseModel

from . import subjects
from .codec import MSG_TTL, ttl_seconds
from .config import DUPLICATE_WINDOW, ServiceSettings
from .errors import FileDigestMismatch, FileError, FileQuotaExceeded
from .models import File

log = logging.getLogger("kodo_bus.files")

CHUNK = 128 * 1024
"""Bytes per Object Store chunk (nats-py's default, well under `max_payload`)."""

FILES_MAX_AGE = float(ServiceSettings.model_fields["events_max_age"].default)
"""Files live as long as the events that name them by default (7 days)."""

PENDING_BYTES = 8 * 1024 * 1024
"""Bytes a listing's subscription holds at most (object metadata: a few hundred bytes each)."""
LIST_WAIT = 30.0
"""Seconds a listing waits for the next object's metadata before giving up."""

_STREAM_IN_USE = 10058
"""JetStream `err_code`: the stream exists (two writers created the bucket at once)."""
_ACCOUNT_LIMITS = 10002
"""JetStream `err_code`: the account's resource limits are exceeded — on the secure profile the
files quota of the bucket's user (`accounts.files_limits`)."""
_SERVER_FULL = frozenset({10023, 10047})
"""JetStream `err_code`s: the server has no storage left (insufficient resources)."""


async def bucket(js: JetStreamContext, user: str) -> ObjectStore:
    """`user`'s bucket, created the first time a file goes in (by its client or a node)."""
    name = subjects.bucket_files(user)
    try:
        return await js.object_store(name)
    except nats.js.errors.NotFoundError:
        pass
    config = api.ObjectStoreConfig(
        bucket=name,
        description=f"kodo-bus: files of {user}'s executions",
        ttl=FILES_MAX_AGE,
        storage=api.StorageType.FILE,
    )
    try:
        return await js.create_object_store(name, config=config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_IN_USE:
            raise
        return await js.object_store(name)


def _hex(nats_digest: str | None) -> str:
    """nats' `SHA-256=<base64url>` as the hex of `File.digest`."""
    encoded = (nats_digest or "").split("=", 1)[-1]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()


async def upload(
    js: JetStreamContext, user: str, name: str, source: Path | str | bytes | BinaryIO
) -> File:
    """Store `source` (a path, bytes or a binary file object) as object `name` of `user`'s
    bucket (`subjects.file_name`), chunk by chunk."""
    try:
        info = await _put(js, user, name, source)
    except nats.js.errors.APIError as exc:
        # nats-py's put purged the chunks it had sent: what is stored stays under the limit
        if exc.err_code == _ACCOUNT_LIMITS:
            raise FileQuotaExceeded(
                f"cannot store {name}: the files of {user} are at their quota (the secure "
                f"profile's files_quota); delete executions whose results you have "
                f"(kodo-bus executions rm ID)"
            ) from None
        if exc.err_code in _SERVER_FULL:
            raise FileError(f"cannot store {name}: the server has no storage left") from None
        raise
    return File(
        bucket=subjects.bucket_files(user),
        name=name,
        size=int(info.size or 0),
        digest=_hex(info.digest),
    )


async def _put(
    js: JetStreamContext, user: str, name: str, source: Path | str | bytes | BinaryIO
) -> api.ObjectInfo:
    store = await bucket(js, user)
    meta = api.ObjectMeta(name=name, options=api.ObjectMetaOptions(max_chunk_size=CHUNK))
    if isinstance(source, bytes):
        return await store.put(name, io.BytesIO(source), meta=meta)
    if isinstance(source, (str, Path)):
        try:
            stream = await asyncio.to_thread(Path(source).open, "rb")
        except OSError as exc:
            raise FileError(f"cannot read {source}: {exc.strerror or exc}") from None
        try:
            return await store.put(name, stream, meta=meta)
        finally:
            stream.close()
    return await store.put(name, source, meta=meta)  # type: ignore[arg-type]


async def chunks(js: JetStreamContext, ref: File) -> AsyncGenerator[bytes]:
    """`ref`'s content, chunk by chunk, unchecked (`check_digest` once all are read).

    Not nats-py's `ObjectStore.get`: it looks the stream up by subject (`STREAM.NAMES`, which
    a client of the secure profile may not ask), and its push consumer outran a slow disk (the
    subscription's pending limit dropped chunks and the flow-control request with them, and the
    download stalled). Here each chunk is one direct get (`next_by_subj`): one chunk in memory.
    """
    try:
        store = await js.object_store(ref.bucket)
    except nats.js.errors.NotFoundError:
        raise FileError(f"no bucket {ref.bucket} (expired, or deleted)") from None
    try:
        info = await store.get_info(ref.name)
    except nats.js.errors.NotFoundError:
        raise FileError(f"no file {ref.name} in {ref.bucket} (expired, or deleted)") from None
    subject = subjects.obj_subject(ref.bucket, f"C.{info.nuid}")
    stream = subjects.obj_stream(ref.bucket)
    size = 0
    seq = 1
    while size < (info.size or 0):
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True, direct=True)
        except nats.js.errors.NotFoundError:
            return  # fewer chunks than the size says: the digest check tells
        data = msg.data or b""
        size += len(data)
        seq = (msg.seq or seq) + 1
        yield data


def check_digest(ref: File, size: int, digest: str) -> None:
    """Raise `FileDigestMismatch` unless `size` bytes with SHA-256 `digest` are `ref`'s."""
    if digest != ref.digest or size != ref.size:
        raise FileDigestMismatch(
            f"{ref.name}: got {size} bytes with sha256 {digest}, "
            f"expected {ref.size} bytes with sha256 {ref.digest}"
        )


async def _fetch(js: JetStreamContext, ref: File, target: BinaryIO) -> tuple[int, str]:
    """Write `ref`'s chunks to `target`; the bytes written and their SHA-256."""
    sha = hashlib.sha256()
    size = 0
    async with contextlib.aclosing(chunks(js, ref)) as content:
        async for data in content:
            sha.update(data)
            size += len(data)
            await asyncio.to_thread(target.write, data)
    return size, sha.hexdigest()


async def download(js: JetStreamContext, ref: File, dest: Path) -> Path:
    """Write `ref`'s content to `dest` (a file path), checked against its digest.

    Written next to `dest` first and renamed into place, so a file that fails its digest (or a
    download cut short) never appears under its name.
    """
    await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as target:
            size, digest = await _fetch(js, ref, target)
        check_digest(ref, size, digest)
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
    return dest


def refs_in(value: Any) -> Iterator[File]:
    """Every `File` inside a validated inputs model (fields, lists, dicts, nested models)."""
    if isinstance(value, File):
        yield value
    elif isinstance(value, BaseModel):
        for field in type(value).model_fields:
            yield from refs_in(getattr(value, field))
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from refs_in(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from refs_in(item)


class InputFiles:
    """The input files of one execution on its worker: downloaded before the flow, removed after.

    A reference must name the launcher's own bucket: the worker reads every bucket, so a file
    named in another user's bucket would be a way to read it through the flow. Any file of the
    launcher's may be named (an output of an earlier execution, say).
    """

    def __init__(self, js: JetStreamContext, launcher: str) -> None:
        self._js = js
        self._bucket = subjects.bucket_files(launcher)
        self._dir: Path | None = None

    async def fetch(self, refs: Iterable[File]) -> None:
        for number, ref in enumerate(refs):
            if ref.bucket != self._bucket:
                raise FileError(
                    f"input file {ref.name!r} is in bucket {ref.bucket!r}: a flow reads only "
                    f"its launcher's files ({self._bucket})"
                )
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="kodo-files-"))
            dest = self._dir / str(number) / ref.filename
            ref._path = await download(self._js, ref, dest)

    async def remove(self) -> None:
        if self._dir is not None:
            where, self._dir = self._dir, None
            await asyncio.to_thread(shutil.rmtree, where, True)


async def names_of(js: JetStreamContext, user: str, execution: str) -> list[str]:
    """Names of every object of one execution in `user`'s bucket (inputs and outputs)."""
    async with contextlib.aclosing(_objects_of(js, user, execution)) as objects:
        return [info.name async for info, _ in objects if info.name and not info.deleted]


async def _objects_of(
    js: JetStreamContext, user: str, execution: str
) -> AsyncGenerator[tuple[api.ObjectInfo, str]]:
    """Every object of one execution in `user`'s bucket, deleted ones too (nats-py's `delete`
    leaves a metadata message marking them): its metadata and the subject of it, as read (a
    user's bucket may hold millions of objects: nothing of them is collected here).

    Reads the last metadata message of every object (not nats-py's `list`, whose watcher looks
    the stream up with `STREAM.NAMES`, which a client of the secure profile may not ask)."""
    bucket_name = subjects.bucket_files(user)
    try:
        await js.object_store(bucket_name)
    except nats.js.errors.NotFoundError:
        return
    sub = await js.subscribe(
        subjects.obj_subject(bucket_name, "M.>"),
        stream=subjects.obj_stream(bucket_name),
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        pending_bytes_limit=PENDING_BYTES,
    )
    prefix = f"{execution}/"
    try:
        state = await sub.consumer_info()
        delivered = state.delivered.consumer_seq if state.delivered else 0
        left = (state.num_pending or 0) + (delivered or 0)
        while left > 0:  # none at all, or up to the one after which none are pending
            msg = await sub.next_msg(timeout=LIST_WAIT)
            left = msg.metadata.num_pending
            info = api.ObjectInfo.from_response(json.loads(msg.data))
            if info.name and info.name.startswith(prefix):
                yield info, msg.subject
    finally:
        await sub.unsubscribe()


async def delete(js: JetStreamContext, user: str, execution: str) -> int:
    """Delete every file of one execution, leaving nothing of it in the bucket; the number
    deleted.

    Not nats-py's `delete`, which leaves a metadata message marking the object deleted (its
    name, base64 in the subject): each object's chunks are purged, then its metadata. In that
    order, so a delete cut short leaves an object that a second delete still finds."""
    stream = subjects.obj_stream(subjects.bucket_files(user))
    deleted = 0
    async with contextlib.aclosing(_objects_of(js, user, execution)) as objects:
        async for info, meta in objects:
            if info.nuid:
                chunks = subjects.obj_subject(subjects.bucket_files(user), f"C.{info.nuid}")
                await js.purge_stream(stream, subject=chunks)
            await js.purge_stream(stream, subject=meta)
            deleted += not info.deleted
    return deleted


async def forget(js: JetStreamContext, user: str, execution: str, node: str | None = None) -> int:
    """Delete one execution for good: its files, its events, the entry of its `node`'s index
    (`subjects.RECORD_NODE_KEY`) when the node is known, then its record (last, so an execution
    half deleted is still found and deleted again); the number of files deleted.

    The events and the record are purged by subject, which needs `STREAM.PURGE` on the events
    stream and the records bucket: the default profile, nodes and admins have it, a client of
    the secure profile does not (its purge gets no answer: a `FileError` says so) and asks a
    node instead (`Execution.delete`, `kodo.exec.<user>.<execution>.delete`)."""
    deleted = await delete(js, user, execution)
    records = subjects.BUCKET_EXECUTIONS
    purges = [
        (subjects.STREAM_EVENTS, subjects.events(user, execution, "*")),
        # a fence left by an outside ender would refuse every event of a later launch of the id
        (subjects.STREAM_EVENTS, subjects.fence(execution)),
    ]
    if node and subjects.is_token(node):
        index = subjects.record_node_key(node, user, execution)
        purges.append((subjects.kv_stream(records), subjects.kv_subject(records, index)))
    record = subjects.kv_subject(records, subjects.record_key(user, execution))
    purges.append((subjects.kv_stream(records), record))
    for stream, subject in purges:
        try:
            await js.purge_stream(stream, subject=subject)
        except nats.errors.TimeoutError:
            raise FileError(
                f"execution {execution}: its files are deleted, but {stream} did not answer "
                f"the purge (on the secure profile only a node or an admin may delete events "
                f"and records)"
            ) from None
    await _hold_the_id(js, record)
    return deleted


async def _hold_the_id(js: JetStreamContext, record: str) -> None:
    """Keep a deleted execution's id from a new launch while the events stream still knows
    its events' Msg-Ids (`DUPLICATE_WINDOW`): a launch reusing it would have every event
    after its first ones taken for a duplicate, not stored, and never end. An empty value
    (what readers take for no record) that expires by itself; where the bucket allows no
    per-message TTL (a store older than this version) the id is left free."""
    headers = {MSG_TTL: str(ttl_seconds(DUPLICATE_WINDOW))}
    try:
        await js.publish(record, b"", headers=headers)
    except nats.js.errors.APIError as exc:
        log.warning("deleted %s; its id is not held for %s s: %r", record, DUPLICATE_WINDOW, exc)


async def upload_inputs(
    js: JetStreamContext, user: str, execution: str, paths: Mapping[str, Path | str]
) -> dict[str, dict[str, Any]]:
    """Upload the file inputs of a launch (field → local path) before it is sent; the references
    to put in its inputs, by field."""
    refs = {}
    for field, path in paths.items():
        name = subjects.file_name(execution, "in", f"{field}/{Path(path).name}")
        refs[field] = (await upload(js, user, name, path)).model_dump()
    return refs
