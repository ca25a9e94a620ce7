"""The secure profile's NATS accounts: into which account every message a user can cause lands.

NATS does not check a request's reply subject: every responder (JetStream's API, `$SRV` micro,
kodo's services) publishes onto whatever subject the requester names, and a JetStream push
consumer delivers wherever its creator says. Permissions cannot stop that inside one account.
The account boundary does: a request that crosses a service import gets a fresh reply subject,
and the answer travels back only into the requester's own account. So (ARCHITECTURE.md,
"Security: who can make whom publish what"):

- `KODO` holds the services (nodes, registries) and admins; it exports what outsiders may request
  and `kodo.>` as a stream;
- each client and each monitor has an account of its own that imports only its own subjects and
  the JetStream reads of them: whatever bob makes any responder emit lands in bob's account;
- each store (the events stream, the records bucket, the registries' views) lives in an account
  of its own with JetStream, where a consumer's delivery can reach nothing that acts (its one
  stream refuses a delivery it would capture, as a cycle) but the exported `_INBOX_<user>.>`;
- every other account reaches the stores' JetStream API under `subjects.JS_API_KODO`, because an
  account without JetStream answers `$JS.API.>` itself (`bus.jetstream` finds the prefix);
- each client's files (its Object Store bucket `KODO_FILES_<user>`) live in a store account of
  their own, `KODO_STORE_FILES_<user>`: the client gets its bucket's whole API (it creates the
  bucket, puts, gets, lists and deletes there), because whatever it makes that API do stays
  inside an account that holds nothing but its own files; services import every bucket. That
  account's JetStream limits are the client's files quota (`config.FILES_QUOTA`, `max_file`; no
  memory storage at all, which would bypass it and take the server's RAM).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import subjects as s
from .config import FILES_QUOTA

if TYPE_CHECKING:
    from .auth import Permissions, User

SERVICES_ACCOUNT = "KODO"
"""Nodes, registries and admins: the account where launches, control and announcements act."""
EVENTS_ACCOUNT = "KODO_STORE_EVENTS"
RECORDS_ACCOUNT = "KODO_STORE_RECORDS"
VIEWS_ACCOUNT = "KODO_STORE_VIEWS"
FILES_ACCOUNT = "KODO_STORE_FILES_{user}"
"""One per client: a stream the client may create and reconfigure must not share an account
with anybody else's (it could capture their put subjects or their deliveries)."""
SERVICE_ROLES = frozenset({"node", "registry", "admin"})

_SRV = "$SRV.>"


def account_of(user: User) -> str:
    """Services and admins share `KODO`; each client and monitor is alone in its account."""
    return SERVICES_ACCOUNT if user.role in SERVICE_ROLES else f"KODO_USER_{user.name}"


def api(*tokens: str) -> str:
    """A JetStream API subject as a store account serves it."""
    return ".".join((s.JS_API, *tokens))


def prefixed(subject: str) -> str:
    """The same API subject as every other account requests it."""
    return s.JS_API_KODO + subject[len(s.JS_API) :]


@dataclass(frozen=True)
class _Store:
    account: str
    streams: tuple[str, ...]
    writes: tuple[str, ...]
    """Subjects services store through (a JetStream publish, acknowledged)."""
    owner: str | None = None
    """The one client whose files these are (a files store); None: a shared store."""
    limits: str = "enabled"
    """The account's `jetstream` setting: `enabled` (the server's limits) or a block of its own."""


def files_account(user: str) -> str:
    return FILES_ACCOUNT.format(user=user)


def files_limits(quota: int) -> str:
    """A files account's JetStream limits: `quota` bytes on disk (-1: none), nothing in memory.

    Account limits, not the bucket's `max_bytes`: the client has its stream's whole API and
    could raise the latter; the account's it cannot touch."""
    return f"{{ max_file: {int(quota)}, max_mem: 0 }}"


def _files_store(user: str, quota: int = FILES_QUOTA) -> _Store:
    bucket = s.bucket_files(user)
    return _Store(
        files_account(user),
        (s.obj_stream(bucket),),
        (s.obj_subject(bucket, ">"),),
        owner=user,
        limits=files_limits(quota),
    )


def _stores(users: list[User], files_quota: int = FILES_QUOTA) -> list[_Store]:
    views = [s.bucket_view(u.name) for u in users if u.role == "registry"]
    records = s.BUCKET_EXECUTIONS
    return [
        _Store(EVENTS_ACCOUNT, (s.STREAM_EVENTS,), (s.EVENTS_ALL, s.FENCE_ALL)),
        _Store(RECORDS_ACCOUNT, (s.kv_stream(records),), (s.kv_subject(records, ">"),)),
        _Store(
            VIEWS_ACCOUNT,
            (*(s.kv_stream(v) for v in views), s.STREAM_VIEWS),
            (*(s.kv_subject(v, ">") for v in views), s.REGISTRY_VIEW_ALL),
        ),
        *(_files_store(u.name, files_quota) for u in users if u.role == "client"),
    ]


