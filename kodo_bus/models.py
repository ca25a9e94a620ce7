"""Pydantic models of every message on the wire.

Every message carries `v`, the schema version, so a reader can refuse or adapt to a newer writer.
Unknown fields are ignored (a newer writer may add some); missing or ill-typed ones fail
validation and surface as `WireError`. Timestamps are float seconds since the epoch: cheap to
encode in both msgpack and JSON, and unambiguous across languages.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

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


class Message(BaseModel):
    """Base of every wire message."""

    model_config = ConfigDict(extra="ignore")

    v: int = SCHEMA_VERSION


# -- flows and nodes -----------------------------------------------------------------------------
class FlowInfo(BaseModel):
    """What a node tells the federation about one of its flows."""

    model_config = ConfigDict(extra="ignore")

    name: str
    summary: str = ""
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    version: str = ""
    author: str = ""
    input_schema: dict[str, Any] = Field(default_factory=dict)
    """JSON schema of the flow's pydantic input model (clients build forms and validate from it)."""
    timeout: float | None = None


class Catalog(Message):
    """A node's full announcement: who it is and every flow it serves."""

    node: str
    organization: str = ""
    role: Role = "node"
    revision: int = 0
    """Changes whenever the flow list changes; heartbeats carry it so registries spot a miss."""
    started: float = 0.0
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

    model_config = ConfigDict(extra="ignore")

    catalog: Catalog
    status: NodeStatus = "online"
    last_seen: float = 0.0
    heartbeat: Heartbeat | None = None
    via: str = ""
    """Registry the entry was taken in from ('' when the node announced on this bus itself)."""
    replicas: int = 0
    """Processes heard serving this node id (0: not known, e.g. from an older registry)."""


class RegistryView(Message):
    """A registry's or provider's view, republished for registries that feed on it."""

    registry: str
    organization: str = ""
    feed: bool = True
    urls: list[str] = Field(default_factory=list)
    nodes: list[NodeEntry] = Field(default_factory=list)


# -- request/reply on every service --------------------------------------------------------------
class Empty(Message):
    """A request or reply without fields."""


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


class FlowsQuery(Message):
    """Request of `kodo.svc.<id>.flows`; every filter is optional."""

    q: str | None = None
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

    field: str
    message: str


class ErrorReply(Message):
    """Any request that fails gets this instead of its normal reply (header `Kodo-Error`)."""

    error: str
    """Kind: invalid_inputs, invalid_request, busy, not_found, forbidden, internal."""
    message: str
    fields: list[FieldError] = Field(default_factory=list)


# -- executions ----------------------------------------------------------------------------------
class LaunchRequest(Message):
    """Request on `kodo.launch.<user>.<node>.<flow>`."""

    inputs: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    execution: str | None = Field(default=None, pattern=EXECUTION_ID)
    """The execution's id, chosen by the client (so a launch whose reply was lost can be sent
    again: the same id is the same execution). The node makes one when it is absent."""
    parent: str | None = None
    root: str | None = None
    depth: int = Field(default=0, ge=0)


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
    seq: int
    ts: float
    kind: EventKind
    node: str
    flow: str
    launcher: str
    data: Any = None
    parent: str | None = None
    root: str | None = None


class AnswerRequest(Message):
    """Request on `kodo.exec.<user>.<id>.answer`: the human's answer to `tracer.ask`."""

    data: Any = None


class ExecutionRecord(Message):
    """Current state of an execution, kept in the `KODO_EXECUTIONS` bucket."""

    execution: str
    flow: str
    node: str
    launcher: str
    status: ExecutionStatus
    created: float
    updated: float
    parent: str | None = None
    root: str | None = None
    depth: int = 0
    last_seq: int = 0
    error: str | None = None
    instance: str = ""
    """The node process (replica) that holds the execution ('' before replicas were told apart)."""
