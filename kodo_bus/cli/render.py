"""How an execution's events look on a terminal, and as JSON lines for scripts.

Kept apart from the commands so `launch --follow` and `events` render identically, and so the
rendering can be tested on a recorded console without NATS.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from pydantic_core import to_json
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.pretty import Pretty
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.text import Text

from ..models import TERMINAL_STATUSES, Event

LEVEL_STYLES = {
    "debug": "dim",
    "info": "cyan",
    "warning": "yellow",
    "error": "bold red",
    "critical": "bold white on red",
}
STATUS_STYLES = {
    "pending": "dim",
    "starting": "cyan",
    "running": "blue",
    "awaiting": "magenta",
    "finished": "green",
    "error": "red",
    "cancelled": "yellow",
    "timeout": "yellow",
    "lost": "red",
}


def event_json(event: Event) -> str:
    """One event as one JSON line (the wire shape, so scripts read what `nats sub` shows):
    like kodo-bus writers, it leaves out the envelope fields that are null (`parent` of a
    top-level execution, `data` of an event without any), never a value inside `data`."""
    wire = {key: value for key, value in event.model_dump(mode="json").items() if value is not None}
    return to_json(wire).decode()


SHORT_ID = 8
"""Fewest characters of an execution id a table shows (`kodo-bus events` takes any unique
prefix of 4 or more)."""


def short_ids(ids: Iterable[str], shortest: int = SHORT_ID) -> dict[str, str]:
    """Each id's shortest prefix of at least `shortest` characters that no other of `ids`
    starts with (git's short hashes): what a table prints, and what can be pasted back."""
    ordered = sorted(set(ids))
    shown: dict[str, str] = {}
    for i, full in enumerate(ordered):
        shared = max(
            (_common(full, ordered[j]) for j in (i - 1, i + 1) if 0 <= j < len(ordered)),
            default=0,
        )
        shown[full] = full[: max(shortest, shared + 1)]
    return shown


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def status_text(status: str) -> Text:
    """A status word in its colour (shared by tables and the dashboard)."""
    return Text(status, style=STATUS_STYLES.get(status, ""))


def log_line(event: Event, with_source: bool = False) -> Text:
    """A `log` event as one line: time, level in its colour, optional node/flow, message."""
    data = event.data if isinstance(event.data, dict) else {"message": str(event.data)}
    level = str(data.get("level", "info")).lower()
    when = dt.datetime.fromtimestamp(event.ts).strftime("%H:%M:%S")
    line = Text(f"{when} ", style="dim")
    line.append(f"{level.upper():<8}", style=LEVEL_STYLES.get(level, ""))
    if with_source:
        line.append(f" {event.node}/{event.flow} {event.execution[:8]}", style="dim")
    line.append(" " + str(data.get("message", "")))
    context = data.get("context")
    if context:
        line.append(" " + json.dumps(context, default=str), style="dim")
    exception = data.get("exception")
    if isinstance(exception, dict) and exception.get("traceback"):
        line.append("\n" + str(exception["traceback"]).rstrip(), style="dim red")
    return line


class EventRenderer:
    """Prints events as they come: markdown, a live progress bar, coloured logs, dimmed output.

    The progress bar is a rich `Progress` started at the first `progress` event; while it is
    live, everything else is printed through its console so lines stay above the bar.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def close(self) -> None:
        """Stop the progress bar (leaving its last state on screen)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _print(self, *items: Any) -> None:
        target = self._progress.console if self._progress is not None else self.console
        target.print(*items, highlight=False)

    def _on_progress(self, data: dict[str, Any]) -> None:
        done = float(data.get("done") or 0)
        total = data.get("total")
        message = escape(str(data.get("message") or ""))
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(message or "progress", total=None)
        assert self._task is not None
        self._progress.update(
            self._task,
            completed=done,
            total=float(total) if total else None,
            description=message or "progress",
        )

    def render(self, event: Event) -> None:
        """Show one event (the caller decides what to do with `lock` questions)."""
        kind, data = event.kind, event.data
        if kind == "progress" and isinstance(data, dict):
            self._on_progress(data)
        elif kind == "markdown":
            self._print(Markdown(str(data)))
        elif kind in ("text", "html"):
            self._print(Text(str(data)))
        elif kind in ("stdout", "stderr"):
            self._print(Text(str(data).rstrip("\n"), style="dim"))
        elif kind == "log":
            self._print(log_line(event))
        elif kind in ("result", "action"):
            self._print(Text(f"{kind}:", style="bold"), Pretty(data))
        elif kind == "lock" and isinstance(data, dict):
            self._print(Text(f"? {data.get('prompt') or 'the flow asks for an answer'}", "bold"))
        elif kind == "answer" and isinstance(data, dict):
            self._print(Text("answered: ", style="dim"), Pretty(data.get("data")))
        elif kind == "error" and isinstance(data, dict):
            self._print(Text(f"{data.get('type', 'Error')}: {data.get('message', '')}", "bold red"))
            if data.get("traceback"):
                self._print(Text(str(data["traceback"]).rstrip(), style="dim red"))
        elif kind == "final":
            self.close()
            self._print(Pretty(data, expand_all=True))
        elif kind == "status" and isinstance(data, dict):
            status = str(data.get("status"))
            if status in TERMINAL_STATUSES:
                self.close()
            self._print(Text("status ", style="dim") + status_text(status))
        elif kind == "meta" and isinstance(data, dict):
            line = f"{event.node}/{event.flow} {data.get('version') or ''}".rstrip()
            self._print(Text(line, style="dim"))
        elif kind == "inputs":
            self._print(Text("inputs ", style="dim") + Text(json.dumps(data), style="dim"))
