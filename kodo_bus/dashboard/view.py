"""The dashboard screen as a pure function of the state: `render(state, width, height, now)`.

Pure so it is tested on a recorded console at any size without NATS. Every region gets a fixed
number of lines computed from the terminal size, and tables show the top rows that fit plus an
aggregate line, so 1,000 nodes cost one sort of the rows, not 1,000 lines of output.
"""

from __future__ import annotations

import datetime as dt
import heapq

from rich import box
from rich.console import Group, RenderableType
from rich.layout import Layout
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..cli.render import LEVEL_STYLES, status_text
from ..models import TERMINAL_STATUSES
from .state import MISSED_BEATS, DashboardState, ExecRow, NodeRow

WIDE = 140
"""From this width nodes and executions sit side by side."""
SPARKS = " ▁▂▃▄▅▆▇█"


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
    if not row.online(now):
        return Text(f"offline {_age(age)}", style="red")
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


def _nodes_panel(state: DashboardState, now: float, room: int, wide: bool) -> Panel:
    table = Table(
        box=None,
        expand=True,
        padding=(0, 1),
        show_edge=False,
        header_style="bold",
        caption_justify="left",
        caption_style="dim",
    )
    table.add_column("node", no_wrap=True, overflow="ellipsis", ratio=3)
    if wide:
        table.add_column("organization", no_wrap=True, overflow="ellipsis", ratio=2)
    table.add_column("role", no_wrap=True, overflow="ellipsis")
    table.add_column("heartbeat", no_wrap=True)
    table.add_column("flows", justify="right", no_wrap=True)
    table.add_column("run/cap", justify="right", no_wrap=True)
    table.add_column("cpu", justify="right", no_wrap=True)
    table.add_column("mem", justify="right", no_wrap=True)
    nodes = list(state.nodes.values())
    shown, more = _rows_with_more(len(nodes), room)
    top = heapq.nsmallest(shown, nodes, key=lambda n: (not n.online(now), -n.running, n.id))
    for n in top:
        cells: list[RenderableType] = [n.id]
        if wide:
            cells.append(n.organization)
        cells += [
            n.role,
            _heartbeat_cell(n, now),
            str(n.flows),
            f"{n.running}/{n.capacity}",
            f"{n.cpu:.0f}%",
            _bytes(n.memory),
        ]
        table.add_row(*cells)
    if more:
        rest = nodes if len(nodes) < 5000 else []
        hidden_online = sum(1 for n in rest if n.online(now)) - sum(1 for n in top if n.online(now))
        table.caption = f"… {more:,} more ({max(0, hidden_online):,} online)"
    online, offline = state.node_counts(now)
    title = f"nodes [green]{online}[/] online · [red]{offline}[/] offline"
    return Panel(table, title=title, title_align="left", box=box.ROUNDED, padding=(0, 0))


def _progress_cell(row: ExecRow, width: int) -> RenderableType:
    if row.done is None:
        return Text("")
    if row.total:
        pct = min(100.0, 100 * row.done / row.total)
        bar = ProgressBar(total=row.total, completed=min(row.done, row.total), width=width)
        return Group(bar) if width > 0 and pct >= 0 else Text(f"{pct:.0f}%")
    return Text(f"{row.done:g}")


def _executions_panel(state: DashboardState, now: float, room: int, wide: bool) -> Panel:
    table = Table(
        box=None,
        expand=True,
        padding=(0, 1),
        show_edge=False,
        header_style="bold",
        caption_justify="left",
        caption_style="dim",
    )
    table.add_column("id", no_wrap=True)
    table.add_column("flow", no_wrap=True, overflow="ellipsis", ratio=2)
    table.add_column("node", no_wrap=True, overflow="ellipsis", ratio=2)
    if wide:
        table.add_column("user", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("status", no_wrap=True)
    table.add_column("age", justify="right", no_wrap=True)
    table.add_column("progress", no_wrap=True, width=12 if wide else 8)
    rows = list(state.executions.values())
    shown, more = _rows_with_more(len(rows), room)
    for e in heapq.nlargest(shown, rows, key=lambda r: r.created):
        cells: list[RenderableType] = [e.id[:8], e.flow, e.node]
        if wide:
            cells.append(e.launcher)
        cells += [
            status_text(e.status),
            _age(max(0.0, (e.updated if e.status in TERMINAL_STATUSES else now) - e.created)),
            _progress_cell(e, 12 if wide else 8),
        ]
        table.add_row(*cells)
    if more:
        table.caption = f"… {more:,} older"
    running = sum(1 for e in rows if e.status not in TERMINAL_STATUSES)
    title = f"executions newest first · [blue]{running}[/] active"
    return Panel(table, title=title, title_align="left", box=box.ROUNDED, padding=(0, 0))


def _footer(state: DashboardState, now: float, width: int, lines: int) -> Panel:
    label = "events/s "
    values = state.events_per_second(now, max(10, width - len(label) - 16))
    spark = Text(label, style="bold")
    spark.append(sparkline(values), style="cyan")
    spark.append(f" {values[-1]:,}/s peak {max(values):,}", style="dim")
    body: list[Text] = [spark]
    notices = list(state.notices)[-lines:] if lines > 0 else []
    if not notices and lines > 0:
        body.append(Text("no warnings or errors", style="dim"))
    for n in reversed(notices):
        when = dt.datetime.fromtimestamp(n.ts).strftime("%H:%M:%S")
        line = Text(f"{when} ", style="dim")
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
        room = body - 3
        layout["body"].split_row(
            Layout(_nodes_panel(state, now, room, wide), name="nodes", ratio=11),
            Layout(_executions_panel(state, now, room, wide), name="executions", ratio=9),
        )
    else:
        top = body // 2
        layout["body"].split_column(
            Layout(_nodes_panel(state, now, top - 3, wide), name="nodes", size=top),
            Layout(_executions_panel(state, now, body - top - 3, wide), name="executions"),
        )
    return layout
