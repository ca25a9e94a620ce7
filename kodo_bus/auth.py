"""The secure profile: users, roles and the nats-server permissions that keep them apart.

NATS enforces everything here, not kodo-bus code: a process that is talked into misbehaving still
cannot announce as another node, launch as another user or read another user's events. That works
because every private thing carries its owner in a subject token (`kodo.launch.<user>...`,
`kodo.events.<user>...`, KV key `<user>.<execution>`) and each user gets an inbox prefix of its
own (`_INBOX_<user>`), so replies and JetStream deliveries never travel on a shared wildcard.

Users live in a small YAML file next to the config (name, role, bcrypt hash or nkey public key);
the nats-server config is rendered from it, so adding a user is "edit the list, render again" and
no secret is ever stored in clear. Every subject below is built from `subjects.py` patterns.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import bcrypt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import subjects as s
from .accounts import api, client_api, files_api, files_service_api, prefixed, render_accounts
from .config import EVENTS_MAX_BYTES, FILES_QUOTA, RECORDS_MAX_BYTES, SECURE_FILE_STORE
from .errors import ConfigError, problems_from

AuthRole = Literal["node", "registry", "client", "monitor", "admin"]
AUTH_ROLES: tuple[str, ...] = ("node", "registry", "client", "monitor", "admin")
"""`registry` covers providers and hybrids' registry half; a hybrid needs both, so it runs as
`registry` plus the node rights of its own id (the registry role includes them, see below)."""

BCRYPT_ROUNDS = 11
USERS_FILE = "users.yaml"
CONF_FILE = "nats-server.conf"

# JetStream API and NATS micro (NATS conventions, not kodo-bus subjects).
_SRV = "$SRV.>"
_JS_INFO = f"{s.JS_API}.INFO"
"""Answered by the server itself in an account without JetStream: how `bus.jetstream` learns
that the stores' API is behind the prefix. Every user may ask it."""
_kv = s.kv_subject
_kv_stream = s.kv_stream


def _api(*tokens: str) -> str:
    """A JetStream API subject as users request it: behind the prefix (see `accounts`)."""
    return prefixed(api(*tokens))


