"""Settings of every kodo-bus process, from defaults, a YAML file, `KODO_*` variables and flags.

Precedence, lowest first: model defaults, YAML file, environment, command-line overrides. Every
source is validated by the same pydantic model, so a bad value fails at start with the file (or
variable), the key and the reason — never deep inside a running service.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError, problems_from
from .models import Role

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
ENV_PREFIX = "KODO_"
NATS_ENV = "KODO_NATS"
"""Where every process finds the bus: one URL or a comma-separated list (the settings' `nats`)."""
NATS_ENV_DEPRECATED = "KODO_NATS_URL"
"""The SDK's old name of `KODO_NATS`, still read (with a DeprecationWarning) when that is unset."""
LAUNCH_ATTEMPTS = 3
"""Times a client sends a launch that got no reply (the same execution id each time, so a
node that did take an earlier one answers with that execution: nothing runs twice)."""
LAUNCH_RESPONDERS_WITHIN = 5.0
"""Seconds a client sends again a launch that met no responders: a node is listed online from
its catalog, which may be heard a moment before it takes launches (it is starting, or a
replica restarts). The same execution id each time, so nothing runs twice."""

ACK_WAIT = 2.0
"""Seconds to wait for the acks of a burst before re-sending the events that have none."""
RESEND_WITHIN = 60.0
"""Seconds events that are not stored are re-sent (a server restart, a stream leader election),
counted from the first of them, before they are given up and their executions told so."""
DUPLICATE_WINDOW = ACK_WAIT + RESEND_WITHIN + 5.0
"""Seconds the events stream remembers an event's id (`Nats-Msg-Id`): as long as its publisher
may re-send it (its first ack wait, then `RESEND_WITHIN`), plus a margin for a re-send in
flight. Not longer: nats-server keeps every id of the window in memory, so its memory grows with
the event rate times the window (`kodo-bus bench soak` shows it). A copy stored past the window
is still dropped by readers, which order events by seq."""
EVENTS_MAX_BYTES = 4 * 1024**3
"""Bytes the `KODO_EVENTS` stream holds at most; past it the oldest events are discarded. Why
4 GiB: at the ~3.5 KB a short execution stores, over a million executions — days of a busy
node — and with `RECORDS_MAX_BYTES` half of the packaged server's 10 GB `max_file_store`,
the rest left to files and views."""
VIEWS_MAX_BYTES = 512 * 1024**2
"""Bytes the `KODO_VIEWS` stream of one bus holds at most; past it the oldest view messages go.
Sized so a burst fits: at 10,000 nodes a whole view is ~44 MB, and a bus of a 5-bus chain
carries a few of them plus their changes while its registries take them in. A registry that
lags by more than this (or `VIEWS_MAX_AGE`) sees a gap and asks for one more whole view."""
VIEWS_MAX_AGE = 120.0
"""Seconds the `KODO_VIEWS` stream keeps a view message: far longer than a registry busy
taking in a burst lags (seconds), short enough that the stream holds only the last minutes of
view traffic (a registry reads it from where it stopped, never from the start)."""
RECORDS_MAX_BYTES = 1024**3
"""Bytes the `KODO_EXECUTIONS` bucket holds at most; past it the least recently written
records are discarded. A record is ~400 bytes, so this holds more executions than the events
stream does: a record outlives its events, and a follower of an execution whose events went
is told from its record (`ExecutionLost`), rather than finding nothing."""

FILES_QUOTA = 5 * 1024**3
"""Bytes of files each client of the secure profile may keep at most (its store account's
JetStream `max_file`): one user's uploads and outputs cannot fill the server's disk. Set per
profile as `files_quota` under `server:` in its users.yaml (-1: no limit). nats-server reserves
every account's `max_file` out of its `max_file_store`, so the clients share what the store
keeps beside the events and the records: each gets the smaller of this and its share
(`auth.client_files_quota`)."""
SECURE_FILE_STORE = 10 * 1024**3
"""The secure profile's nats-server `max_file_store` (`file_store` under `server:` in its
users.yaml): the events stream, the records bucket and every client's files quota within it."""


def split_urls(values: str | Iterable[str]) -> list[str]:
    """URLs from one string or several, each possibly a comma-separated list."""
    parts = [values] if isinstance(values, str) else list(values)
    return [url.strip() for part in parts for url in part.split(",") if url.strip()]


def nats_env(env: Mapping[str, str] | None = None) -> str | None:
    """The raw `KODO_NATS` value, else the deprecated `KODO_NATS_URL`'s (which warns); None when
    neither is set (an empty value counts as unset)."""
    env = os.environ if env is None else env
    if raw := env.get(NATS_ENV, "").strip():
        return raw
    if raw := env.get(NATS_ENV_DEPRECATED, "").strip():
        warnings.warn(
            f"{NATS_ENV_DEPRECATED} is deprecated: set {NATS_ENV} (the same comma-separated URLs)",
            DeprecationWarning,
            stacklevel=3,
        )
        return raw
    return None


def nats_urls(
    given: str | Iterable[str] | None = None, env: Mapping[str, str] | None = None
) -> list[str]:
    """The bus to connect to: `given` (an argument, `--nats` flags), else `KODO_NATS` (or the
    deprecated `KODO_NATS_URL`), else nats://127.0.0.1:4222. Any of them may list several URLs,
    comma-separated."""
    if given is not None and (urls := split_urls(given)):
        return urls
    raw = nats_env(env)
    return split_urls(raw) if raw is not None else [DEFAULT_NATS_URL]


class _Settings(BaseModel):
    """Shared constructors: YAML file, environment, overrides."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def build(
        cls,
        file: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Self:
        """Merge defaults < YAML `file` < `env` (KODO_*) < `overrides` (None values skipped)."""
        data: dict[str, Any] = {}
        source = "settings"
        if file is not None:
            data.update(_read_yaml(Path(file)))
            source = str(file)
        data.update(cls._env_values(os.environ if env is None else env))
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.parse(data, source)

    @classmethod
    def from_yaml(cls, file: Path | str) -> Self:
        """Settings from one YAML file (no environment)."""
        return cls.parse(_read_yaml(Path(file)), str(file))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        """Settings from `KODO_<FIELD>` variables (lists comma-separated)."""
        return cls.parse(cls._env_values(os.environ if env is None else env), "environment")

    @classmethod
    def parse(cls, data: Mapping[str, Any], source: str) -> Self:
        """Validate `data`; a failure names `source`, the key and the reason."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            lines = "; ".join(f"{p.field}: {p.message}" for p in problems_from(exc))
            raise ConfigError(f"{source}: {lines}") from None

    @classmethod
    def _env_values(cls, env: Mapping[str, str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            # `nats` also takes the deprecated KODO_NATS_URL, like every other process
            raw = nats_env(env) if name == "nats" else env.get(ENV_PREFIX + name.upper())
            if raw is None or name in cls._env_ignored():
                continue
            origin = getattr(field.annotation, "__origin__", None)
            is_list = origin is list or str(field.annotation).startswith("list[")
            values[name] = [p.strip() for p in raw.split(",") if p.strip()] if is_list else raw
        return values

    @classmethod
    def _env_ignored(cls) -> frozenset[str]:
        return frozenset()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


class Credentials(_Settings):
    """How to authenticate to NATS; all optional (development buses need none)."""

    user: str | None = None
    password: str | None = None
    creds: Path | None = None
    nkey: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None


class ConnectSettings(_Settings):
    """Where and how a process connects to NATS."""

    nats: list[str] = Field(default_factory=lambda: [DEFAULT_NATS_URL], min_length=1)
    retry: int = Field(default=9, ge=-1)
    """Connection attempts after the first; -1 retries forever."""
    credentials: Credentials = Field(default_factory=Credentials)
    name: str = "kodo-bus"
    inbox_prefix: str | None = None
    """Prefix of reply subjects (`_INBOX_<user>` in the secure profile, where a user may
    subscribe to its own inboxes only). None: the NATS default `_INBOX`."""


class FlowDecl(BaseModel):
    """One flow named in a config file, by `entry` (module:function; with the crewai extra also
    a crewai Crew or Flow `module:name`, or a crew YAML file) or `module`."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    entry: str | None = None
    module: str | None = None
    summary: str | None = None
    description: str | None = None
    tags: list[str] | None = None
    version: str | None = None
    author: str | None = None
    inputs: str | None = None
    """`module:PydanticModel` of the flow's inputs (overrides what the decorator declared)."""
    timeout: float | None = Field(default=None, gt=0)
    retention: float | None = Field(default=None, ge=1)
    """Seconds this flow's events and records are kept, as `@flow(retention=...)`."""

    @model_validator(mode="after")
    def _one_source(self) -> FlowDecl:
        if (self.entry is None) == (self.module is None):
            raise ValueError("give exactly one of 'entry: module:function' or 'module: pkg.mod'")
        if self.module is not None and (self.name or self.inputs):
            raise ValueError("'name' and 'inputs' go with 'entry', not with 'module'")
        if self.name is not None:
            _token(self.name, "flow name")
        return self


def _token(value: str, what: str) -> str:
    """`subjects.check_token` as a pydantic validator wants it: a bad name fails the file's load
    with its key, before anything announces it (a registry would refuse it anyway)."""
    from .subjects import check_token

    try:
        return check_token(value, what)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def default_service_id(role: str) -> str:
    """A stable id when none is configured: role and host name, made subject-safe."""
    host = "".join(
        c if (c.isascii() and c.isalnum()) or c in "-_" else "-" for c in socket.gethostname()
    )
    return f"{role}-{host}"


class ServiceSettings(_Settings):
    """Everything `kodo-bus run` needs; keys of the YAML config file."""

    id: str = ""
    role: Role = "node"
    organization: str = ""
    nats: list[str] = Field(default_factory=lambda: [DEFAULT_NATS_URL], min_length=1)
    feed: bool | None = None
    """Take in peers' views (registry: yes, provider/hybrid: no). None picks by role."""
    connect: list[str] = Field(default_factory=list)
    """Other, independent buses to republish to (and feed from, when feed is on)."""
    heartbeat: float = Field(default=5.0, gt=0)
    ttl: float | None = Field(default=None, gt=0)
    """A node silent this long is offline. Default: three heartbeats."""
    flows: list[FlowDecl] = Field(default_factory=list)
    log_level: str = "INFO"
    log_file: Path | None = None
    retry: int = Field(default=9, ge=-1)
    cache_reset: bool = False
    max_running: int | None = Field(default=None, ge=1)
    """Executions running at once on this node. Default: Ray's CPU count."""
    max_queue: int = Field(default=10_000, ge=0)
    ray_address: str | None = None
    actors: int | None = Field(default=None, ge=1)
    """Long-lived Ray actors that run executions. Default: max_running, at most 4."""
    events_max_age: float = Field(default=7 * 24 * 3600.0, gt=0)
    """Seconds JetStream keeps execution events and records."""
    events_max_bytes: int = Field(default=EVENTS_MAX_BYTES, ge=-1)
    """Bytes of the events stream at most (-1: no limit); the oldest events go first."""
    records_max_bytes: int = Field(default=RECORDS_MAX_BYTES, ge=-1)
    """Bytes of the executions bucket at most (-1: no limit); the least recently written
    records go first."""
    views_max_bytes: int = Field(default=VIEWS_MAX_BYTES, gt=0)
    """Bytes of view messages the `KODO_VIEWS` stream keeps on a bus (registries with feed on)."""
    views_max_age: float = Field(default=VIEWS_MAX_AGE, gt=0)
    """Seconds the `KODO_VIEWS` stream keeps a view message."""
    retention: float = Field(default=7 * 24 * 3600.0, gt=0)
    """Seconds an offline node stays in a registry's view before the registry prunes it: long
    enough for a machine away over a week-end to come back listed, short enough that a view
    does not fill with nodes nobody will start again (`kodo-bus forget` removes one at once)."""
    grace: float = Field(default=30.0, ge=0)
    """On SIGTERM, seconds running executions get to finish before they are cancelled."""
    max_depth: int = Field(default=32, ge=1)
    replicas: int = Field(default=1, ge=1, le=5)
    """JetStream replicas of the events stream and the buckets this service creates (3 on a
    cluster, see deploy/cluster/)."""
    credentials: Credentials = Field(default_factory=Credentials)

    @model_validator(mode="after")
    def _defaults(self) -> ServiceSettings:
        if not self.id:
            self.id = default_service_id(self.role)
        _token(self.id, "service id")
        return self

    @property
    def is_registry(self) -> bool:
        """Registries, providers and hybrids keep a view and answer flows/nodes queries."""
        return self.role != "node"

    @property
    def is_node(self) -> bool:
        """Nodes and hybrids serve flows (and so need Ray)."""
        return self.role in ("node", "hybrid")

    @property
    def feeds(self) -> bool:
        """Whether this service takes in other registries' views."""
        if self.feed is not None:
            return self.feed and self.is_registry
        return self.role == "registry"

    @property
    def liveness_ttl(self) -> float:
        """Silence after which a node is shown offline: `ttl`, or three heartbeats."""
        return self.ttl if self.ttl is not None else 3 * self.heartbeat

    def connect_settings(self) -> ConnectSettings:
        """The NATS connection of this service, named by its id with its own reply inboxes."""
        from .subjects import inbox

        return ConnectSettings(
            nats=self.nats,
            retry=self.retry,
            credentials=self.credentials,
            name=self.id,
            inbox_prefix=inbox(self.id),
        )

    @classmethod
    def _env_ignored(cls) -> frozenset[str]:
        return frozenset({"flows", "credentials"})


DEFAULT_SERVER_HOST = "127.0.0.1"
WEB_HOST, WEB_PORT = "127.0.0.1", 8300  # where `kodo-bus web` (and `up`) serve the panel
WEB_SESSIONS_MAX, WEB_SESSION_IDLE = 64, 1800.0  # browsers logged in at once; idle s to log out
WEB_UPLOAD_MAX = 256 * 1024 * 1024  # bytes of one launch form's files at most (spooled to disk)


class ServerSettings(_Settings):
    """The embedded nats-server (`kodo-bus server`, `kodo-bus up`, test fixtures)."""

    host: str | None = None
    """Client listen address. None: the config file's own `host` (or `listen`, `net`), else
    127.0.0.1 — loopback, because the default config has no authentication."""
    port: int = Field(default=4222, ge=-1, le=65535)
    """Client port; 0 or -1 picks a free one."""
    http_port: int | None = Field(default=8222, ge=-1, le=65535)
    """Monitoring port; None turns monitoring off, 0 or -1 picks a free one."""
    store: Path = Path("data/nats")
    config: Path | None = None
    """nats-server config file. Default: ./nats-server.conf if present, else the packaged one."""
    binary: Path | None = None
    server_name: str | None = None
