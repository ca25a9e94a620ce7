"""Crews of the crew tests (no tests here): a long crew whose LLM notes every call in a file the
test names in its inputs, so a test sees whether a cancelled crew really stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crewai import Agent, Crew, Process, Task

from examples.crew.scripted import ScriptedLLM

STEPS = 40
"""Tasks of the long crew: at DELAY s per call, far longer than any test waits."""
DELAY = 0.2


class TracingLLM(ScriptedLLM):
    """The scripted LLM, slowed, appending a line to the file its task names per call."""

    def wait(self, messages: Any) -> None:
        text = messages if isinstance(messages, str) else str(messages)
        marker = "trace file "
        if marker in text:
            path = text.split(marker, 1)[1].split()[0].strip(".'\",\\")
            with Path(path).open("a") as out:
                out.write("call\n")
        super().wait(messages)


llm = TracingLLM(model="tracing", delay=DELAY)
worker = Agent(role="{topic} Worker", goal="Work on {topic}", backstory="Patient.", llm=llm)
slow_crew = Crew(
    agents=[worker],
    tasks=[
        Task(
            name=f"step_{n}",
            description=f"Step {n} about {{topic}}; trace file {{trace}} .",
            expected_output="a line",
            agent=worker,
        )
        for n in range(STEPS)
    ],
    process=Process.sequential,
)