@dataclass(frozen=True)
class Permissions:
    """What one user may publish and subscribe to; replies to requests it received are allowed."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = True


def _reads_events(user: str) -> list[str]:
    """JetStream reads confined to `user`'s executions: filtered consumers and direct gets by
    subject (`accounts.client_api`), plus flow control of its ordered consumers.

    Only the filtered consumer-create form (`CONSUMER.CREATE.<stream>.<name>.<filter>`) is
    allowed; the server checks that the filter in the body equals the one in the subject, so a
    consumer on someone else's events cannot be created. The plain form is not allowed.
    """
    records = _kv_stream(s.BUCKET_EXECUTIONS)
    reads = [prefixed(a) for st in (s.STREAM_EVENTS, records) for a in client_api(user, st)]
    return [_JS_INFO, *reads, f"$JS.FC.{s.STREAM_EVENTS}.>", f"$JS.FC.{records}.>"]


def _service(name: str) -> tuple[list[str], list[str]]:
    """What every service needs: its own request endpoints, NATS micro, its inbox."""
    sub = [
        s.SVC_INFO.format(service=name),
        s.SVC_FLOWS.format(service=name),
        s.SVC_NODES.format(service=name),
        s.SVC_CATALOG.format(service=name),
        s.SVC_DISCONNECT.format(service=name),
        _SRV,
        s.inbox(name) + ".>",
    ]
    pub = [
        # the views of other services (a node's sync answers, a registry's catalog repair)
        s.SVC_CATALOG.format(service="*"),
        s.SVC_INFO.format(service="*"),
    ]
    return pub, sub


def _node(name: str) -> Permissions:
    """A node announces as itself, takes its own launches and writes its executions' events.

    Not enforceable without a node token in those subjects (see deploy/secure/README.md): which
    executions' events and records a node writes, and which control messages it hears.
    """
    pub, sub = _service(name)
    records = s.BUCKET_EXECUTIONS
    pub += [
        s.node_catalog(name),
        s.node_heartbeat(name),
        s.node_bye(name),
        s.EVENTS_ALL,
        s.FENCE_ALL,  # it ends executions its workers cannot (`lifecycle.end_from_outside`)
        _kv(records, ">"),
        _api("STREAM", "INFO", s.STREAM_EVENTS),
        _api("STREAM", "INFO", _kv_stream(records)),
        _api("STREAM", "CREATE", s.STREAM_EVENTS),
        _api("STREAM", "CREATE", _kv_stream(records)),
        _api("DIRECT", "GET", _kv_stream(records), _kv(records, ">")),
        _api("DIRECT", "GET", s.STREAM_EVENTS, s.EVENTS_ALL),
        # an outside ender reads an execution's trail by next_by_subj (the body form)
        _api("DIRECT", "GET", s.STREAM_EVENTS),
        _api("DIRECT", "GET", _kv_stream(records)),
        _JS_INFO,
    ]
    # Files: a worker reads its launcher's input files and writes the outputs (any client's);
    # a delete (`kodo.exec.<user>.<execution>.delete`) deletes them and purges the execution's
    # events and record (`STREAM.PURGE.*`, see `files_service_api`).
    pub += files_service_api()
    # Workflows: a node launches the next flows on behalf of the execution's launcher.
    pub.append(s.launch("*", "*", "*"))
    # and hands a cancel or answer to the node holding the execution (`runner.py`, control)
    pub.append(s.exec_control_at_node("*"))
    sub += [s.launch_node(name), s.SYNC, s.EXEC_CONTROL_ALL, s.exec_control_at_node(name)]
    # Its runner and Ray workers hand jobs and outcomes to each other.
    pub.append(s.work_of_node(name))
    sub.append(s.work_of_node(name))
    return Permissions(tuple(pub), tuple(sub))


def _registry(name: str) -> Permissions:
    """A registry hears every announcement, keeps its own view bucket, ends lost executions."""
    node = _node(name)
    view = s.bucket_view(name)
    records = s.BUCKET_EXECUTIONS
    pub = [
        *node.publish,
        s.SYNC,
        s.registry_view(name),
        s.REGISTRY_ASK_ALL,  # an ask names the registry asked
        s.SVC_CATALOG.format(service="*"),
        _kv(view, ">"),
        _api("STREAM", "INFO", _kv_stream(view)),
        _api("STREAM", "CREATE", _kv_stream(view)),
        _api("STREAM", "UPDATE", _kv_stream(view)),
        _api("STREAM", "DELETE", _kv_stream(view)),
        _api("STREAM", "UPDATE", s.STREAM_EVENTS),
        _api("STREAM", "UPDATE", _kv_stream(records)),
        _api("STREAM", "NAMES"),
        # kv.keys() creates unnamed consumers (the unfiltered create form)
        _api("CONSUMER", "CREATE", _kv_stream(view)),
        _api("CONSUMER", "CREATE", _kv_stream(view), ">"),
        _api("CONSUMER", "CREATE", _kv_stream(records)),
        _api("CONSUMER", "CREATE", _kv_stream(records), ">"),
        _api("DIRECT", "GET", _kv_stream(view), ">"),
        _api("CONSUMER", "INFO", _kv_stream(view), "*"),
        _api("CONSUMER", "INFO", _kv_stream(records), "*"),
        # views read through the bus's views stream, at the registry's pace (`viewstream.py`):
        # it makes the stream and brings it to its limits, reads it by ordered consumers
        _api("STREAM", "INFO", s.STREAM_VIEWS),
        _api("STREAM", "CREATE", s.STREAM_VIEWS),
        _api("STREAM", "UPDATE", s.STREAM_VIEWS),
        _api("CONSUMER", "CREATE", s.STREAM_VIEWS, "*", s.REGISTRY_VIEW_ALL),
        _api("CONSUMER", "INFO", s.STREAM_VIEWS, "*"),
        _api("CONSUMER", "DELETE", s.STREAM_VIEWS, "*"),
        f"$JS.FC.{s.STREAM_VIEWS}.>",
    ]
    sub = [*node.subscribe, s.NODE_ALL, s.REGISTRY_VIEW_ALL, s.registry_ask(name)]
    sub.append(s.ADMIN_FORGET_ALL)
    return Permissions(tuple(dict.fromkeys(pub)), tuple(dict.fromkeys(sub)))


def _client(name: str) -> Permissions:
    """A client launches as itself and reads only its own executions, live or stored."""
    pub = [
        s.launch(name, "*", "*"),
        s.exec_cancel(name, "*"),
        s.exec_answer(name, "*"),
        s.exec_delete(name, "*"),  # a node deletes it: the client may not purge (`runner.py`)
        s.exec_cancel_at(name, "*", "*"),
        s.exec_answer_at(name, "*", "*"),
        s.SVC_INFO.format(service="*"),
        s.SVC_FLOWS.format(service="*"),
        s.SVC_NODES.format(service="*"),
        _SRV,
        *_reads_events(name),
        *files_api(name),  # its own bucket only (a store account of its own: `accounts.py`)
    ]
    sub = [s.inbox(name) + ".>", s.events_of_user(name)]
    return Permissions(tuple(pub), tuple(sub))


def _monitor(name: str) -> Permissions:
    """Reads everything, writes nothing: requests only to info endpoints and read-only APIs."""
    pub = [
        s.SVC_INFO.format(service="*"),
        s.SVC_FLOWS.format(service="*"),
        s.SVC_NODES.format(service="*"),
        _SRV,
        _JS_INFO,
        _api("STREAM", "INFO", "*"),
        _api("STREAM", "NAMES"),
        _api("STREAM", "LIST"),
        _api("CONSUMER", "CREATE", ">"),
        _api("CONSUMER", "INFO", ">"),
        _api("CONSUMER", "LIST", "*"),
        _api("CONSUMER", "NAMES", "*"),
        _api("DIRECT", "GET", ">"),
        _api("STREAM", "MSG", "GET", "*"),
    ]
    return Permissions(tuple(pub), (">",))


def _admin(name: str) -> Permissions:
    return Permissions((">",), (">",))


_BUILDERS = {
    "node": _node,
    "registry": _registry,
    "client": _client,
    "monitor": _monitor,
    "admin": _admin,
}


def permissions(role: str, name: str) -> Permissions:
    """The permissions of user `name` in `role` (the name is its node id, registry id or user)."""
    s.check_token(name, "user name")
    if role not in _BUILDERS:
        raise ConfigError(f"unknown role {role!r}: use one of {', '.join(AUTH_ROLES)}")
    return _BUILDERS[role](name)


# -- users ---------------------------------------------------------------------------------------
class User(BaseModel):
    """One account: a bcrypt hash of its password, or the public key of its nkey."""

    model_config = ConfigDict(extra="forbid")

    name: str
    role: AuthRole
    password_hash: str | None = None
    nkey: str | None = Field(default=None, pattern=r"^U[A-Z2-7]{55}$")

    @field_validator("name")
    @classmethod
    def _token(cls, value: str) -> str:
        try:
            return s.check_token(value, "user name")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


def new_password() -> str:
    """A random password (about 190 bits), shown once to whoever creates the user."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, rounds: int = BCRYPT_ROUNDS) -> str:
    """bcrypt hash in the `$2a$` form every nats-server version accepts."""
    salt = bcrypt.gensalt(rounds=rounds, prefix=b"2a")
    return bcrypt.hashpw(password.encode(), salt).decode()


