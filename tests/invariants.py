"""The execution invariant checker (test support, no tests here).

The bus promises that every execution ends exactly once and that whoever reads it sees that end.
`check_executions` states the promise over what the server really holds — the `KODO_EVENTS`
stream and the `KODO_EXECUTIONS` bucket — so any test, on any bus, can hold the code to it:

- the events of an execution carry seqs 1..n, no gap, no duplicate, up to its terminal status;
- exactly one terminal `status` event, and nothing after it;
- exactly one `final` or `error` event, right before it (`final` for `finished`, `error` else,
  either for `lost`: a worker's `final` may be stored while a registry ends it; an `error` of
  type `ResultLost` before a repaired `finished` whose worker died before its `final` was
  stored is reported as its own rule, `result-lost`, not as a malformed ending);
- every envelope agrees with its subject (execution, launcher, kind) and with the record (node,
  flow, launcher);
- the record exists, its status is the terminal status and its `last_seq` the terminal seq.

Messages that do not decode are violations of their execution, never a crash of the checker.
The stream and the bucket are read with direct gets, one message at a time: nothing is left on
the server (no consumer), so the checker itself cannot change what the tests measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from kodo_bus import subjects
from kodo_bus.bus import connect
from kodo_bus.codec import decode, decode_many
from kodo_bus.config import ConnectSettings
from kodo_bus.errors import WireError
from kodo_bus.lifecycle import RESULT_LOST
from kodo_bus.models import TERMINAL_STATUSES, Event, ExecutionRecord
from kodo_bus.snapshot import KV_DEL, KV_OPERATION, KV_PURGE

NO_EXECUTION = "(no execution)"
"""Where a message on `kodo.events.>` whose subject names no execution is reported."""


@dataclass(frozen=True)
class Violation:
    """One broken invariant of one execution, said so a failing assertion reads on its own."""

    execution: str
    rule: str
    detail: str
    stream_seq: int | None = None
    """The stored message at fault, when it is one message (an undecodable one, say)."""

    def __str__(self) -> str:
        return f"[{self.rule}] {self.detail}"


@dataclass
class Report:
    """What the checker found: executions checked, still running (when allowed), violations."""

    checked: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_execution(self) -> dict[str, list[Violation]]:
        out: dict[str, list[Violation]] = defaultdict(list)
        for v in self.violations:
            out[v.execution].append(v)
        return dict(out)

    def rules(self) -> set[str]:
        return {v.rule for v in self.violations}

    def __str__(self) -> str:
        head = (
            f"{len(self.checked)} executions checked, {len(self.running)} still running, "
            f"{len(self.violations)} violations"
        )
        lines = [head]
        for execution, found in sorted(self.by_execution().items()):
            lines.append(f"  {execution}:")
            lines.extend(f"    {v}" for v in found)
        return "\n".join(lines)

    def assert_ok(self) -> None:
        if self.violations:
            raise AssertionError(f"execution invariants broken:\n{self}")


# -- reading the server --------------------------------------------------------------------------
@dataclass(frozen=True)
class Stored:
    """One message of `KODO_EVENTS`, as stored."""

    stream_seq: int
    subject: str
    data: bytes
    headers: Mapping[str, str] | None


async def _stream_bounds(js: JetStreamContext, stream: str) -> tuple[int, int] | None:
    """First and last seq of a stream, or None when the stream does not exist."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return None
    return int(info.state.first_seq or 0), int(info.state.last_seq or 0)


async def _scan(
    js: JetStreamContext, stream: str, filter_subject: str, start: int, last: int
) -> list[Stored]:
    """Every message of `stream` on `filter_subject` with stream seq in [start, last], by direct
    gets (`next_by_subj`): no consumer is created, so nothing outlives the read."""
    out: list[Stored] = []
    seq = max(start, 1)
    while seq <= last:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=filter_subject, next=True, direct=True)
        except nats.js.errors.NotFoundError:
            break
        if msg.seq is None or msg.seq > last:
            break
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        out.append(Stored(msg.seq, msg.subject or "", msg.data or b"", headers or None))
        seq = msg.seq + 1
    return out


