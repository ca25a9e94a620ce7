"""The crew of `crew.yaml` written in Python, and a crewai Flow around it: both are served as
flows as they are (`node.yaml`), or run once with `kodo-bus try examples.crew.research:crew`."""

from __future__ import annotations

from crewai import Agent, Crew, Process, Task
from crewai.flow.flow import Flow, listen, start
from pydantic import BaseModel

from examples.crew.scripted import llm, word_count  # a real LLM: crewai.LLM("openai/gpt-4o-mini")

researcher = Agent(
    role="{topic} Senior Data Researcher",
    goal="Uncover cutting-edge developments in {topic}",
    backstory="You're a seasoned researcher with a knack for uncovering the latest "
    "developments in {topic}.",
    tools=[word_count],
    llm=llm,
)
reporting_analyst = Agent(
    role="{topic} Reporting Analyst",
    goal="Create detailed reports based on {topic} data analysis and research findings",
    backstory="You're a meticulous analyst with a keen eye for detail.",
    llm=llm,
)
research_task = Task(
    name="research_task",
    description="Conduct a thorough research about {topic}.",
    expected_output="A list with 10 bullet points of the most relevant information about {topic}",
    agent=researcher,
)
reporting_task = Task(
    name="reporting_task",
    description="Review the context you got and expand each topic into a full section.",
    expected_output="A fully fledged report with the main topics, formatted as markdown",
    agent=reporting_analyst,
    context=[research_task],
)

crew = Crew(
    agents=[researcher, reporting_analyst],
    tasks=[research_task, reporting_task],
    process=Process.sequential,
)
"""Its inputs are its placeholders: `topic`."""


class ReportState(BaseModel):
    topic: str = "AI agents"
    report: str = ""


class ReportFlow(Flow[ReportState]):
    """Runs the research crew on the topic, then keeps its report."""

    @start()
    def research(self) -> str:
        result = crew.copy().kickoff(inputs={"topic": self.state.topic})
        self.state.report = result.raw
        return result.raw

    @listen(research)
    def conclude(self, report: str) -> str:
        return f"# {self.state.topic}\n\n{report}"
