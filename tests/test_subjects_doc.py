"""subjects.py is the only place that spells a subject, and subjects.md documents every one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kodo_bus import subjects
from kodo_bus.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "subjects.md").read_text()


def _as_documented(pattern: str) -> str:
    """`kodo.node.{node}.catalog` is written `kodo.node.<node>.catalog` in subjects.md."""
    return re.sub(r"\{(\w+)\}", r"<\1>", pattern)


@pytest.mark.parametrize("pattern", subjects.ALL_PATTERNS)
def test_subject_is_documented(pattern: str) -> None:
    assert f"`{_as_documented(pattern)}`" in DOC, f"{pattern} is missing from subjects.md"


@pytest.mark.parametrize("name", subjects.ALL_JETSTREAM)
def test_stream_or_bucket_is_documented(name: str) -> None:
    assert f"`{_as_documented(name)}`" in DOC, f"{name} is missing from subjects.md"


def test_all_patterns_lists_every_subject_constant() -> None:
    constants = {
        value
        for name, value in vars(subjects).items()
        if name.isupper() and isinstance(value, str) and value.startswith(subjects.ROOT + ".")
    }
    assert constants == set(subjects.ALL_PATTERNS)


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String literals of a module, without docstrings (bare string statements)."""
    tree = ast.parse(path.read_text())
    bare = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in bare
    ]


def test_no_other_module_spells_a_subject() -> None:
    names = "|".join(re.escape(n.split("{")[0]) for n in subjects.ALL_JETSTREAM)
    spelled = re.compile(rf"(kodo\.(node|svc|launch|exec|events|registry|sync)\b|^({names}))")
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {text!r}"
        for path in (REPO / "kodo_bus").rglob("*.py")
        if path.name != "subjects.py"
        for line, text in _code_strings(path)
        if spelled.search(text)
    ]
    assert offenders == []


def test_helpers_fill_the_patterns() -> None:
    assert subjects.launch("local", "n1", "calc") == "kodo.launch.local.n1.calc"
    assert subjects.events("u", "e1", "status") == "kodo.events.u.e1.status"
    assert subjects.bucket_view("reg-1") == "KODO_VIEW_reg-1"


@pytest.mark.parametrize("bad", ["a.b", "a b", "*", ">", "", "x>"])
def test_check_token_refuses_what_breaks_subjects(bad: str) -> None:
    with pytest.raises(ConfigError, match="cannot be used in NATS subjects"):
        subjects.check_token(bad, "node id")