def _execution_of(subject: str) -> str:
    parts = subject.split(".")
    if len(parts) == 5 and parts[:2] == ["kodo", "events"]:
        return parts[3]
    return NO_EXECUTION


async def _read_events(
    js: JetStreamContext, executions: Iterable[str] | None, after: int = 0
) -> dict[str, list[Stored]]:
    """Messages of `KODO_EVENTS` per execution: all of them, those of `executions`, or those
    stored after stream seq `after`."""
    bounds = await _stream_bounds(js, subjects.STREAM_EVENTS)
    if bounds is None:
        return {}
    first, last = bounds
    grouped: dict[str, list[Stored]] = defaultdict(list)
    if executions is None:
        for msg in await _scan(js, subjects.STREAM_EVENTS, subjects.EVENTS_ALL, first, last):
            grouped[_execution_of(msg.subject)].append(msg)
        return dict(grouped)
    for execution in executions:
        found = await _scan(
            js, subjects.STREAM_EVENTS, subjects.events_of_execution(execution), first, last
        )
        grouped[execution] = found
    return dict(grouped)


RecordOrProblem = ExecutionRecord | str | None
"""A decoded record, the reason it does not decode, or None when there is none."""


def _record_of(key: str, data: bytes, headers: Mapping[str, str] | None) -> RecordOrProblem:
    if headers and headers.get(KV_OPERATION) in (KV_DEL, KV_PURGE):
        return None
    if not data:
        return None
    try:
        return decode(key, data, None, ExecutionRecord)
    except WireError as exc:
        return f"undecodable record: {exc}"


async def _read_records(
    js: JetStreamContext, executions: Iterable[str] | None, after: int = 0
) -> dict[str, tuple[str, RecordOrProblem]]:
    """Current records per execution (with their keys), read from the bucket's stream."""
    stream = subjects.kv_stream(subjects.BUCKET_EXECUTIONS)
    prefix = subjects.kv_subject(subjects.BUCKET_EXECUTIONS, "")
    bounds = await _stream_bounds(js, stream)
    if bounds is None:
        return {}
    first, last = bounds
    out: dict[str, tuple[str, RecordOrProblem]] = {}
    if executions is None:
        for stored in await _scan(js, stream, prefix + ">", max(first, after + 1), last):
            key = stored.subject[len(prefix) :]
            if key.count(".") != 1:
                continue  # a node's index entry (`subjects.RECORD_NODE_KEY`), not a record
            execution = key.split(".", 1)[-1]
            out[execution] = (key, _record_of(key, stored.data, stored.headers))
        return out
    for execution in executions:
        try:  # the launcher is the key's first token: ask for the last of `*.<execution>`
            msg = await js.get_last_msg(stream, prefix + f"*.{execution}", direct=True)
        except nats.js.errors.NotFoundError:
            continue
        key = (msg.subject or "")[len(prefix) :]
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        if not msg.data:  # a deleted key (another user's launch of a taken id): any live one?
            kept = {}
            for stored in await _scan(js, stream, prefix + f"*.{execution}", first, last):
                kept[stored.subject] = stored
            live = [m for m in kept.values() if m.data]
            if live:
                key = live[-1].subject[len(prefix) :]
                out[execution] = (key, _record_of(key, live[-1].data, live[-1].headers))
                continue
        out[execution] = (key, _record_of(key, msg.data or b"", headers))
    return out


# -- the invariants ------------------------------------------------------------------------------
def _terminal(event: Event) -> str | None:
    if event.kind != "status" or not isinstance(event.data, dict):
        return None
    status = event.data.get("status")
    return status if status in TERMINAL_STATUSES else None


