"""Every NATS subject, JetStream stream and KV bucket name kodo-bus uses.

This is the only module that spells a subject. `subjects.md` at the repository root documents each
one (who publishes, who listens, the payload model); a test fails when the two disagree.

Tokens (node ids, user names, execution ids, flow names) become subject tokens, so they must not
contain `.`, `*`, `>` or whitespace; `check_token` enforces that where they enter the system.
"""

from __future__ import annotations

import re

from .errors import ConfigError

ROOT = "kodo"

# -- announcements of nodes (pub/sub, msgpack) ---------------------------------------------------
NODE_CATALOG = "kodo.node.{node}.catalog"
NODE_HEARTBEAT = "kodo.node.{node}.heartbeat"
NODE_BYE = "kodo.node.{node}.bye"
NODE_ALL = "kodo.node.*.*"
"""What a registry subscribes to: every node's catalog, heartbeat and bye."""

SYNC = "kodo.sync"
"""A registry asks every node to announce again (sent at registry start)."""

REGISTRY_VIEW = "kodo.registry.{registry}.view"
"""A registry or provider republishes its view (for registries that feed on it)."""
REGISTRY_VIEW_ALL = "kodo.registry.*.view"
REGISTRY_ASK = "kodo.registry.{registry}.ask"
"""A registry that missed part of `registry`'s stream asks it for its whole view. Named after
the registry asked, not the asker, so a one-way link (deploy/leaf) can let in the asks for its
own provider and nothing else."""
REGISTRY_ASK_ALL = "kodo.registry.*.ask"

# -- request/reply on every service (msgpack or json, the reply mirrors the request) -------------
SVC_INFO = "kodo.svc.{service}.info"
SVC_FLOWS = "kodo.svc.{service}.flows"
SVC_NODES = "kodo.svc.{service}.nodes"
SVC_DISCONNECT = "kodo.svc.{service}.disconnect"
SVC_CATALOG = "kodo.svc.{service}.catalog"
"""A node answers with its full catalog (registries use it to repair a missed announcement)."""

# -- admin actions (request, every registry answers) ---------------------------------------------
ADMIN_FORGET = "kodo.admin.forget.{node}"
"""An admin asks every registry on the bus to drop an offline node (or a registry gone for good)
from its view; each registry answers for itself, so the requester gathers several replies."""
ADMIN_FORGET_ALL = "kodo.admin.forget.*"
"""What registries subscribe to (no queue group: every registry must hear it)."""

MICRO_SERVICE_NAME = "kodo-bus"
"""Name under which every service registers with NATS micro ($SRV.PING/INFO/STATS)."""

# -- executions ----------------------------------------------------------------------------------
LAUNCH = "kodo.launch.{user}.{node}.{flow}"
LAUNCH_NODE = "kodo.launch.*.{node}.*"
"""What a node subscribes to (queue group = node id, so replicas share launches)."""
EXEC_CANCEL = "kodo.exec.{user}.{execution}.cancel"
EXEC_ANSWER = "kodo.exec.{user}.{execution}.answer"
EXEC_DELETE = "kodo.exec.{user}.{execution}.delete"
"""The launcher asks the bus to delete an ended execution for good (files, events, record): one
node of all (`EXEC_QUEUE`) does it from the record, with the purge rights a client of the secure
profile lacks. No form addressed to a node: the execution has ended, any node may do it, and the
one that ran it may be gone for good."""
EXEC_CONTROL_ALL = "kodo.exec.*.*.*"
EXEC_CANCEL_ALL = "kodo.exec.*.*.cancel"
EXEC_ANSWER_ALL = "kodo.exec.*.*.answer"
EXEC_QUEUE = "kodo-exec"
"""The queue group every node joins on `kodo.exec.*.*.*` to answer, from the record, for the
executions nobody holds (ended or unknown): one reply per request whatever the number of nodes."""
EXEC_CANCEL_AT = "kodo.exec.{user}.{execution}.cancel.{node}"
"""A cancel addressed to the node that runs the execution (the SDK knows it from the launch
reply or the record): only the processes of that node id hear it, so no other node does any
work for it. `EXEC_CANCEL` stays for a launcher that does not know the node, and is where the
SDK turns when nobody answers here (no process of the node is up)."""
EXEC_ANSWER_AT = "kodo.exec.{user}.{execution}.answer.{node}"
"""An answer addressed to the node that runs the execution (as `EXEC_CANCEL_AT`)."""
EXEC_CONTROL_AT_NODE = "kodo.exec.*.*.*.{node}"
"""What a node subscribes to, in the queue group of its id: one of its processes gets each
request; the holder answers, another answers from the record or hands it on (`WORK_CONTROL`)."""