def _stream_api(stream: str) -> list[str]:
    """Every JetStream API subject that names `stream` (a trusted service's reach)."""
    return [
        api("STREAM", "*", stream),
        api("STREAM", "MSG", "*", stream),
        api("CONSUMER", "*", stream),
        api("CONSUMER", "*", stream, ">"),
        api("DIRECT", "GET", stream),
        api("DIRECT", "GET", stream, ">"),
    ]


def _flow(stream: str) -> list[str]:
    """Acks and flow-control replies of `stream`'s consumers (not under the API prefix)."""
    return [f"$JS.ACK.{stream}.>", f"$JS.FC.{stream}.>"]


def client_api(user: str, stream: str) -> list[str]:
    """The JetStream API of `stream` a client may use: reads of its own subjects, in the forms
    that name them (a filtered consumer create, a direct get by subject).

    No `STREAM.INFO` (its `subjects_filter` lists every user's subjects), no body-only form
    (`DIRECT.GET.<stream>` with `next_by_subj` in the body reads any subject).
    """
    if stream == s.STREAM_EVENTS:
        own = s.events_of_user(user)
    else:
        own = s.kv_subject(s.BUCKET_EXECUTIONS, s.record_key(user, ">"))
    return [
        api("CONSUMER", "CREATE", stream, "*", own),
        api("CONSUMER", "INFO", stream, "*"),
        api("CONSUMER", "DELETE", stream, "*"),
        api("DIRECT", "GET", stream, own),
    ]


def monitor_api(stream: str) -> list[str]:
    """Every read of `stream` (a monitor sees everything, changes nothing)."""
    return [
        api("STREAM", "INFO", stream),
        api("STREAM", "MSG", "GET", stream),
        api("CONSUMER", "CREATE", stream),
        api("CONSUMER", "CREATE", stream, ">"),
        api("CONSUMER", "INFO", stream, "*"),
        api("CONSUMER", "DELETE", stream, "*"),
        api("CONSUMER", "LIST", stream),
        api("CONSUMER", "NAMES", stream),
        api("DIRECT", "GET", stream),
        api("DIRECT", "GET", stream, ">"),
    ]


def _q(value: str) -> str:
    return json.dumps(value)


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def _service_import(account: str, subject: str, to: str | None = None) -> str:
    mapped = f", to: {_q(to)}" if to else ""
    return f"{{ service: {{ account: {_q(account)}, subject: {_q(subject)} }}{mapped} }}"


def _api_import(account: str, subject: str) -> str:
    return _service_import(account, subject, prefixed(subject))


def _stream_import(account: str, subject: str) -> str:
    return f"{{ stream: {{ account: {_q(account)}, subject: {_q(subject)} }} }}"


def _user_entry(user: User, perms: Permissions) -> list[str]:
    ident = (
        f"nkey: {_q(user.nkey)}"
        if user.nkey
        else f"user: {_q(user.name)}, password: {_q(user.password_hash or '')}"
    )
    return [
        f"            # {user.name}: {user.role}",
        f"            {{ {ident}, permissions: {{",
        f"                publish: {{ allow: {_list(perms.publish)} }},",
        f"                subscribe: {{ allow: {_list(perms.subscribe)} }},",
        f"                allow_responses: {str(perms.allow_responses).lower()}",
        "            } },",
    ]


def _account(
    name: str,
    users: list[tuple[User, Permissions]],
    *,
    jetstream: str | None = None,
    exports: list[str] | None = None,
    imports: list[str] | None = None,
) -> list[str]:
    lines = [f"    {_q(name)}: {{"]
    if jetstream:
        lines.append(f"        jetstream: {jetstream}")
    lines.append("        users: [")
    for user, perms in users:
        lines += _user_entry(user, perms)
    lines.append("        ]")
    for key, items in (("exports", exports), ("imports", imports)):
        if items:
            lines.append(f"        {key}: [")
            lines += [f"            {item}," for item in items]
            lines.append("        ]")
    lines.append("    }")
    return lines