class UserStore:
    """The users file of one secure profile directory, and the config rendered from it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.users_file = directory / USERS_FILE
        self.conf_file = directory / CONF_FILE

    def load(self) -> list[User]:
        return self._read()[0]

    def server(self) -> dict[str, Any]:
        """Server settings the config was rendered with (host, port, http, server_name)."""
        return self._read()[1]

    def _read(self) -> tuple[list[User], dict[str, Any]]:
        if not self.users_file.is_file():
            return [], {}
        try:
            data = yaml.safe_load(self.users_file.read_text()) or {}
            users = [User.model_validate(u) for u in data.get("users", [])]
            return users, dict(data.get("server") or {})
        except (yaml.YAMLError, ValidationError, AttributeError) as exc:
            detail = (
                "; ".join(f"{p.field}: {p.message}" for p in problems_from(exc))
                if isinstance(exc, ValidationError)
                else str(exc)
            )
            raise ConfigError(f"{self.users_file}: {detail}") from None

    def save(self, users: Iterable[User], **server: Any) -> None:
        """Write the users file and render the nats-server config next to it."""
        users = list(users)
        server = {**self.server(), **{k: v for k, v in server.items() if v is not None}}
        self.directory.mkdir(parents=True, exist_ok=True)
        body = {"server": server, "users": [u.model_dump(exclude_none=True) for u in users]}
        header = "# kodo-bus users: names, roles and bcrypt hashes (never passwords)\n"
        self.users_file.write_text(header + yaml.safe_dump(body, sort_keys=False))
        self.conf_file.write_text(render_conf(users, **server))

    def add(
        self,
        name: str,
        role: str,
        *,
        password: str | None = None,
        nkey: str | None = None,
        rounds: int = BCRYPT_ROUNDS,
        **server: Any,
    ) -> str | None:
        """Add (or replace) a user; the new password when one was generated, else None."""
        generated = None
        if nkey is None and password is None:
            password = generated = new_password()
        try:
            user = User(
                name=name,
                role=role,
                password_hash=hash_password(password, rounds) if password is not None else None,
                nkey=nkey,
            )
        except ValidationError as exc:
            lines = "; ".join(f"{p.field}: {p.message}" for p in problems_from(exc))
            raise ConfigError(f"user {name!r}: {lines}") from None
        users = [u for u in self.load() if u.name != name] + [user]
        self.save(users, **server)
        return generated

    def remove(self, name: str, **server: Any) -> bool:
        users = self.load()
        kept = [u for u in users if u.name != name]
        self.save(kept, **server)
        return len(kept) != len(users)


def client_files_quota(files_quota: int, file_store: int, clients: int) -> int:
    """Each client's files quota: `files_quota`, cut to the clients' share of the store.

    nats-server reserves an account's `max_file` out of `max_file_store` and refuses to start
    (err 10047) when the reservations exceed it, so a fixed quota would make a bus with a few
    more clients unable to start. The events stream and the records bucket (the bus's own,
    without a reservation) keep their limits; the clients share the rest equally."""
    if files_quota == -1 or file_store == -1 or clients == 0:
        return files_quota
    room = file_store - EVENTS_MAX_BYTES - RECORDS_MAX_BYTES
    if room < clients:
        raise ConfigError(
            f"file_store {file_store} leaves no room for the files of {clients} clients beside "
            f"the events ({EVENTS_MAX_BYTES}) and the records ({RECORDS_MAX_BYTES}): raise "
            f"file_store under server: in users.yaml, or set files_quota -1"
        )
    return min(files_quota, room // clients)


def _q(value: str) -> str:
    """A quoted string of the NATS config format (JSON quoting is a subset it reads)."""
    return json.dumps(value)


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def render_conf(
    users: Iterable[User],
    *,
    host: str = "127.0.0.1",
    port: int = 4222,
    http: str | None = "127.0.0.1:8222",
    server_name: str = "kodo-secure",
    files_quota: int = FILES_QUOTA,
    file_store: int = SECURE_FILE_STORE,
) -> str:
    """The nats-server config of the secure profile: the dev settings plus accounts and roles;
    `files_quota` (users.yaml `server: files_quota:`): bytes of files each client may keep at
    most; `file_store` (`server: file_store:`): the server's `max_file_store`."""
    users = list(users)
    for name, value in (("files_quota", files_quota), ("file_store", file_store)):
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise ConfigError(f"{name} must be a number of bytes (-1: none), not {value!r}")
    clients = sum(1 for u in users if u.role == "client")
    quota = client_files_quota(files_quota, file_store, clients)
    lines = [
        "# kodo-bus secure nats-server configuration — GENERATED by `kodo-bus auth`;",
        "# edit users with `kodo-bus auth add-user/remove-user`, not by hand.",
        "# Passwords are bcrypt hashes. Production: prefer nkeys or TLS client certificates",
        "# (see deploy/secure/README.md). Every permission is built from kodo_bus/subjects.py;",
        "# why there are accounts: ARCHITECTURE.md, 'Security: who can make whom publish what'.",
        f"server_name: {_q(server_name)}",
        f"host: {_q(host)}",
        f"port: {port}",
    ]
    if http:
        lines.append(f"http: {_q(http)}")
    lines += [
        "max_payload: 8MB",
        "max_pending: 64MB",
        # a slow reader loses messages rather than stalling publishers (kodo_bus/nats-server.conf)
        "no_fast_producer_stall: true",
        "max_connections: 10000",
        'ping_interval: "20s"',
        "ping_max: 3",
        "jetstream {",
        "    max_memory_store: 256MB",
        f"    max_file_store: {file_store}",
        "}",
        f"# files quota of each of the {clients} clients: {quota} bytes (files_quota "
        f"{files_quota}, at most",
        "# its share of max_file_store beside the events and records: config.FILES_QUOTA)",
    ]
    lines += render_accounts(((u, permissions(u.role, u.name)) for u in users), files_quota=quota)
    return "\n".join(lines)
