"""The dashboard screen as a pure function of the state: `render(state, width, height, now)`.

Pure so it is tested on a recorded console at any size without NATS. Every region gets a fixed
number of lines computed from the terminal size, and tables show the top rows that fit plus an
aggregate line, so 1,000 nodes cost one sort of the rows, not 1,000 lines of output.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Group, RenderableType
from rich.layout import Layout
from rich.panel import Panel
from rich.text import Text

from ..cli.render import LEVEL_STYLES, status_text
from ..models import TERMINAL_STATUSES
from .state import MISSED_BEATS, DashboardState, ExecRow, NodeRow

WIDE = 140
"""From this width nodes and executions sit side by side."""
SPARKS = " ▁▂▃▄▅▆▇█"
UNKNOWN = "\N{EN DASH}"
"""A figure no heartbeat gave yet (not a zero)."""


def _age(seconds: float) -> str:
    if seconds == float("inf"):
        return "never"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "K", "M", "G"):
        if size < 1024:
            return f"{size:.0f}{unit}"
        size /= 1024
    return f"{size:.0f}T"


def sparkline(values: list[int]) -> str:
    """One character per value, scaled to the largest."""
    top = max(values, default=0)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(8, round(v / top * 8))] for v in values)


def _header(state: DashboardState, now: float, width: int) -> Text:
    s = state.server
    line = Text(" kodo-bus ", style="bold reverse")
    line.append(f" {s.url}", style="bold")
    if s.version:
        line.append(f"  nats-server {s.version}")
    if s.jetstream is not None:
        line.append("  JetStream ")
        line.append("on" if s.jetstream else "off", style="green" if s.jetstream else "red")
    if s.monitor_ok:
        line.append(f"  conns {s.connections}")
        if s.in_rate is not None and s.out_rate is not None:
            line.append(f"  msgs in {s.in_rate:,.0f}/s out {s.out_rate:,.0f}/s")
    elif s.monitor_other:
        line.append(f"  {s.monitor} is another nats-server's monitoring (--monitor)", "yellow")
    elif s.monitor:
        line.append("  monitoring unreachable", style="dim")
    online, offline = state.node_counts(now)
    flows = sum(n.flows for n in state.nodes.values())
    running = sum(1 for e in state.executions.values() if e.status == "running")
    awaiting = sum(1 for e in state.executions.values() if e.status == "awaiting")
    rate = state.events_per_second(now, 1)[0]
    counts = Text(" nodes ")
    counts.append(f"{online} online", style="green")
    counts.append(" · ")
    counts.append(f"{offline} offline", style="red" if offline else "dim")
    counts.append(f"   flows {flows:,}   executions ")
    counts.append(f"{running} running", style="blue")
    if awaiting:
        counts.append(" · ")
        counts.append(f"{awaiting} awaiting", style="magenta")
    counts.append(f" · {len(state.executions):,} seen   events {rate:,}/s")
    line.truncate(width, overflow="ellipsis")
    counts.truncate(width, overflow="ellipsis")
    return Text("\n").join([line, counts])


def _heartbeat_cell(row: NodeRow, now: float) -> Text:
    age = row.age(now)
    if row.registry_status == "online" and not row.gone:
        return Text("online", style="green")  # the registry's word; no beat heard to age yet
    if not row.online(now):
        return Text(f"offline {_age(age)}" if row.last_beat else "offline", style="red")
    style = (
        "green" if age <= 1.5 * row.beat else "yellow" if age <= MISSED_BEATS * row.beat else "red"
    )
    return Text(f"online {_age(age)}", style=style)


def _rows_with_more(total: int, room: int) -> tuple[int, int]:
    """How many rows to show in `room` lines, and how many are left for the '… more' line."""
    if total <= room:
        return total, 0
    shown = max(0, room - 1)
    return shown, total - shown


@dataclass(frozen=True)
class _Col:
    name: str
    width: int = 0
    """0: shares the width the fixed columns leave."""
    right: bool = False


def _widths(cols: Sequence[_Col], inner: int) -> list[int]:
    fixed = sum(c.width for c in cols) + len(cols) + 1  # a space before each column, one after
    flex = sum(1 for c in cols if not c.width)
    share, extra = divmod(max(4 * flex, inner - fixed), flex) if flex else (0, 0)
    widths = []
    for c in cols:
        if c.width:
            widths.append(c.width)
        else:
            widths.append(share + (1 if extra > 0 else 0))
            extra -= 1
    return widths


def _line(cells: Sequence[str | Text], cols: Sequence[_Col], widths: Sequence[int]) -> Text:
    """One table row as one line of text (much cheaper for rich than a Table's cells)."""
    line = Text(no_wrap=True, overflow="ellipsis")
    for cell, col, width in zip(cells, cols, widths, strict=True):
        text = cell.copy() if isinstance(cell, Text) else Text(cell)
        text.truncate(width, overflow="ellipsis")
        text.align("right" if col.right else "left", width)
        line.append(" ")
        line.append_text(text)
    return line


def _grid(
    cols: Sequence[_Col], rows: Sequence[Sequence[str | Text]], inner: int, more: str
) -> Group:
    widths = _widths(cols, inner)
    header = _line([Text(c.name, style="bold") for c in cols], cols, widths)
    lines = [header, *(_line(r, cols, widths) for r in rows)]
    if more:
        lines.append(Text(" " + more, style="dim", no_wrap=True, overflow="ellipsis"))
    return Group(*lines)


def _nodes_panel(state: DashboardState, now: float, room: int, inner: int, wide: bool) -> Panel:
    cols = [_Col("node")]
    if wide:
        cols.append(_Col("organization"))
    cols += [
        _Col("role", 8),
        _Col("heartbeat", 13),
        _Col("flows", 5, right=True),
        _Col("run/cap", 7, right=True),
        _Col("cpu", 4, right=True),
        _Col("mem", 5, right=True),
    ]
    nodes = list(state.nodes.values())
    shown, more = _rows_with_more(len(nodes), room)
    top = heapq.nsmallest(shown, nodes, key=lambda n: (not n.online(now), -n.running, n.id))
    rows = []
    for n in top:
        cells: list[str | Text] = [n.id]
        if wide:
            cells.append(n.organization)
        cells += [n.role, _heartbeat_cell(n, now), str(n.flows)]
        if n.health:
            cells += [f"{n.running}/{n.capacity}", f"{n.cpu:.0f}%", _bytes(n.memory)]
        else:  # no heartbeat yet: unknown, not zero
            cells += [UNKNOWN, UNKNOWN, UNKNOWN]
        rows.append(cells)
    online, offline = state.node_counts(now)
    hidden_online = online - sum(1 for n in top if n.online(now))
    caption = f"… {more:,} more ({max(0, hidden_online):,} online)" if more else ""
    title = f"nodes [green]{online}[/] online · [red]{offline}[/] offline"
    return Panel(
        _grid(cols, rows, inner, caption),
        title=title,
        title_align="left",
        box=box.ROUNDED,
        padding=(0, 0),
    )


def _progress_cell(row: ExecRow, width: int) -> Text:
    if row.done is None:
        return Text("")
    if row.total:
        filled = round(width * min(1.0, max(0.0, row.done / row.total)))
        bar = Text("━" * filled, style="magenta")
        bar.append("━" * (width - filled), style="grey30")
        return bar
    return Text(f"{row.done:g}")


def _executions_panel(
    state: DashboardState, now: float, room: int, inner: int, wide: bool
) -> Panel:
    bar = 12 if wide else 8
    cols = [_Col("id", 8), _Col("flow"), _Col("node")]
    if wide:
        cols.append(_Col("user"))
    cols += [_Col("status", 9), _Col("age", 4, right=True), _Col("progress", bar)]
    records = list(state.executions.values())
    shown, more = _rows_with_more(len(records), room)
    rows = []
    for e in heapq.nlargest(shown, records, key=lambda r: r.created):
        cells: list[str | Text] = [e.id[:8], e.flow, e.node]
        if wide:
            cells.append(e.launcher)
        # age: since it was created, finished or not (a quick run is not "0.0s old")
        cells += [status_text(e.status), _age(max(0.0, now - e.created)), _progress_cell(e, bar)]
        rows.append(cells)
    active = sum(1 for e in records if e.status not in TERMINAL_STATUSES)
    title = f"executions newest first · [blue]{active}[/] active"
    caption = f"… {more:,} older" if more else ""
    return Panel(
        _grid(cols, rows, inner, caption),
        title=title,
        title_align="left",
        box=box.ROUNDED,
        padding=(0, 0),
    )


def _footer(state: DashboardState, now: float, width: int, lines: int) -> Panel:
    label = "events/s "
    values = state.events_per_second(now, max(10, width - len(label) - 18))
    spark = Text(" " + label, style="bold")
    spark.append(sparkline(values), style="cyan")
    spark.append(f" {values[-1]:,}/s peak {max(values):,}", style="dim")
    body: list[Text] = [spark]
    notices = list(state.notices)[-lines:] if lines > 0 else []
    if not notices and lines > 0:
        body.append(Text("no warnings or errors", style="dim"))
    for n in reversed(notices):
        when = dt.datetime.fromtimestamp(n.ts).strftime("%H:%M:%S")
        line = Text(f" {when} ", style="dim")
        line.append(f"{n.level.upper():<7}", style=LEVEL_STYLES.get(n.level, ""))
        line.append(f" {n.node}/{n.flow} ", style="dim")
        line.append(n.message)
        line.truncate(width - 4, overflow="ellipsis")
        body.append(line)
    return Panel(
        Group(*body),
        title="activity · last warnings and errors",
        title_align="left",
        box=box.ROUNDED,
        padding=(0, 0),
    )


def render(state: DashboardState, width: int, height: int, now: float) -> RenderableType:
    """The whole screen for a `width` x `height` terminal."""
    wide = width >= WIDE
    notice_lines = 2 if height < 30 else max(3, height // 10)
    footer = 3 + notice_lines
    body = max(6, height - 2 - footer)
    layout = Layout()
    layout.split_column(
        Layout(_header(state, now, width), name="header", size=2),
        Layout(name="body", size=body),
        Layout(_footer(state, now, width, notice_lines), name="footer", size=footer),
    )
    if wide:
        room, left = body - 3, width * 11 // 20
        layout["body"].split_row(
            Layout(_nodes_panel(state, now, room, left - 2, wide), name="nodes", size=left),
            Layout(_executions_panel(state, now, room, width - left - 2, wide), name="executions"),
        )
    else:
        top = body // 2
        layout["body"].split_column(
            Layout(_nodes_panel(state, now, top - 3, width - 2, wide), name="nodes", size=top),
            Layout(
                _executions_panel(state, now, body - top - 3, width - 2, wide), name="executions"
            ),
        )
    return layout
