"""ARCHITECTURE.md is the map of kodo_bus/: it must not go stale without a test saying so.

A map that names a module that was renamed away, or misses a new one, sends a new reader to the
wrong place — worse than no map. So: every module file (a package by its name, `cli/`) is named
in ARCHITECTURE.md; every module or file the map names exists; every `module.name` or
`Class.member` it cites is still defined; and the layer rule it states (a module imports from
its own layer or lower ones) holds for the real imports, those made by name included. Pure
reading of files: no server, no import of kodo_bus.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kodo_bus"
DOC = ROOT / "ARCHITECTURE.md"

FILE = re.compile(r"(?<![\w/.-])(\w+(?:/\w+)*\.py)\b")
"""A file the map names: `runner.py`, `cli/render.py`, `tests/invariants.py`."""
DIRECTORY = re.compile(r"(?<![\w/.-])(\w+)/(?![\w/])")
"""A package the map names: `cli/`."""
INLINE = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"([A-Za-z_]\w*)\.([A-Za-z_]\w*)(?![\w.])")
"""`lifecycle.conclude`, `Outcome.ended`, `lifecycle.conclude(js, …)` (at a span's start)."""
LAYER_LINE = re.compile(r"^\s*(\d)\s+[a-z]+\s+(.*)$")
BY_NAME = re.compile(r"import_module\(\s*\"\.(\w+)\"")


def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def modules() -> set[str]:
    """What must be on the map: each top-level module file, and each package by its name."""
    files = {p.name for p in PACKAGE.glob("*.py")}
    packages = {f"{p.parent.name}/" for p in PACKAGE.glob("*/__init__.py")}
    return files | packages


def named(text: str) -> set[str]:
    return set(FILE.findall(text)) | {f"{d}/" for d in DIRECTORY.findall(text)}


def exists(name: str) -> bool:
    """A name on the map is a file of kodo_bus/ or of the repository (`tests/invariants.py`)."""
    if name.endswith("/"):
        return (PACKAGE / name / "__init__.py").is_file() or (ROOT / name).is_dir()
    return (PACKAGE / name).is_file() or (ROOT / name).is_file()


def test_every_module_is_on_the_map() -> None:
    missing = sorted(modules() - named(doc()))
    assert not missing, f"ARCHITECTURE.md does not name {missing}: add each, with its one job"


def test_every_module_on_the_map_exists() -> None:
    gone = sorted(name for name in named(doc()) if not exists(name))
    assert not gone, f"ARCHITECTURE.md names {gone}, which do not exist: update the map"


# -- names the map cites ------------------------------------------------------------------------
@cache
def trees() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def _defined(body: list[ast.stmt]) -> Iterator[str]:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name
        elif isinstance(node, ast.Assign):
            yield from (t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            yield node.target.id


@cache
def module_names() -> dict[str, set[str]]:
    """Names defined at the top of each module, by its stem (`view` holds both views' names)."""
    names: dict[str, set[str]] = {}
    for path, tree in trees().items():
        names.setdefault(path.stem, set()).update(_defined(tree.body))
    return names


@cache
def class_members() -> dict[str, set[str]]:
    """Members of each class defined in kodo_bus (bases in kodo_bus included), by class name."""
    own: dict[str, set[str]] = {}
    bases: dict[str, set[str]] = {}
    for tree in trees().values():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                own.setdefault(node.name, set()).update(_defined(node.body))
                bases.setdefault(node.name, set()).update(
                    b.id for b in node.bases if isinstance(b, ast.Name)
                )

    def members(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        found = set(own.get(name, ()))
        for base in bases.get(name, set()) - seen:
            found |= members(base, seen | {name})
        return found

    return {name: members(name) for name in own}


def test_every_name_the_map_cites_is_defined() -> None:
    """`lifecycle.conclude`, `Outcome.ended`...: a rename must reach the map too."""
    unknown = []
    for span in INLINE.findall(doc()):
        match = DOTTED.match(span)
        if match is None:
            continue
        owner, member = match.groups()
        if owner in module_names() and member not in ("py", "md"):
            if member not in module_names()[owner]:
                unknown.append(span)
        elif owner in class_members() and member not in class_members()[owner]:
            unknown.append(span)
    assert not unknown, f"ARCHITECTURE.md cites names no module defines: {unknown}"


# -- the layer rule -----------------------------------------------------------------------------
def layers() -> dict[str, int]:
    """Layer of each module (a package by its name) from the map's layer diagram."""
    text = doc()
    block = text[text.index("## Layers") :].split("```")[1]
    found: dict[str, int] = {}
    layer = 0
    for line in block.splitlines():
        modules_part = line.split("—")[0]
        match = LAYER_LINE.match(modules_part)
        if match is not None:
            layer, modules_part = int(match.group(1)), match.group(2)
        for name in named(modules_part):
            found[name.removesuffix("/").removesuffix(".py")] = layer
    return found


def _unit(path: Path) -> str:
    """What a file counts as in the layers: its module, or its top package."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def imports(path: Path, tree: ast.Module) -> Iterator[tuple[str, int]]:
    """The kodo_bus units a file imports, with the line (imports by name included)."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            if node.module:
                yield ([*base, *node.module.split(".")][0], node.lineno)
            else:
                yield from (([*base, a.name][0], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kodo_bus."):
            yield ((node.module or "").split(".")[1], node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kodo_bus."):
                    yield (alias.name.split(".")[1], node.lineno)
    source = path.read_text(encoding="utf-8")
    for match in BY_NAME.finditer(source):
        yield (match.group(1), source.count("\n", 0, match.start()) + 1)


def test_the_diagram_places_every_module() -> None:
    placed = layers()
    unplaced = sorted(m for m in modules() if m.removesuffix("/").removesuffix(".py") not in placed)
    assert not unplaced, f"the layer diagram of ARCHITECTURE.md does not place {unplaced}"


def test_no_module_imports_from_a_higher_layer() -> None:
    placed = layers()
    upward = []
    for path, tree in trees().items():
        unit = _unit(path)
        for target, line in imports(path, tree):
            if target in placed and unit in placed and placed[target] > placed[unit]:
                where = path.relative_to(ROOT)
                upward.append(
                    f"{where}:{line} (layer {placed[unit]}) imports {target} "
                    f"(layer {placed[target]})"
                )
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_checks_can_fail() -> None:
    """The readers above see what they must: a missing name, a wrong layer."""
    assert "runner.py" in named("- `runner.py` — node side") and "cli/" in named("`cli/` —")
    assert not exists("no_such_module.py") and not exists("nowhere/")
    assert layers()["runner"] == 3 and layers()["cli"] == 6 and layers()["errors"] == 1
    node = PACKAGE / "node.py"
    assert "runner" in {target for target, _ in imports(node, trees()[node])}  # by name