def render_accounts(
    users: Iterable[tuple[User, Permissions]], files_quota: int = FILES_QUOTA
) -> list[str]:
    """The `accounts` block of the secure profile's nats-server config; `files_quota`: bytes of
    files each client may keep."""
    entries = list(users)
    everyone = [u for u, _ in entries]
    services = [(u, p) for u, p in entries if account_of(u) == SERVICES_ACCOUNT]
    outsiders = [(u, p) for u, p in entries if account_of(u) != SERVICES_ACCOUNT]
    stores = _stores(everyone, files_quota)
    inboxes = [s.inbox(u.name) + ".>" for u in everyone]
    lines = ["accounts {"]

    # Stores: their streams, their API and the deliveries into each user's inbox.
    for store in stores:
        exports = [f"{{ service: {_q(w)} }}" for w in store.writes]
        for stream in store.streams:
            exports += [f"{{ service: {_q(a)} }}" for a in (*_stream_api(stream), *_flow(stream))]
        exports += [f"{{ stream: {_q(i)} }}" for i in inboxes]
        lines += _account(store.account, [], jetstream=store.limits, exports=exports)

    # Services: every store whole (under the prefix); exports what outsiders may reach.
    imports: list[str] = []
    for store in stores:
        imports += [_service_import(store.account, w) for w in store.writes]
        for stream in store.streams:
            imports += [_api_import(store.account, a) for a in _stream_api(stream)]
            imports += [_service_import(store.account, f) for f in _flow(stream)]
        imports += [_stream_import(store.account, s.inbox(u.name) + ".>") for u, _ in services]
    exports = [
        f"{{ service: {_q(s.launch('*', '*', '*'))} }}",
        f"{{ service: {_q(s.EXEC_CONTROL_ALL)} }}",
        f"{{ service: {_q(s.exec_control_at_node('*'))} }}",
        f"{{ service: {_q(s.SVC_INFO.format(service='*'))} }}",
        f"{{ service: {_q(s.SVC_FLOWS.format(service='*'))} }}",
        f"{{ service: {_q(s.SVC_NODES.format(service='*'))} }}",
        f"{{ service: {_q(_SRV)}, response_type: stream }}",
        f"{{ stream: {_q(s.ROOT + '.>')} }}",
    ]
    lines += _account(SERVICES_ACCOUNT, services, exports=exports, imports=imports)

    # Clients and monitors, each alone: only what is theirs to reach is imported.
    for user, perms in outsiders:
        lines += _account(account_of(user), [(user, perms)], imports=_outsider(user, stores))
    lines += ["}", ""]
    return lines


def _outsider(user: User, stores: list[_Store]) -> list[str]:
    monitor = user.role == "monitor"
    reach = [
        s.SVC_INFO.format(service="*"),
        s.SVC_FLOWS.format(service="*"),
        s.SVC_NODES.format(service="*"),
    ]
    if not monitor:
        reach = [
            s.launch(user.name, "*", "*"),
            s.exec_cancel(user.name, "*"),
            s.exec_answer(user.name, "*"),
            s.exec_delete(user.name, "*"),
            s.exec_cancel_at(user.name, "*", "*"),
            s.exec_answer_at(user.name, "*", "*"),
            *reach,
        ]
    live = s.ROOT + ".>" if monitor else s.events_of_user(user.name)
    imports = [_service_import(SERVICES_ACCOUNT, r) for r in reach]
    imports.append(_service_import(SERVICES_ACCOUNT, _SRV))
    imports.append(_stream_import(SERVICES_ACCOUNT, live))
    for store in stores:
        if store.account == VIEWS_ACCOUNT and not monitor:
            continue  # clients ask the registries, never their buckets
        if store.owner is not None:
            if store.owner == user.name:
                imports += _own_files(store, user)
            continue  # nobody else's files, not even a monitor's
        for stream in store.streams:
            wanted = monitor_api(stream) if monitor else client_api(user.name, stream)
            imports += [_api_import(store.account, a) for a in wanted]
            imports.append(_service_import(store.account, f"$JS.FC.{stream}.>"))
        imports.append(_stream_import(store.account, s.inbox(user.name) + ".>"))
    return imports


def _own_files(store: _Store, user: User) -> list[str]:
    """A client's own files store: its bucket's whole API, its puts, acks and deliveries."""
    imports = [_service_import(store.account, w) for w in store.writes]
    for stream in store.streams:
        imports += [_api_import(store.account, a) for a in _stream_api(stream)]
        imports += [_service_import(store.account, f) for f in _flow(stream)]
    imports.append(_stream_import(store.account, s.inbox(user.name) + ".>"))
    return imports


def files_api(user: str) -> list[str]:
    """The subjects a client publishes to use its own bucket (its permissions)."""
    bucket = s.bucket_files(user)
    stream = s.obj_stream(bucket)
    return [
        *(prefixed(a) for a in _stream_api(stream)),
        s.obj_subject(bucket, ">"),
        *_flow(stream),
    ]


def files_service_api() -> list[str]:
    """What a node publishes to read, write and delete in every client's bucket: the files
    stores are the only ones imported under these forms (`STREAM.CREATE.*` and the like also
    name the events and records streams, whose creation a node had already).

    `STREAM.PURGE.*`: deleting an object purges its chunks (and an upload cut short by the
    quota purges what it sent). A stream name is one token, so no pattern names the files
    streams only: the form reaches the events and records streams, which a node purges anyway
    (`kodo.exec.<user>.<execution>.delete`), and the registries' view buckets, which they
    rebuild from announcements (deploy/secure/README.md, what is not enforceable)."""
    return [
        s.obj_subject("*", ">"),
        prefixed(api("STREAM", "INFO", "*")),
        prefixed(api("STREAM", "CREATE", "*")),
        prefixed(api("STREAM", "PURGE", "*")),
        prefixed(api("STREAM", "MSG", "GET", "*")),
        prefixed(api("DIRECT", "GET", "*")),
        prefixed(api("CONSUMER", "CREATE", "*")),
        prefixed(api("CONSUMER", "CREATE", "*", ">")),
        prefixed(api("CONSUMER", "INFO", "*", "*")),  # listing an execution's files to delete
        prefixed(api("CONSUMER", "DELETE", "*", "*")),
        "$JS.FC.*.>",
    ]