class _Judge:
    """The invariants of one execution, rule by rule; `found` collects what breaks."""

    def __init__(self, execution: str) -> None:
        self.execution = execution
        self.found: list[Violation] = []

    def bad(self, rule: str, detail: str, stream_seq: int | None = None) -> None:
        self.found.append(Violation(self.execution, rule, detail, stream_seq))

    def decode(self, messages: list[Stored]) -> list[tuple[int, Event]]:
        """The events (with their stream seqs); undecodable messages and envelopes that do not
        match their subject are violations."""
        events: list[tuple[int, Event]] = []
        for msg in messages:
            where = f"stream seq {msg.stream_seq} on {msg.subject}"
            try:
                batch = decode_many(msg.subject, msg.data, msg.headers, Event)
            except WireError as exc:
                self.bad("undecodable", f"{where}: {exc.args[-1]}", msg.stream_seq)
                continue
            if not batch:
                self.bad("undecodable", f"{where}: an empty array", msg.stream_seq)
            parts = msg.subject.split(".")
            for event in batch:
                if len(parts) != 5:
                    self.bad("envelope", f"seq {event.seq} {where}: not an execution's subject")
                else:
                    _, _, user, subject_execution, kind = parts
                    wrong = [
                        f"{name} {got!r} (subject says {want!r})"
                        for name, got, want in (
                            ("execution", event.execution, subject_execution),
                            ("launcher", event.launcher, user),
                            ("kind", event.kind, kind),
                        )
                        if got != want
                    ]
                    if wrong:
                        self.bad("envelope", f"seq {event.seq} {where}: " + ", ".join(wrong))
                events.append((msg.stream_seq, event))
        return events

    def record(
        self, record: tuple[str, RecordOrProblem] | None, events: list[tuple[int, Event]]
    ) -> ExecutionRecord | None:
        """The record when it decodes; envelopes that disagree with it are violations."""
        key, rec = record if record is not None else ("", None)
        if isinstance(rec, str):
            self.bad("record", f"{key}: {rec}")
            rec = None
        if rec is None:
            if events:
                first = events[0][1]
                odd = {(e.node, e.flow, e.launcher) for _, e in events} - {
                    (first.node, first.flow, first.launcher)
                }
                if odd:
                    self.bad("envelope", f"events disagree on node/flow/launcher: {sorted(odd)}")
            return None
        user, _, key_execution = key.partition(".")
        if self.execution not in (rec.execution, key_execution) or rec.launcher != user:
            said = f"execution {rec.execution!r}, launcher {rec.launcher!r}"
            self.bad("record", f"record under {key} names {said}")
        mismatched: dict[str, int] = defaultdict(int)
        for _, event in events:
            for name in ("node", "flow", "launcher"):
                got, want = getattr(event, name), getattr(rec, name)
                if got != want:
                    mismatched[f"{name} {got!r} != record's {want!r}"] += 1
        for what, count in mismatched.items():
            self.bad("envelope", f"{count} events: {what}")
        return rec

    def sequence(self, events: list[tuple[int, Event]], end: int) -> None:
        """Seqs 1..end, each once."""
        seqs = [e.seq for _, e in events]
        counts: dict[int, list[int]] = defaultdict(list)
        for stream_seq, event in events:
            counts[event.seq].append(stream_seq)
        dups = {seq: where for seq, where in counts.items() if len(where) > 1}
        if dups:
            listed = ", ".join(f"seq {s} at stream seqs {w}" for s, w in sorted(dups.items()))
            self.bad("duplicate", listed)
        missing = sorted(set(range(1, end + 1)) - set(seqs))
        if missing:
            self.bad("gap", f"missing seqs {_ranges(missing)} of 1..{end}")
        if any(s < 1 for s in seqs):
            self.bad("gap", f"seqs below 1: {sorted({s for s in seqs if s < 1})}")

    def ending(self, by_seq: list[Event], terminal: Event, rec: ExecutionRecord | None) -> None:
        """Nothing after the terminal status, one final/error right before it, and the record
        says the same."""
        status = _terminal(terminal)
        after = [e for e in by_seq if e.seq > terminal.seq]
        if after:
            listed = ", ".join(f"seq {e.seq} {e.kind}" for e in after[:10])
            more = f" (+{len(after) - 10})" if len(after) > 10 else ""
            said = f"{len(after)} events after terminal seq {terminal.seq}: {listed}{more}"
            self.bad("after-terminal", said)
        endings = [e for e in by_seq if e.kind in ("final", "error")]
        if len(endings) != 1:
            listed = ", ".join(f"seq {e.seq} {e.kind}" for e in endings) or "none"
            self.bad("ending", f"{len(endings)} final/error events (want 1): {listed}")
        before = [e for e in by_seq if e.seq == terminal.seq - 1]
        want = _ENDING_KINDS.get(str(status), ("error",))
        if before and _result_lost(before[0]) and status == "finished":
            # A repair's: the worker died before its `final` was stored. Well formed, but a
            # value lost: its own rule, which only a test that makes that loss accepts.
            self.bad("result-lost", f"seq {terminal.seq - 1} is error ResultLost")
            want = ("error",)
        if not before or before[0].kind not in want:
            got = before[0].kind if before else "nothing"
            said = f"seq {terminal.seq - 1} before terminal {status} is {got}, want {want}"
            self.bad("ending", said)
        if rec is None:
            self.bad("record", "no record in KODO_EXECUTIONS")
            return
        if rec.status != status:
            self.bad("record", f"record status {rec.status!r}, terminal event says {status!r}")
        if rec.last_seq != terminal.seq:
            said = f"record last_seq {rec.last_seq}, terminal event seq {terminal.seq}"
            self.bad("record", said)


