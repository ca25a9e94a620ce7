"""Pydantic models of every message on the wire (and the source of `schemas/`: see `schemas.py`).

Every message carries `v`, the schema version, so a reader can refuse or adapt to a newer writer.
Two rules for unknown fields, by who reads the message:

- **Requests** a client sends to a service (`Request`: `LaunchRequest`, `AnswerRequest`,
  `FlowsQuery`, `Empty`) are strict: an unknown key is refused as `invalid_request` naming it,
  and a `v` this code does not speak as `unsupported_version` — a guessed or misspelt key must
  never pass silently and run with defaults. The requester is there to read the refusal.
- **Broadcast and stored** messages (events, catalogs, heartbeats, views, records, replies)
  ignore unknown fields: a newer writer may add some, and nobody would hear a refusal.

Missing or ill-typed fields fail validation and surface as `WireError` either way. Timestamps
are float seconds since the Unix epoch: cheap to encode in both msgpack and JSON, and
unambiguous across languages. Attribute docstrings are the fields' descriptions in the schemas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator
from pydantic_core import PydanticCustomError

from . import subjects

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS: frozenset[int] = frozenset({1})
"""Schema versions a service accepts in requests; any other `v` gets `unsupported_version`."""

EXECUTION_ID = r"^[A-Za-z0-9_-]{16,64}$"
"""A client-chosen execution id: one subject token, long enough to be unguessable."""

Role = Literal["node", "registry", "provider", "hybrid"]
NodeStatus = Literal["online", "offline"]
ExecutionStatus = Literal[
    "pending",
    "starting",
    "running",
    "awaiting",
    "finished",
    "error",
    "cancelled",
    "timeout",
    "lost",
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"finished", "error", "cancelled", "timeout", "lost"})
EventKind = Literal[
    "meta",
    "inputs",
    "status",
    "markdown",
    "text",
    "html",
    "result",
    "action",
    "file",
    "progress",
    "log",
    "stdout",
    "stderr",
    "lock",
    "answer",
    "error",
    "final",
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)


ERROR_KINDS: dict[str, str] = {
    "invalid_request": "the body is not the documented request: undecodable, a field missing "
    "or ill-typed, an unknown key (named), a bad subject, or an id taken by another flow",
    "unsupported_version": "the request's `v` is not a schema version this service speaks",
    "invalid_inputs": "flow inputs (or an answer to a question) failed validation, or name an "
    "input the flow does not have; `fields` holds one entry per field",
    "busy": "the node's queue is full, or the node is stopping: retry later or elsewhere",
    "not_found": "no such flow on the node, no such execution, or (a cancel) it already ended",
    "closed": "an answer that no question takes: the execution asked none, its question was "
    "answered already, or it ended",
    "internal": "the service failed while answering (a bug or an outage): its message says why",
}
"""Every `ErrorReply.error` a service sends, with what it means (subjects.md has the table)."""


class Message(BaseModel):
    """Base of every wire message."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    v: int = SCHEMA_VERSION
    """Schema version of the writer."""


class Request(Message):
    """Base of what a client sends to a service: strict (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    v: int = Field(
        default=SCHEMA_VERSION, json_schema_extra={"enum": [*sorted(SUPPORTED_VERSIONS)]}
    )
    """Schema version of the request; another one is refused as `unsupported_version`."""

    @field_validator("v")
    @classmethod
    def _supported(cls, v: int) -> int:
        if v not in SUPPORTED_VERSIONS:
            raise PydanticCustomError(
                "unsupported_version",  # the error type `codec.decode` turns into its own kind
                "schema version {v} is not supported (this service speaks {supported})",
                {"v": v, "supported": ", ".join(map(str, sorted(SUPPORTED_VERSIONS)))},
            )
        return v


# -- flows and nodes -----------------------------------------------------------------------------
class FlowInfo(BaseModel):
    """What a node tells the federation about one of its flows."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    name: str
    summary: str = ""
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    version: str = ""
    author: str = ""
    input_schema: dict[str, Any] = Field(default_factory=dict)
    """JSON schema of the flow's pydantic input model (clients build forms and validate from it).
    `additionalProperties: false` (the default) means an unknown input is refused as
    `invalid_inputs`; a flow that takes extra inputs says `true`. Empty: the flow takes any
    object."""
    timeout: float | None = None


