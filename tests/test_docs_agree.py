"""README.md and subjects.md say the same thing wherever a statement can be checked (issue 16):
the subjects the README names, the event kinds and the bursting ones, the error kinds, the
content types — each against subjects.md and the code that owns the fact. Also the one rule for
`parent` (absent for a top-level execution) on the wire and in `kodo-bus events --json`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

from kodo_bus import models
from kodo_bus.auth import AUTH_ROLES, permissions
from kodo_bus.cli.render import event_json
from kodo_bus.codec import JSON, MSGPACK
from kodo_bus.lifecycle import envelope
from kodo_bus.publisher import BATCH_KINDS
from kodo_bus.tracer import Emitter, Message

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
DOC = (REPO / "subjects.md").read_text()


def _prose(text: str) -> str:
    """Without fenced blocks (the diagram and shell examples are not statements)."""
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


def _ticked(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def _kinds_in(sentence: str) -> set[str]:
    return set(_ticked(sentence))


def test_every_subject_the_readme_names_is_in_subjects_md() -> None:
    named = {
        s.strip("'")
        for t in _ticked(_prose(README))
        for s in re.findall(r"'?kodo\.[A-Za-z0-9_.*>{}<-]+'?", t)
    }
    assert named, "the README names no subject?"
    missing = sorted(s for s in named if f"`{s}`" not in DOC and f"'{s}'" not in DOC)
    assert not missing, f"named in README.md, not in subjects.md: {missing}"


def test_event_kinds_and_statuses_are_the_models() -> None:
    listed = DOC.split("Event kinds:", 1)[1].split("Statuses:", 1)
    assert _ticked(listed[0]) == list(models.EVENT_KINDS)
    statuses = _ticked(listed[1].split("\n\n", 1)[0])
    assert statuses == list(get_args(models.ExecutionStatus))


def test_bursting_kinds_agree() -> None:
    """The README's "except a burst of output (...)" and subjects.md's "Only output kinds are
    batched (...)" name the publisher's BATCH_KINDS."""
    readme = re.search(r"except a burst of output\s*\(([^)]*)\)", README)
    doc = re.search(r"Only output kinds are batched \(([^)]*)\)", DOC)
    assert readme and doc
    assert _kinds_in(readme.group(1)) == _kinds_in(doc.group(1)) == set(BATCH_KINDS)
    assert "one message per event" not in README  # the statement issue 16 found false


def test_error_kinds_the_readme_names_are_in_the_table() -> None:
    ticked = set(_ticked(README))
    candidates = {*models.ERROR_KINDS, "forbidden", "not_allowed", "no_responders"}
    assert ticked & candidates <= set(models.ERROR_KINDS)
    assert "(subjects.md#error-kinds)" in README
    for kind in ("closed", "not_found"):  # the replies of cancel and answer, in both documents
        assert f"`{kind}`" in DOC
    assert "exactly one reply" in README and "exactly one reply" in DOC


def test_content_types_agree() -> None:
    types = {JSON, MSGPACK}
    assert set(re.findall(r"application/[a-z-]+", README)) == types
    assert set(re.findall(r"application/[a-z-]+", DOC)) == types
    assert "`application/msgpack` for the control plane" in README
    assert "`application/json` for execution events" in README
    flat = DOC.replace("\n  ", " ")
    assert "Control-plane messages are msgpack; execution events and the `kodo.work.*`" in flat
    # the two kinds of message without the header, named in both
    for doc in (README.replace("\n", " "), DOC.replace("\n  ", " ").replace("\n", " ")):
        assert "KV values" in doc and "`$SRV.*` replies" in doc
    assert "sent with a `Content-Type` header" not in README  # the claim issue 16 found false


def test_parent_is_absent_on_the_wire_and_in_the_cli_json() -> None:
    """One rule: a top-level execution's events carry no `parent` (not null), in what NATS
    carries and in `kodo-bus events --json` alike; a child's carry it."""
    for parent in (None, "p" * 32):
        record = models.ExecutionRecord(
            execution="e" * 32,
            flow="f",
            node="n",
            launcher="local",
            status="running",
            created=1.0,
            updated=1.0,
            parent=parent,
            root="e" * 32 if parent is None else "r" * 32,
        )
        sent: list[Message] = []

        def sink(
            subject: str, body: bytes, headers: dict[str, str], out: list[Message] = sent
        ) -> None:
            out.append((subject, body, headers))

        emitter = Emitter(envelope(record), 0, sink)
        emitter.emit("status", {"status": "running"})
        emitter.emit("markdown", None)
        for _subject, body, _headers in sent:
            wire = json.loads(body)
            printed = json.loads(event_json(models.Event.model_validate_json(body)))
            assert printed == wire
            assert ("parent" in wire) is (parent is not None)
            assert "null" not in event_json(models.Event.model_validate_json(body))
    assert "without `parent` is\n  a top-level execution's" in DOC


def test_each_roles_permissions_in_subjects_md_are_the_code_s() -> None:
    """subjects.md's "Permissions" lines list, role by role, what `auth.permissions` grants: a
    right added in the code (the views stream's, say) and not written there is a gap in what an
    operator reviews before trusting a role."""
    for role in AUTH_ROLES:
        granted = permissions(role, "the-user")
        line = re.search(rf"^- \*\*{role}\*\* — publish: (.*); subscribe: (.*)$", DOC, re.M)
        assert line is not None, f"subjects.md has no permissions line for {role}"
        for written, code in zip(line.groups(), (granted.publish, granted.subscribe), strict=True):
            expected = {s.replace("the-user", "<name>") for s in code}
            assert set(_ticked(written)) == expected, role