EVENTS = "kodo.events.{user}.{execution}.{kind}"
EVENTS_ALL = "kodo.events.>"
EVENTS_OF_EXECUTION = "kodo.events.*.{execution}.*"
EVENTS_OF_USER = "kodo.events.{user}.>"
EVENTS_STATUS_ALL = "kodo.events.*.*.status"
EVENTS_LOG_ALL = "kodo.events.*.*.log"
FENCE = "kodo.fence.{execution}"
"""Stored in `KODO_EVENTS` by whoever ends an execution from outside, once its claim won: a
worker's events are stored only while nothing is stored here (`lifecycle.not_ended`), so a
worker that runs on (its node frozen past its ttl) stores nothing behind the ending."""
FENCE_ALL = "kodo.fence.*"

# -- a node and its Ray workers
WORK_JOBS = "kodo.work.{node}.{pool}.{worker}.jobs"
"""A node's runner hands jobs to one of its Ray workers (the worker de-duplicates re-sends)."""
WORK_OUTCOMES = "kodo.work.{node}.{pool}.outcomes"
"""A node's Ray workers report ended executions to their runner (request/reply)."""
WORK_ASK = "kodo.work.{node}.ask.{execution}"
"""Where `tracer.ask` listens while its question is open; the node holding the execution relays
the public answer there, and no responders means no open question (the reply is `closed`)."""
WORK_CONTROL = "kodo.work.{node}.control.{instance}"
"""A process of a node id hands a cancel or answer addressed to the node to the process (replica)
`instance` that holds the execution (header `Kodo-Forwarded-Subject`: the subject it came on)."""
WORK_OF_NODE = "kodo.work.{node}.>"
"""All of one node's internal work traffic (its permissions)."""

# -- JetStream -----------------------------------------------------------------------------------
JS_API = "$JS.API"
"""JetStream's API on a bus of one account (the default)."""
JS_API_KODO = "$JS.kodo.API"
"""JetStream's API on the secure profile: the stores live in accounts of their own, and every
other account imports the parts of their API it may use under this prefix (ARCHITECTURE.md,
"Security")."""

STREAM_EVENTS = "KODO_EVENTS"
"""Captures `kodo.events.>` so late readers replay an execution in order (and the fences,
`kodo.fence.*`, which JetStream checks the workers' events against)."""
STREAM_VIEWS = "KODO_VIEWS"
"""Captures `kodo.registry.*.view` on each bus where a registry reads views: a registry reads
them through a consumer it paces, so a busy one lags instead of being cut (`viewstream.py`)."""

BUCKET_VIEW = "KODO_VIEW_{registry}"
"""One KV bucket per registry: its view of nodes and flows; survives restarts."""
BUCKET_EXECUTIONS = "KODO_EXECUTIONS"
"""Current record of every execution (status, node, flow, launcher), one key per execution."""
BUCKET_FILES = "KODO_FILES_{user}"
"""One Object Store bucket per user: the files its executions take and make. Per user, not one
bucket with per-user prefixes: an object's chunk subjects are random and its meta subject is
its name in base64, so no subject permission can confine a user inside a shared bucket."""
FILE_NAME = "{execution}/{direction}/{name}"
"""An object's name in its bucket: the execution first, so one execution's files are found and
deleted together; `direction` is `in` (an input uploaded before the launch) or `out`."""
OBJ_SUBJECT = "$O.{bucket}.{rest}"
"""NATS convention: chunks (`C.<nuid>`) and metadata (`M.<base64 name>`) of an Object Store."""
OBJ_STREAM = "OBJ_{bucket}"
"""NATS convention: the stream behind an Object Store bucket."""
RECORD_KEY = "{user}.{execution}"
"""Key of an execution record: the launcher first, so permissions can confine a user to theirs."""
RECORD_NODE_KEY = "node={node}.{user}.{execution}"
"""The node's index of its records, in the same bucket: an empty value under this key names the
record `<user>.<execution>` of an execution `node` took. A registry ending a dead node's
executions reads `node=<node>.>` only, not every record of the bucket. `=` is in no user name
(`check_token`), so no index key is ever a record key, nor inside a user's `<user>.>`."""

