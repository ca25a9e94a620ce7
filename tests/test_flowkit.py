"""FlowKit's complete example runs unchanged (but for its import) standalone and as a flow spec."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kodo_bus.errors import ConfigError
from kodo_bus.flows import Next, spec_of

from .conftest import REPO, free_ports

EXAMPLE = REPO / "examples" / "pipeline" / "flowkit_complete.py"


def _standalone(tmp_path: Path, inputs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    file = tmp_path / "input.json"
    file.write_text(json.dumps(inputs))
    # Standalone never connects; a free port (not the default 4222 a running bus holds) makes
    # sure that if it ever did, it would fail here rather than reach the user's bus.
    address = f"nats://127.0.0.1:{free_ports(1)[0]}"
    return subprocess.run(
        [sys.executable, str(EXAMPLE), str(file), "runner-1", address, "step1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


def test_standalone_run_prints_the_tuple_and_logs(tmp_path: Path) -> None:
    done = _standalone(tmp_path, {"data": "hello"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "nodes": ["next_node"],
        "outputs": {"result": "HELLO"},
        "message": "Success",
    }
    logs = [json.loads(line) for line in done.stderr.splitlines()]
    assert [r["level"] for r in logs] == ["info", "debug", "info"]
    assert logs[-1]["message"] == "Processed 5 items" and logs[0]["node"] == "step1"


def test_standalone_missing_input(tmp_path: Path) -> None:
    done = _standalone(tmp_path, {"other": 1})
    assert json.loads(done.stdout)["message"] == "Missing data"
    assert json.loads(done.stderr.splitlines()[-1])["level"] == "error"


class RecordingTracer:
    execution = "exec-123"

    def __init__(self) -> None:
        self.logs: list[tuple[str, str, dict[str, Any]]] = []

    async def log(self, level: str, message: str, **context: Any) -> None:
        self.logs.append((level, message, context))


async def test_imported_module_is_a_flow_and_logs_to_the_tracer() -> None:
    from examples.pipeline import flowkit_complete as module

    spec = spec_of(module.node)
    assert spec is not None
    assert spec.entry == "examples.pipeline.flowkit_complete:node" and spec.is_async
    assert spec.name == "flowkit_complete"
    tracer = RecordingTracer()
    result = await spec.func({"data": "abc"}, tracer)
    assert Next.from_result(result) == Next(
        flows=["next_node"], outputs={"result": "ABC"}, message="Success"
    )
    assert [level for level, _, _ in tracer.logs] == ["info", "debug", "info"]
    # outside an execution there are no inputs to give: a clear error, not stale data
    with pytest.raises(ConfigError, match="no FlowKit run is active"):
        module.node.get_inputs()
