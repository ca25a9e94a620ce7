"""README.md is true: its tutorial runs as written, and what it promises about the package holds.

The tutorial test reads the flow, the config and the commands from README.md itself (the fenced
blocks after `<!-- tutorial:NAME -->` comments), so editing the README is what it tests — there
is no copy to fall out of date.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import typer

import kodo_bus
from kodo_bus.server import NatsServer

from .conftest import KODO_BUS, REPO, Processes

README = REPO / "README.md"
CHANGELOG = REPO / "CHANGELOG.md"


def _block(marker: str) -> str:
    """The fenced block right after `<!-- tutorial:marker -->`."""
    text = README.read_text()
    pattern = rf"<!-- tutorial:{re.escape(marker)} -->\n```[a-z]*\n(.*?)```"
    found = re.findall(pattern, text, re.S)
    assert len(found) == 1, f"README.md needs exactly one block marked tutorial:{marker}"
    return str(found[0])


def _files() -> dict[str, str]:
    text = README.read_text()
    pairs = re.findall(r"<!-- tutorial:file (\S+) -->\n```[a-z]*\n(.*?)```", text, re.S)
    return dict(pairs)


def _command(block: str) -> list[str]:
    """The one command of a block, as argv: `kodo-bus` and `python` of this interpreter."""
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one command, got {lines}"
    return _argv(lines[0])


def _argv(command: str) -> list[str]:
    args = shlex.split(command, comments=True)
    if args[0] == "kodo-bus":
        return [*KODO_BUS, *args[1:]]
    assert args[0] == "python", f"unexpected program in {command!r}"
    return [sys.executable, *args[1:]]


def _normalized(output: str) -> list[str]:
    """Lines without what changes from run to run (execution ids, clock times) or trailing
    padding."""
    lines = []
    for raw in output.splitlines():
        line = re.sub(r"\b[0-9a-f]{32}\b", "<id>", raw.rstrip())
        line = re.sub(r"^\d\d:\d\d:\d\d ", "<time> ", line)
        if line:
            lines.append(line)
    return lines


def test_readme_starts_with_the_two_commands() -> None:
    """The first two commands stay at the top, unchanged: run the bus, run the tests."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert blocks[0].strip() == (
        "python3.11 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/kodo-bus up"
    )
    assert blocks[1].strip() == (
        "python3.11 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/pytest"
    )
    # CI runs exactly that command, last, after the install steps the tests need beyond it
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == blocks[1].strip()


def test_readme_tutorial_blocks_are_complete() -> None:
    """Cheap check of what the slow test below runs: every marked block is there and sane."""
    files = _files()
    assert set(files) == {"greet.py", "my-node.yaml", "launch_greet.py"}
    compile(files["greet.py"], "greet.py", "exec")
    compile(files["launch_greet.py"], "launch_greet.py", "exec")
    assert _command(_block("node"))[len(KODO_BUS)] == "run"
    assert _command(_block("launch"))[len(KODO_BUS)] == "launch"
    assert _block("watch").count("kodo-bus ") >= 3


@pytest.fixture
def tutorial_bus(
    fresh_server: NatsServer, tmp_path: Path, ray_address: str
) -> Iterator[tuple[dict[str, str], Path]]:
    """What the tutorial assumes: `kodo-bus up` running (a bus and a registry), the README's
    files written in a fresh directory, and the README's own node command serving them.

    The commands keep their default URL; KODO_NATS (the CLI and the SDK alike) points them at
    this test's server, and KODO_RAY_ADDRESS at the session's Ray.
    """
    for name, text in _files().items():
        (tmp_path / name).write_text(text)
    url = fresh_server.url
    env = {"KODO_NATS": url, "KODO_RAY_ADDRESS": ray_address}
    procs = Processes()
    try:
        procs.start("run", "--role", "registry", "--id", "up-registry", cwd=tmp_path, env=env)
        node_argv = _command(_block("node"))
        node = procs.start(*node_argv[len(KODO_BUS) :], cwd=tmp_path, env=env)
        asyncio.run(_wait_for_flow(url, node, "greet"))
        yield {**os.environ, **env, "COLUMNS": "80"}, tmp_path
    finally:
        procs.stop_all()