INBOX = "_INBOX_{user}"
"""Inbox prefix of a user's connections: replies (and JetStream deliveries) to one user land
under a prefix only that user may subscribe to, instead of the shared `_INBOX.>`."""

DEFAULT_USER = "local"
"""The launcher's name when the bus runs without authentication."""

_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")
"""What a node id, flow name, user name or execution id may hold: ASCII letters, digits, `_` and
`-`. Narrower than NATS needs for a token, on purpose: the same names become KV keys (`node.<id>`
in a registry's view, `<user>.<execution>` in the records), and a KV key may hold only
`[-/_=.a-zA-Z0-9]`; a name NATS routes but the KV refuses would be taken in and then never
stored (`nø@de`, `n+o:de`)."""


def is_token(value: str) -> bool:
    """Whether `value` can be one subject token and a KV key token (see `_TOKEN`)."""
    return _TOKEN.fullmatch(value) is not None


def check_token(value: str, what: str) -> str:
    """Return `value` if it can be one subject token, else raise ConfigError naming `what`.

    Whole-string match: `re.match` with `$` would let a trailing newline through."""
    if not is_token(value):
        raise ConfigError(
            f"{what} {value!r} cannot be used in NATS subjects: use letters, digits, '_' or '-'"
        )
    return value


def node_catalog(node: str) -> str:
    return NODE_CATALOG.format(node=node)


def node_heartbeat(node: str) -> str:
    return NODE_HEARTBEAT.format(node=node)


def node_bye(node: str) -> str:
    return NODE_BYE.format(node=node)


def registry_view(registry: str) -> str:
    return REGISTRY_VIEW.format(registry=registry)


def registry_ask(registry: str) -> str:
    return REGISTRY_ASK.format(registry=registry)


def svc_info(service: str) -> str:
    return SVC_INFO.format(service=service)


def svc_flows(service: str) -> str:
    return SVC_FLOWS.format(service=service)


def svc_nodes(service: str) -> str:
    return SVC_NODES.format(service=service)


def svc_disconnect(service: str) -> str:
    return SVC_DISCONNECT.format(service=service)


def svc_catalog(service: str) -> str:
    return SVC_CATALOG.format(service=service)


def admin_forget(node: str) -> str:
    return ADMIN_FORGET.format(node=node)


def launch(user: str, node: str, flow: str) -> str:
    return LAUNCH.format(user=user, node=node, flow=flow)


def launch_node(node: str) -> str:
    return LAUNCH_NODE.format(node=node)


def exec_cancel(user: str, execution: str) -> str:
    return EXEC_CANCEL.format(user=user, execution=execution)


def exec_answer(user: str, execution: str) -> str:
    return EXEC_ANSWER.format(user=user, execution=execution)


def exec_delete(user: str, execution: str) -> str:
    return EXEC_DELETE.format(user=user, execution=execution)


def exec_cancel_at(user: str, execution: str, node: str) -> str:
    return EXEC_CANCEL_AT.format(user=user, execution=execution, node=node)


def exec_answer_at(user: str, execution: str, node: str) -> str:
    return EXEC_ANSWER_AT.format(user=user, execution=execution, node=node)


def exec_control_at_node(node: str) -> str:
    return EXEC_CONTROL_AT_NODE.format(node=node)


def events(user: str, execution: str, kind: str) -> str:
    return EVENTS.format(user=user, execution=execution, kind=kind)