class Catalog(Message):
    """A node's full announcement: who it is and every flow it serves."""

    node: str
    organization: str = ""
    role: Role = "node"
    revision: int = 0
    """Changes whenever the flow list changes; heartbeats carry it so registries spot a miss."""
    started: float = 0.0
    """When the node process started (Unix seconds)."""
    flows: list[FlowInfo] = Field(default_factory=list)
    urls: list[str] = Field(default_factory=list)
    """Where to reach the node's bus; empty means the bus this message travelled on."""
    instance: str = ""
    """The announcing process (replicas of one node id share everything else, `started` aside);
    empty from nodes older than replicas."""


class Heartbeat(Message):
    """A node's periodic sign of life with a few health figures."""

    node: str
    revision: int = 0
    ts: float = 0.0
    """When the heartbeat was sent (Unix seconds)."""
    running: int = 0
    queued: int = 0
    capacity: int = 0
    cpu: float = 0.0
    memory: int = 0
    """Resident memory of the node process, bytes."""
    instance: str = ""
    """The beating process: registries judge each replica of a node id by its own heartbeats,
    so the death of one ends its executions while the others' go on."""


class Bye(Message):
    """A node leaves the federation (graceful stop or explicit disconnect)."""

    node: str
    reason: str = ""
    forget: bool = False
    """True (disconnect): registries drop the node. False (a stop): they keep it, offline."""
    instance: str = ""
    """The process saying bye: one stopping replica leaves the others online."""


class SyncRequest(Message):
    """A registry asks every node to announce again."""

    registry: str = ""


class NodeEntry(BaseModel):
    """One node as a registry sees it."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    catalog: Catalog
    status: NodeStatus = "online"
    last_seen: float = 0.0
    """When the registry last heard the node (Unix seconds)."""
    heartbeat: Heartbeat | None = None
    via: str = ""
    """Registry the entry was taken in from ('' when the node announced on this bus itself)."""
    replicas: int = 0
    """Processes heard serving this node id (0: not known, e.g. from an older registry)."""
    path: list[str] = Field(default_factory=list)
    """Registries the entry passed through, the one that heard the node first first (empty when
    the node announced on this bus). A registry never takes in an entry whose path holds its own
    id, which keeps any topology of registries (rings included) free of loops."""


ViewKind = Literal["full", "changes", "beat", "ask"]


class RegistryView(Message):
    """A registry's or provider's view, or a change of it, republished for registries that feed
    on it (see ARCHITECTURE.md, "Federation").

    Each sender keeps one numbered stream per bus it publishes on: `full` (the whole view, in
    `parts` messages each under a size cap), then `changes` (entries that changed, ids removed)
    and, in a quiet heartbeat interval, a `beat`. A receiver that sees a gap in `seq` or a new
    `epoch` publishes an `ask` on `kodo.registry.<sender>.ask` naming the sender in `want`, and
    gets a `full` back. A message without `epoch` is a whole view from a 0.1 registry, taken as
    a `full` in one part.
    """

    registry: str
    organization: str = ""
    feed: bool = True
    urls: list[str] = Field(default_factory=list)
    nodes: list[NodeEntry] = Field(default_factory=list)
    """`full`: every entry of the view (this part's share); `changes`: the entries that changed."""
    kind: ViewKind = "full"
    epoch: str = ""
    """The sender's stream on this bus (new at each start and each link); empty from 0.1."""
    seq: int = 0
    """Position of this message in its stream: one more than the previous message's."""
    part: int = 0
    """`full`: which part of the view this is (from 0)."""
    parts: int = 1
    """`full`: how many parts the view was cut into (consecutive `seq`)."""
    removed: list[str] = Field(default_factory=list)
    """`changes`: node ids gone from the sender's view."""
    want: list[str] = Field(default_factory=list)
    """`ask`: registries whose `full` view the sender of the ask needs."""


# -- request/reply on every service --------------------------------------------------------------
class Empty(Request):
    """A request without fields (info, nodes, catalog, cancel, disconnect)."""


class ServiceInfo(Message):
    """Reply of `kodo.svc.<id>.info`."""

    id: str
    role: Role
    registry: bool
    feed: bool
    organization: str = ""
    version: str = ""
    started: float = 0.0
    nodes: int = 0
    flows: int = 0
    rejected: int = 0
    """Messages dropped because they failed to decode or validate."""


class FlowsQuery(Request):
    """Request of `kodo.svc.<id>.flows`; every filter is optional."""

    q: str | None = None
    name: str | None = None
    """Only flows of exactly this name (`Client.flow` resolves a name with one request)."""
    tags: list[str] = Field(default_factory=list)
    organization: str | None = None
    node: str | None = None
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=10_000)


