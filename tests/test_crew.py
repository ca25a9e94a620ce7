"""CrewAI entry points (issue 19): crews and crewai Flows served as flows on a real node (real
nats-server, the session's Ray), with a deterministic LLM (`examples.crew.scripted`: no network).

What is attacked: the inputs schema a crew's placeholders give; the events a crew's run streams
(each task's output as markdown, tool use as an action, agent steps as logs), in crewai's order,
with the token usage of this execution in `final`; a crew YAML file and a crewai Flow alike;
cancel stopping the crew itself (its LLM is called no more), not only the execution; and
`kodo-bus try examples/crew/crew.yaml` as a user runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("crewai", reason="the crewai extra: pip install -e '.[test,crewai]'")

from kodo_bus import subjects
from kodo_bus.bus import connect, request
from kodo_bus.config import ConnectSettings, FlowDecl, ServiceSettings
from kodo_bus.errors import ConfigError
from kodo_bus.flows import load_flows
from kodo_bus.models import Ack, Empty, Event
from kodo_bus.runner import Runner

from . import test_execution_support as support
from .conftest import Processes
from .test_try import events_of, start

pytestmark = pytest.mark.ray

for _name, _value in (("CREWAI_DISABLE_TELEMETRY", "true"), ("CREWAI_TRACING_ENABLED", "false")):
    os.environ.setdefault(_name, _value)  # before Ray starts: its workers inherit them

FLOWS = [
    FlowDecl(entry="examples.crew.research:crew", name="research"),
    FlowDecl(entry="examples.crew.research:ReportFlow", name="report"),
    FlowDecl(entry="examples/crew/crew.yaml"),
    FlowDecl(entry="tests.test_crew_support:slow_crew", name="slow"),
]


@pytest.fixture
async def node(nats_server: Any, ray_address: str) -> AsyncIterator[support.Node]:
    settings = ServiceSettings(id=f"crew-{time.monotonic_ns()}", nats=[nats_server.url], grace=2)
    nc = await connect(ConnectSettings(nats=[nats_server.url]))
    runner = Runner(nc, settings, load_flows(FLOWS))
    await runner.start()
    try:
        yield support.Node(nc, runner, settings.id)
    finally:
        await asyncio.wait_for(runner.stop(), 60)
        await nc.close()


def _of(events: list[Event], kind: str) -> list[Any]:
    return [e.data for e in events if e.kind == kind]


def test_inputs_are_the_placeholders_and_a_crew_file_is_checked_at_load(tmp_path: Path) -> None:
    specs = {s.name: s for s in load_flows(FLOWS)}
    for name in ("research", "research_crew"):
        schema = specs[name].info().input_schema
        assert schema["required"] == ["topic"] and schema["additionalProperties"] is False
    assert set(specs["report"].info().input_schema["properties"]) == {"topic", "report"}
    assert specs["slow"].info().input_schema["required"] == ["topic", "trace"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "agents:\n  a: {role: r, goal: g, backstory: b}\n"
        "tasks:\n  t: {description: d, expected_output: e, agent: nobody}\n"
    )
    with pytest.raises(ConfigError, match=r"tasks\.t\.agent: no 'nobody' \(defined before it: a\)"):
        load_flows([FlowDecl(entry=str(bad))])


@pytest.mark.slow
@pytest.mark.parametrize("flow", ["research", "research_crew"])
async def test_a_crew_streams_its_steps_and_ends_with_its_output(
    node: support.Node, flow: str
) -> None:
    events = await node.run(flow, {"topic": "tide pools"})
    support.check_well_formed(events)
    assert support.status_of(events)[-1] == "finished", [(e.kind, e.data) for e in events]
    markdown = _of(events, "markdown")
    assert [m.split("**")[1] for m in markdown] == ["research_task", "reporting_task"]
    assert (
        "tide pools Senior Data Researcher reports: Conduct a thorough research about tide "
        "pools." in markdown[0]
    )
    actions = _of(events, "action")
    assert [(a["tool"], a["task"]) for a in actions] == [("word_count", "research_task")]
    assert actions[0]["input"]["text"].startswith("Conduct a thorough research about tide pools.")
    assert actions[0]["output"] == f"{len(actions[0]['input']['text'].split())} words"
    logs = [entry["message"] for entry in _of(events, "log")]
    assert any(m.endswith("I should use word_count first. → word_count") for m in logs), logs
    kinds = [e.kind for e in events if e.kind in ("action", "markdown")]
    assert kinds == ["action", "markdown", "markdown"]  # crewai's order
    (final,) = _of(events, "final")
    assert final["output"] == markdown[1].split("\n\n", 1)[1]
    assert [t["task"] for t in final["tasks"]] == ["research_task", "reporting_task"]
    usage = final["metadata"]["token_usage"]  # 3 calls of 10 + 5 tokens, this execution's only
    assert final["metadata"]["llm_calls"] == 3
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        30,
        15,
        45,
    )


@pytest.mark.slow
async def test_a_crewai_flow_runs_its_steps(node: support.Node) -> None:
    events = await node.run("report", {"topic": "kelp"})
    assert support.status_of(events)[-1] == "finished", [(e.kind, e.data) for e in events]
    logs = [entry["message"] for entry in _of(events, "log")]
    assert logs.index("step research") < logs.index("step conclude")
    assert len(_of(events, "markdown")) == 2
    (final,) = _of(events, "final")
    assert final["output"].startswith("# kelp\n\nkelp Reporting Analyst reports:")
    assert not _of(events, "stdout"), "crewai's flow panels leaked to stdout"


@pytest.mark.slow
async def test_cancel_stops_the_crew(node: support.Node, tmp_path: Path) -> None:
    trace = tmp_path / "calls.txt"
    trace.touch()
    reply = await node.launch("slow", {"topic": "sand", "trace": str(trace)})

    def calls() -> int:
        return len(trace.read_text().splitlines())

    await support.eventually(lambda: calls() >= 3, timeout=60)
    asked = time.monotonic()
    await request(node.nc, subjects.exec_cancel("local", reply.execution), Empty(), Ack)
    events = await support.read_events(node.js, reply.execution)
    assert support.status_of(events)[-1] == "cancelled"
    assert time.monotonic() - asked < 5
    await asyncio.sleep(1.0)  # the step under way when cancelled may still finish
    stopped_at = calls()
    await asyncio.sleep(2.0)  # a crew still running would call its LLM ~10 more times
    assert calls() == stopped_at < 20, f"the crew went on after the cancel: {calls()} calls"


@pytest.mark.slow
def test_try_a_crew_yaml(procs: Processes, tmp_path: Path) -> None:
    run = start(
        procs,
        tmp_path,
        "try",
        "examples/crew/crew.yaml",
        "-i",
        "topic=coral",
        "--json",
        CREWAI_DISABLE_TELEMETRY="true",
        CREWAI_TRACING_ENABLED="false",
    )
    assert run.wait() == 0, run.text()
    events = events_of(run.out.read_text())
    kinds = [e["kind"] for e in events]
    assert kinds.count("markdown") == 2 and kinds.count("action") == 1, kinds
    final = next(e["data"] for e in events if e["kind"] == "final")
    assert final["output"].startswith("coral Reporting Analyst reports:")
    assert final["metadata"]["token_usage"]["total_tokens"] == 45
    assert events[-1]["data"]["status"] == "finished"
    assert json.dumps(events)  # plain JSON lines
    assert not run.left(), "processes left behind"
