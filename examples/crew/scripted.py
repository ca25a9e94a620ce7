"""A deterministic stand-in for a real model, so the crew example runs with no API key and no
network (and its tests know every word it says). Swap it for a real one in `crew.yaml`
(`llm: openai/gpt-4o-mini`, with OPENAI_API_KEY set) or in `research.py`.

It speaks crewai's text protocol (ReAct): an agent with tools first calls one tool, then gives
its final answer; an agent without tools answers at once. Every call reports 10 prompt and 5
completion tokens, so the token usage a crew reports is a count of its calls.
"""

from __future__ import annotations

import json
import time
from typing import Any

from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import BaseLLM, llm_call_context
from crewai.tools import tool

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


class ScriptedLLM(BaseLLM):
    """Answers from the task it is given; `delay` seconds per call (waited in slices, so a
    cancelled run stops within one)."""

    delay: float = 0.0

    def call(  # noqa: PLR0917 (crewai's signature)
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> str:
        with llm_call_context():
            self._emit_call_started_event(
                messages=messages, from_task=from_task, from_agent=from_agent
            )
            self.wait(messages)
            text = self.answer(messages, from_task, from_agent)
            self._track_token_usage_internal(USAGE)
            self._emit_call_completed_event(
                response=text,
                call_type=LLMCallType.LLM_CALL,
                from_task=from_task,
                from_agent=from_agent,
                messages=messages,
                usage=USAGE,
            )
            return text

    def wait(self, messages: Any) -> None:
        end = time.monotonic() + self.delay
        while time.monotonic() < end:
            time.sleep(0.02)

    def answer(self, messages: Any, task: Any, agent: Any) -> str:
        history = [messages] if isinstance(messages, str) else messages
        acted = any(isinstance(m, dict) and m.get("role") == "assistant" for m in history)
        tools = getattr(agent, "tools", None) or []
        if tools and not acted:
            name = tools[0].name
            subject = (task.description if task is not None else "").split("\n")[0].strip()
            return (
                f"Thought: I should use {name} first.\n"
                f"Action: {name}\n"
                f"Action Input: {json.dumps({'text': subject})}"
            )
        role = (agent.role if agent is not None else "agent").strip()
        about = (task.description if task is not None else "").strip().split("\n")[0]
        return f"Thought: I know enough now.\nFinal Answer: {role} reports: {about}"

    def get_input_tokens_count(
        self, messages: Any, tools: Any = None, response_model: Any = None
    ) -> int:
        return USAGE["prompt_tokens"]  # what it reports (crewai's estimate would warn)

    def supports_function_calling(self) -> bool:
        return False  # the text protocol: no provider tool calls to fake

    def supports_stop_words(self) -> bool:
        return False


llm = ScriptedLLM(model="scripted")
"""The one the example crews use (`llm: examples.crew.scripted:llm` in crew.yaml)."""


@tool("word_count")
def word_count(text: str) -> str:
    """Counts the words of a text."""
    return f"{len(text.split())} words"