class FlowItem(FlowInfo):
    """One flow in a registry view, with its node's identity and status."""

    node: str
    organization: str = ""
    status: NodeStatus = "online"
    urls: list[str] = Field(default_factory=list)


class FlowsPage(Message):
    """Reply of `kodo.svc.<id>.flows`."""

    total: int
    offset: int = 0
    limit: int = 100
    items: list[FlowItem] = Field(default_factory=list)


class NodeItem(BaseModel):
    """One node in a `kodo.svc.<id>.nodes` reply."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    id: str
    organization: str = ""
    role: Role = "node"
    status: NodeStatus = "online"
    last_seen: float = 0.0
    flows: int = 0
    running: int = 0
    capacity: int = 0
    cpu: float = 0.0
    memory: int = 0
    urls: list[str] = Field(default_factory=list)
    replicas: int = 0
    """Processes serving this node id (running, capacity, cpu and memory are their sums)."""


class NodesPage(Message):
    """Reply of `kodo.svc.<id>.nodes`."""

    total: int
    items: list[NodeItem] = Field(default_factory=list)


class Ack(Message):
    """Plain success reply (disconnect, cancel, answer)."""

    ok: bool = True
    message: str = ""


class FieldError(BaseModel):
    """One invalid field of a request."""

    model_config = ConfigDict(extra="ignore", use_attribute_docstrings=True)

    field: str
    """Dotted path of the field (`(root)` for the whole body)."""
    message: str


class ErrorReply(Message):
    """Any request that fails gets this instead of its normal reply (header `Kodo-Error`)."""

    error: str
    """Kind: invalid_request, unsupported_version, invalid_inputs, busy, not_found, closed,
    internal (`ERROR_KINDS` says what each means; a reader takes an unknown kind as a plain
    failure)."""
    message: str
    """For a human: what was wrong, naming the fields."""
    fields: list[FieldError] = Field(default_factory=list)
    """Per field problems (`invalid_inputs`)."""


# -- executions ----------------------------------------------------------------------------------
class LaunchRequest(Request):
    """Request on `kodo.launch.<user>.<node>.<flow>`."""

    inputs: dict[str, Any]
    """The flow's inputs, as its `input_schema` describes them (required: `{}` for none), so a
    body with the inputs not wrapped is refused instead of run with defaults."""
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Seconds before the execution is stopped (ends `timeout`); default: the flow's."""
    execution: str | None = Field(default=None, pattern=EXECUTION_ID)
    """The execution's id, chosen by the client (so a launch whose reply was lost can be sent
    again: the same id is the same execution). The node makes one when it is absent."""
    parent: str | None = None
    """The execution that launched this one (chained flows); absent for a top-level one."""
    root: str | None = None
    """The top execution of the chain; absent for a top-level one."""
    depth: int = Field(default=0, ge=0)
    """Chain depth (0 for a top-level launch); refused at the node's `max_depth`."""


