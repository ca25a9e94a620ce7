"""The exception tree: one root, one subclass per kind of failure a user can act on.

Timeouts also subclass the built-in `TimeoutError` so `except TimeoutError` keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class KodoError(Exception):
    """Root of every error kodo-bus raises on purpose."""


class ConfigError(KodoError):
    """A setting, config file or command-line value is missing or wrong."""


class ServerError(KodoError):
    """The embedded nats-server could not be started (binary missing, port taken, bad config)."""


class ConnectError(KodoError):
    """NATS could not be reached within the retry budget, or refused the credentials."""


class TlsError(ConnectError):
    """The TLS handshake with NATS failed (a server certificate not trusted: no `--tls-ca`)."""


class AuthError(ConnectError):
    """NATS refused the credentials (or the user lacks permission for the operation)."""


class WireError(KodoError):
    """A message failed to decode or validate; names the subject and the reason."""

    kind = "invalid_request"
    """The error kind a service answers a request that fails this way with."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"bad message on {subject!r}: {reason}")
        self.subject = subject
        self.reason = reason


class UnsupportedVersion(WireError):
    """A request carries a schema version `v` this code does not speak."""

    kind = "unsupported_version"


class KodoTimeout(KodoError, TimeoutError):
    """A request to a kodo-bus service got no reply in time (is the service running?)."""


class StorageTimeout(KodoTimeout):
    """JetStream did not answer a service's start in time: a cluster without a leader (fewer
    than a majority of its servers up), or a server still starting."""


class SnapshotStalled(KodoTimeout):
    """A one-pass read of a stream (`snapshot.current`) waited longer than its bound for the
    messages it counted at its start: the server went away, or its consumer stalled."""


class LaunchUnanswered(KodoTimeout):
    """A launch got no reply, however often it was sent: the execution may have started.

    `execution` is its id: follow it (`Client.execution(id)`) or launch again with
    `execution_id=` that id — the same id never runs twice.
    """

    def __init__(self, execution: str, message: str) -> None:
        super().__init__(message)
        self.execution = execution


class NoResponders(KodoError):
    """Nobody listens on the subject a request went to (the service is not running)."""


class ServiceNotFound(NoResponders):
    """No service answers under the id a user gave (`--via`, `info`, `disconnect`) and none
    by that id is on the bus; the message lists close ids."""


class RemoteError(KodoError):
    """A service answered a request with an error reply."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class FieldProblem:
    """One invalid input field: where it is (dotted path) and what is wrong."""

    field: str
    message: str


class InputsInvalid(RemoteError):
    """Flow inputs failed validation; `problems` holds one message per field."""

    def __init__(
        self, problems: Sequence[FieldProblem], flow: str = "", what: str = "inputs"
    ) -> None:
        lines = "; ".join(f"{p.field}: {p.message}" for p in problems)
        where = f" for flow {flow!r}" if flow else ""
        super().__init__("invalid_inputs", f"invalid {what}{where}: {lines}")
        self.problems = list(problems)
        self.what = what
        """What was invalid: the flow's `inputs`, or the `answer` to a question."""


class Busy(RemoteError):
    """The node's run queue is full; retry later or launch elsewhere."""


class FlowNotFound(KodoError):
    """No flow matches the name; the message lists candidates when there are some."""


class AmbiguousFlow(KodoError):
    """Several flows match the name; name one as `node/flow`."""


class FlowOffline(FlowNotFound):
    """Only offline nodes offer the flow; the message names them and when each was last seen."""


class ExecutionNotFound(KodoError):
    """No record of that execution id exists (wrong id, or expired past `events_max_age`)."""


class AmbiguousExecution(KodoError):
    """A short execution id matches several executions; `candidates` holds their records'
    (id, flow, status), so the user can give more characters."""

    def __init__(self, prefix: str, candidates: Sequence[tuple[str, str, str]]) -> None:
        shown = "; ".join(f"{i} ({flow}, {status})" for i, flow, status in candidates[:10])
        more = f"; and {len(candidates) - 10} more" if len(candidates) > 10 else ""
        super().__init__(
            f"execution id {prefix!r} is ambiguous, it starts {len(candidates)} ids: {shown}{more}"
        )
        self.prefix = prefix
        self.candidates = list(candidates)


class EventsNotStored(KodoError):
    """Events of running executions were given up on (JetStream never confirmed them, or the
    worker refused them to bound its memory); `executions` names whose. Such an execution must
    end `error` with this reason, never as if its events were stored."""

    def __init__(self, message: str, executions: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.executions = frozenset(executions)


class ExecutionError(KodoError):
    """Base of the ways an execution can end without a result."""

    def __init__(self, execution: str, message: str) -> None:
        super().__init__(message)
        self.execution = execution


class ExecutionFailed(ExecutionError):
    """The flow raised; `remote_type`, `message` and `traceback` come from the node."""

    def __init__(self, execution: str, remote_type: str, message: str, traceback: str) -> None:
        super().__init__(execution, f"execution {execution} failed: {remote_type}: {message}")
        self.remote_type = remote_type
        self.remote_message = message
        self.traceback = traceback


class ExecutionCancelled(ExecutionError):
    """The execution was cancelled before it finished."""


class ExecutionTimeout(ExecutionError, TimeoutError):
    """The execution ran past its timeout and was stopped."""


class ExecutionLost(ExecutionError):
    """The node running the execution died; its result will never come."""


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """The " — did you mean 'greet'?" of an unknown name: the candidates close to it (difflib,
    as the node does for unknown inputs) or containing it; '' when there are none."""
    names = sorted(set(candidates) - {name})
    near = set(difflib.get_close_matches(name, names, n=5, cutoff=0.6))
    near |= {n for n in names if name and name.lower() in n.lower()}
    shown = sorted(near)[:10]
    if not shown:
        return ""
    if len(shown) == 1:
        return f" — did you mean {shown[0]!r}?"
    return f" — did you mean: {', '.join(shown)}?"


def problems_from(error: Exception) -> list[FieldProblem]:
    """Turn a pydantic ValidationError into one FieldProblem per field (dotted path)."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return [FieldProblem("", str(error))]
    return [
        FieldProblem(".".join(str(part) for part in item["loc"]) or "(root)", item["msg"])
        for item in error.errors(include_url=False)
    ]


class FileError(KodoError):
    """A file of an execution cannot be uploaded, found or downloaded."""


class FileDigestMismatch(FileError):
    """A downloaded file's SHA-256 is not the one its reference names (it was not kept)."""


class FileQuotaExceeded(FileError):
    """An upload went past the files quota of its user (secure profile, `files_quota`): delete
    executions that are no longer needed (`kodo-bus executions rm`), or ask for a larger one."""


class ExecutionNotEnded(KodoError):
    """A delete of an execution that has not ended: cancel it first."""