_ENDING_KINDS = {"finished": ("final",), "lost": ("final", "error")}
"""The ending event allowed before each terminal status (`error` for the others). `lost` may
follow a worker's `final`: stored while a registry, judging its node gone, was ending it."""


def _result_lost(event: Event) -> bool:
    return (
        event.kind == "error"
        and isinstance(event.data, dict)
        and event.data.get("type") == RESULT_LOST
    )


def _check_one(
    execution: str,
    messages: list[Stored],
    record: tuple[str, RecordOrProblem] | None,
    allow_running: bool,
) -> tuple[list[Violation], bool]:
    """Violations of one execution, and whether it is still running (and so skipped)."""
    judge = _Judge(execution)
    events = judge.decode(messages)
    rec = judge.record(record, events)
    by_seq = [e for _, e in sorted(events, key=lambda se: se[1].seq)]
    terminals = [e for e in by_seq if _terminal(e) is not None]
    if not terminals:
        if rec is None or rec.status not in TERMINAL_STATUSES:
            if allow_running:
                return judge.found, True
            last = by_seq[-1] if by_seq else None
            said = "no events" if last is None else f"last event seq {last.seq} {last.kind}"
            state = "no record" if rec is None else f"record {rec.status}"
            judge.bad("not-ended", f"no terminal status: {said}, {state}")
        else:
            judge.bad("no-terminal", f"no terminal status event, yet the record says {rec.status}")
    if len(terminals) > 1:
        listed = ", ".join(f"seq {e.seq} {_terminal(e)}" for e in terminals)
        judge.bad("terminals", f"{len(terminals)} terminal status events: {listed}")
    end = terminals[0].seq if terminals else max((e.seq for e in by_seq), default=0)
    judge.sequence(events, end)
    if terminals:
        judge.ending(by_seq, terminals[0], rec)
    return judge.found, False


def _ranges(values: list[int]) -> str:
    out: list[str] = []
    start = prev = values[0]
    for v in [*values[1:], values[-1] + 2]:
        if v != prev + 1:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = v
        prev = v
    return ", ".join(out)


async def check_executions(
    js: JetStreamContext,
    *,
    executions: Iterable[str] | None = None,
    allow_running: bool = False,
    injected: Collection[int] = (),
) -> Report:
    """Check every execution of the bus (or only `executions`); see the module docstring.

    `injected` names stream seqs of messages the caller stored on purpose (garbage a test
    published on an execution's subject): that they do not decode is no violation.
    """
    wanted = None if executions is None else list(dict.fromkeys(executions))
    events = await _read_events(js, wanted)
    records = await _read_records(js, wanted)
    report = _report(events, records, wanted, allow_running)
    report.violations = [v for v in report.violations if v.stream_seq not in injected]
    return report


def _report(
    events: Mapping[str, list[Stored]],
    records: Mapping[str, tuple[str, RecordOrProblem]],
    wanted: list[str] | None,
    allow_running: bool,
) -> Report:
    report = Report()
    names = wanted if wanted is not None else sorted(set(events) | set(records))
    for execution in names:
        messages = events.get(execution, [])
        if execution == NO_EXECUTION:
            for msg in messages:
                report.violations.append(
                    Violation(execution, "subject", f"stream seq {msg.stream_seq}: {msg.subject}")
                )
            continue
        found, running = _check_one(execution, messages, records.get(execution), allow_running)
        report.checked.append(execution)
        if running:
            report.running.append(execution)
        report.violations.extend(found)
    return report