async def _wait_for_flow(url: str, node: subprocess.Popen[str], name: str) -> None:
    from kodo_bus import Client, KodoError

    deadline = time.monotonic() + 30
    while True:
        if node.poll() is not None:
            output = node.stdout.read() if node.stdout else ""
            pytest.fail(f"the tutorial's node exited:\n{output}")
        try:
            async with Client(url, retry=0) as kb:
                await kb.flow(name)
                return
        except (KodoError, OSError, nats.errors.Error):
            assert time.monotonic() < deadline, f"flow {name!r} was not served in time"
            await asyncio.sleep(0.3)


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.ray
@pytest.mark.slow
def test_tutorial_runs_as_written(tutorial_bus: tuple[dict[str, str], Path]) -> None:
    env, cwd = tutorial_bus

    launched = _run(_command(_block("launch")), env, cwd)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert _normalized(launched.stdout) == _normalized(_block("launch-output"))

    sdk = _run(_command(_block("sdk")), env, cwd)
    assert sdk.returncode == 0, sdk.stdout + sdk.stderr
    assert _normalized(sdk.stdout) == _normalized(_block("sdk-output"))

    # step 5, the shell lines as written (`kodo-bus` being this interpreter's)
    script = f'set -euo pipefail\nkodo-bus() {{ "{sys.executable}" -m kodo_bus "$@"; }}\n'
    watched = _run(["bash", "-c", script + _block("watch")], env, cwd)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "Hello, Bo!" in watched.stdout  # events --follow, markdown rendered
    assert '"kind":"markdown"' in watched.stdout and "Hello, **Bo**!" in watched.stdout
    assert "greeting Bo 1 times" in watched.stdout  # logs

    # the prose promise about invalid inputs: that message, that exit code
    promise = re.search(
        r"`(kodo-bus launch [^`]+)`\s+prints\s+`(error: [^`]+)`\s+and\s+exits with code (\d)",
        README.read_text(),
    )
    assert promise, "the tutorial's invalid-input example is gone"
    bad = _run(_argv(promise.group(1)), env, cwd)
    assert bad.returncode == int(promise.group(3))
    assert " ".join(bad.stderr.split()).startswith(" ".join(promise.group(2).split()))


# -- the version, written in one place -----------------------------------------------------------


def test_changelog_top_version_is_the_package_version() -> None:
    versions = re.findall(r"^## \[(\d+\.\d+\.\d+[^\]]*)\]", CHANGELOG.read_text(), re.M)
    assert versions, "CHANGELOG.md has no '## [x.y.z]' entry"
    assert versions[0] == kodo_bus.__version__


def test_version_is_written_once() -> None:
    """pyproject reads it from kodo_bus/version.py; `kodo-bus version` prints that."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "kodo_bus.version.__version__"
    written = [
        path
        for path in (REPO / "kodo_bus").rglob("*.py")
        if re.search(r"""__version__\s*=\s*["']""", path.read_text())
    ]
    assert written == [REPO / "kodo_bus" / "version.py"]
    shown = subprocess.run(
        [*KODO_BUS, "version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert shown.stdout.splitlines()[0] == f"kodo-bus {kodo_bus.__version__}"


# -- docstrings and --help ----------------------------------------------------------------------

# Public methods allowed to go without a docstring. Empty: every public method says why or when to
# use it. Keep the mechanism for a module being reworked; the set may only shrink.
UNDOCUMENTED: set[str] = set()


def _undocumented_methods(cls: type) -> set[str]:
    missing = set()
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            doc = value.__doc__
        elif isinstance(value, staticmethod | classmethod):
            doc = value.__func__.__doc__
        elif inspect.isfunction(value):
            doc = value.__doc__
        else:
            continue
        if not doc:
            missing.add(f"{cls.__name__}.{name}")
    return missing


def test_public_api_has_docstrings() -> None:
    import kodo_bus.sync

    missing: set[str] = set()
    public = [getattr(kodo_bus, name) for name in kodo_bus.__all__ if name != "__version__"]
    public += [kodo_bus.sync.Client, kodo_bus.sync.Flow, kodo_bus.sync.Execution]
    for obj in public:
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not obj.__doc__:
            missing.add(obj.__qualname__)
        if inspect.isclass(obj) and obj.__module__.startswith("kodo_bus"):
            missing |= _undocumented_methods(obj)
    assert missing <= UNDOCUMENTED, sorted(missing - UNDOCUMENTED)


def _commands(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every command under `command`, subcommands of groups (`auth ...`) included."""
    yield path, command
    ctx = typer.Context(command, info_name=path)
    for name in getattr(command, "list_commands", lambda _ctx: [])(ctx):
        yield from _commands(command.get_command(ctx, name), f"{path} {name}")


def test_every_command_and_option_has_help() -> None:
    """`kodo-bus COMMAND --help` is complete: a description, and a help text for every option."""
    from kodo_bus.cli import app

    found = dict(_commands(typer.main.get_command(app), "kodo-bus"))
    for expected in ("kodo-bus run", "kodo-bus launch", "kodo-bus auth remove-user"):
        assert expected in found
    for path, command in found.items():
        assert (getattr(command, "help", None) or "").strip(), f"{path}: no description"
        for param in getattr(command, "params", []):
            text = getattr(param, "help", None) or ""
            assert text.strip(), f"{path}: {param.name} has no help text"