def fence(execution: str) -> str:
    return FENCE.format(execution=execution)


def events_of_execution(execution: str) -> str:
    return EVENTS_OF_EXECUTION.format(execution=execution)


def events_of_user(user: str) -> str:
    return EVENTS_OF_USER.format(user=user)


KV_SUBJECT = "$KV.{bucket}.{key}"
"""NATS convention: the subject a KV key is stored under."""
KV_STREAM = "KV_{bucket}"
"""NATS convention: the stream behind a KV bucket."""


def kv_subject(bucket: str, key: str) -> str:
    return KV_SUBJECT.format(bucket=bucket, key=key)


def kv_stream(bucket: str) -> str:
    return KV_STREAM.format(bucket=bucket)


def record_key(user: str, execution: str) -> str:
    return RECORD_KEY.format(user=user, execution=execution)


def record_node_key(node: str, user: str, execution: str) -> str:
    return RECORD_NODE_KEY.format(node=node, user=user, execution=execution)


def inbox(user: str) -> str:
    return INBOX.format(user=user)


def bucket_view(registry: str) -> str:
    return BUCKET_VIEW.format(registry=registry)


def bucket_files(user: str) -> str:
    return BUCKET_FILES.format(user=user)


def file_name(execution: str, direction: str, name: str) -> str:
    return FILE_NAME.format(execution=execution, direction=direction, name=name)


def obj_subject(bucket: str, rest: str) -> str:
    return OBJ_SUBJECT.format(bucket=bucket, rest=rest)


def obj_stream(bucket: str) -> str:
    return OBJ_STREAM.format(bucket=bucket)


def token(subject: str, index: int) -> str:
    """The `index`-th dot-separated token of a concrete subject (0-based)."""
    return subject.split(".")[index]


ALL_PATTERNS: tuple[str, ...] = (
    NODE_CATALOG,
    NODE_HEARTBEAT,
    NODE_BYE,
    NODE_ALL,
    SYNC,
    REGISTRY_VIEW,
    REGISTRY_VIEW_ALL,
    REGISTRY_ASK,
    REGISTRY_ASK_ALL,
    SVC_INFO,
    SVC_FLOWS,
    SVC_NODES,
    SVC_DISCONNECT,
    SVC_CATALOG,
    ADMIN_FORGET,
    ADMIN_FORGET_ALL,
    LAUNCH,
    LAUNCH_NODE,
    EXEC_CANCEL,
    EXEC_ANSWER,
    EXEC_DELETE,
    EXEC_CONTROL_ALL,
    EXEC_CANCEL_ALL,
    EXEC_ANSWER_ALL,
    EXEC_CANCEL_AT,
    EXEC_ANSWER_AT,
    EXEC_CONTROL_AT_NODE,
    EVENTS,
    EVENTS_ALL,
    EVENTS_OF_EXECUTION,
    EVENTS_OF_USER,
    EVENTS_STATUS_ALL,
    EVENTS_LOG_ALL,
    FENCE,
    FENCE_ALL,
    WORK_JOBS,
    WORK_OUTCOMES,
    WORK_ASK,
    WORK_CONTROL,
    WORK_OF_NODE,
)
"""Every subject pattern above; the documentation test walks this tuple."""

ALL_JETSTREAM: tuple[str, ...] = (
    STREAM_EVENTS,
    STREAM_VIEWS,
    BUCKET_VIEW,
    BUCKET_EXECUTIONS,
    BUCKET_FILES,
)


def work_jobs(node: str, pool: str, worker: int) -> str:
    return WORK_JOBS.format(node=node, pool=pool, worker=worker)


def work_outcomes(node: str, pool: str) -> str:
    return WORK_OUTCOMES.format(node=node, pool=pool)


def work_ask(node: str, execution: str) -> str:
    return WORK_ASK.format(node=node, execution=execution)


def work_of_node(node: str) -> str:
    return WORK_OF_NODE.format(node=node)


def work_control(node: str, instance: str) -> str:
    return WORK_CONTROL.format(node=node, instance=instance)