class LaunchReply(Message):
    """A valid launch is answered at once with the execution id and where its events go."""

    execution: str
    node: str
    flow: str
    launcher: str
    subject: str
    """Wildcard subject of the execution's events, e.g. `kodo.events.local.<id>.*`."""
    existing: bool = False
    """The id was launched before: this is that execution (nothing new was started)."""


class Event(Message):
    """One event of one execution (JSON by default so `nats sub` prints it readably)."""

    execution: str
    """The execution's id (also the subject's `<execution>` token)."""
    seq: int
    """1, 2, 3... per execution, without gaps: readers order and de-duplicate by it."""
    ts: float
    """When the event was made: float seconds since the Unix epoch (UTC)."""
    kind: EventKind
    """What the event is (also the subject's last token)."""
    node: str
    flow: str
    launcher: str
    """The user who launched the execution (the subject's `<user>` token)."""
    data: Any = None
    """What the event says; its shape depends on `kind` (subjects.md, "Event data per kind")."""
    parent: str | None = None
    """The launching execution of a chained flow; absent (not null) on the wire otherwise."""
    root: str | None = None
    """The top execution of the chain (the execution itself for a top-level one)."""


class File(BaseModel):
    """A file in the launcher's Object Store bucket, as inputs and `file` events name it.

    A flow declares a file input with this type in its inputs model; the client uploads the file
    before the launch and sends this reference, and the worker downloads it and hands the flow a
    local `path`. The path is never taken from the wire (a launcher must not name a file on the
    worker), and a reference to another user's bucket is refused before anything is read.
    """

    model_config = ConfigDict(extra="ignore")

    bucket: str
    """The Object Store bucket, `KODO_FILES_<user>` of the launcher."""
    name: str
    """The object's name in it: `<execution>/in/<field>/<file>` or `<execution>/out/<file>`."""
    size: int = Field(ge=0)
    """Bytes."""
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    """SHA-256 of the content, hex: every download is checked against it."""

    _path: Path | None = PrivateAttr(default=None)

    @property
    def filename(self) -> str:
        """The last part of the name: what a download writes."""
        return self.name.rsplit("/", 1)[-1]

    def belongs_to(self, launcher: str, execution: str) -> bool:
        """Whether this is an object of that execution in its launcher's bucket: a `file` event
        is written by a flow, which must not make a reader fetch another user's object (the
        secure profile's accounts stop that; a panel or script with wider rights must too)."""
        return self.bucket == subjects.bucket_files(launcher) and self.name.startswith(
            f"{execution}/"
        )

    @property
    def path(self) -> Path:
        """Where the worker put the file for the flow (removed when the execution ends)."""
        if self._path is None:
            raise FileNotFoundError(f"{self.name} was not downloaded here")
        return self._path

    def open(self) -> BinaryIO:
        """The downloaded file, to read as a stream."""
        return self.path.open("rb")


class AnswerRequest(Request):
    """Request on `kodo.exec.<user>.<id>.answer`: the human's answer to `tracer.ask`."""

    data: Any = None
    """The answer, validated against the `schema` of the open question's `lock` event."""


class ExecutionRecord(Message):
    """Current state of an execution, kept in the `KODO_EXECUTIONS` bucket."""

    execution: str
    flow: str
    node: str
    launcher: str
    status: ExecutionStatus
    """Trails the events (see subjects.md): the live status is the last `status` event's."""
    created: float
    """Unix seconds."""
    updated: float
    """Unix seconds of the last write."""
    parent: str | None = None
    root: str | None = None
    depth: int = 0
    last_seq: int = 0
    """Seq of the last event known at the record's last write (the terminal status event's
    once the execution ended)."""
    error: str | None = None
    """Why it ended, when not `finished`."""
    instance: str = ""
    """The node process (replica) that holds the execution ('' before replicas were told apart)."""
    retention: float | None = None
    """Seconds each of its events is kept after it was stored, and this record after the
    execution ended (`@flow(retention=...)`, sent as `Nats-TTL`); None: `events_max_age`."""