async def check_bus(
    url: str | list[str],
    *,
    executions: Iterable[str] | None = None,
    allow_running: bool = False,
    within: float = 10.0,
) -> Report:
    """`settled` over a connection of its own to the bus at `url` (a test's own server)."""
    nc = await connect(ConnectSettings(nats=[url] if isinstance(url, str) else url))
    try:
        return await settled(
            nc.jetstream(), executions=executions, allow_running=allow_running, within=within
        )
    finally:
        await nc.close()


async def settled(
    js: JetStreamContext,
    *,
    executions: Iterable[str] | None = None,
    allow_running: bool = False,
    within: float = 10.0,
    injected: Collection[int] = (),
) -> Report:
    """The checker's report once it holds, or the last one after `within` seconds: the record
    trails the events by design, and an outside ender (a registry declaring a node lost) may
    still be at work when a test ends."""
    wanted = None if executions is None else list(executions)
    deadline = time.monotonic() + within
    while True:
        try:
            report = await check_executions(
                js, executions=wanted, allow_running=allow_running, injected=injected
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            if time.monotonic() > deadline:  # the server did not come back (a test's outage)
                raise
        else:
            if report.ok or time.monotonic() > deadline:
                return report
        await asyncio.sleep(0.25)


# -- what a test added to a long-lived bus -------------------------------------------------------
@dataclass
class Watch:
    """The executions a test adds to a bus that outlives it (the session's nats-server).

    `start` notes where the stream and the bucket stand; `new_executions` names every execution
    with a message stored since then whose first event (or record, when it has no event) came
    after the start. Executions of earlier tests are not this test's to judge.
    """

    nc: NATS
    events_after: int = 0
    records_after: int = 0
    started: float = 0.0
    ignored: dict[str, str] = field(default_factory=dict)
    allow_running: bool = False

    @classmethod
    async def start(cls, url: str) -> Watch:
        nc = await connect(ConnectSettings(nats=[url]))
        js = nc.jetstream()
        events = await _stream_bounds(js, subjects.STREAM_EVENTS)
        records = await _stream_bounds(js, subjects.kv_stream(subjects.BUCKET_EXECUTIONS))
        return cls(
            nc,
            events_after=events[1] if events else 0,
            records_after=records[1] if records else 0,
            started=time.time(),
        )

    def ignore(self, execution: str, why: str) -> None:
        """Leave out an execution a test made by hand to break the invariants on purpose."""
        self.ignored[execution] = why

    async def new_executions(self) -> list[str]:
        js = self.nc.jetstream()
        out: dict[str, None] = {}
        bounds = await _stream_bounds(js, subjects.STREAM_EVENTS)
        if bounds is not None:
            recent = await _scan(
                js, subjects.STREAM_EVENTS, subjects.EVENTS_ALL, self.events_after + 1, bounds[1]
            )
            for execution in dict.fromkeys(_execution_of(m.subject) for m in recent):
                if execution == NO_EXECUTION or await self._older(js, execution):
                    continue
                out[execution] = None
        records = await _read_records(js, None, after=self.records_after)
        for execution, (_, rec) in records.items():
            if execution in out or await self._older(js, execution):
                continue
            if isinstance(rec, ExecutionRecord) and rec.created < self.started - 1.0:
                continue
            out[execution] = None
        return [e for e in out if e not in self.ignored]

    async def _older(self, js: JetStreamContext, execution: str) -> bool:
        """Whether the execution has an event stored before the watch started."""
        if self.events_after == 0:
            return False
        try:
            first = await js.get_msg(
                subjects.STREAM_EVENTS,
                seq=1,
                subject=subjects.events_of_execution(execution),
                next=True,
                direct=True,
            )
        except nats.js.errors.NotFoundError:
            return False
        return first.seq is not None and first.seq <= self.events_after

    async def check(self, within: float = 10.0) -> Report:
        executions = await self.new_executions()
        if not executions:
            return Report()
        return await settled(
            self.nc.jetstream(),
            executions=executions,
            allow_running=self.allow_running,
            within=within,
        )

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self.nc.close()
