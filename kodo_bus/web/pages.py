"""The list pages: Flows (search, tags, node, organization, online; paged), Executions (the
user's history, filtered) and Nodes — each one read from the bus per request."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response

from ..client import flows_page as registry_flows
from ..client import nodes_page as registry_nodes
from ..errors import KodoError
from ..models import TERMINAL_STATUSES, FlowItem, FlowsQuery, NodeItem
from .context import panel_of
from .layout import ago, badge, page

STATUSES = (
    "pending", "starting", "running", "awaiting", "finished", "error", "cancelled", "timeout",
    "lost",
)  # fmt: skip


def trouble(request: Request, title: str, exc: KodoError, active: str) -> Response:
    """A page that could not be read from the bus says why, in one line."""
    body = f'<h1>{escape(title)}</h1><p class="error-box">{escape(str(exc))}</p>'
    return page(request, title, body, status=503, active=active)


def _input(name: str, value: str, placeholder: str) -> str:
    return (
        f'<input type="search" name="{name}" value="{escape(value)}" '
        f'placeholder="{escape(placeholder)}" aria-label="{escape(placeholder)}">'
    )


async def flows_page(request: Request) -> Response:
    panel = panel_of(request)
    args = request.query_params
    q, tag, node, org = (args.get(k, "").strip() for k in ("q", "tag", "node", "org"))
    online = args.get("online") == "1"
    try:
        number = max(1, int(args.get("page", "1")))
    except ValueError:
        number = 1
    size = panel.page_size
    query = FlowsQuery(
        q=q or None,
        tags=[t for t in tag.split(",") if t],
        node=node or None,
        organization=org or None,
        offset=0 if online else (number - 1) * size,
        limit=10_000 if online else size,
    )
    try:
        registry = await panel.registry()
        result = await registry_flows(panel.client.nc, registry, query, panel.client.timeout)
    except KodoError as exc:
        return trouble(request, "Flows", exc, "/")
    items: list[FlowItem] = list(result.items)
    total = result.total
    if online:  # the registry does not filter on it: this page pages the online ones itself
        items = [f for f in items if f.status == "online"]
        total = len(items)
        items = items[(number - 1) * size : number * size]
    rows = "".join(_flow_row(f) for f in items) or (
        '<tr><td colspan="5" class="empty">No flow matches.</td></tr>'
    )
    check = " checked" if online else ""
    form = (
        '<form class="filters" method="get" action="/">'
        f"{_input('q', q, 'search')}{_input('tag', tag, 'tags (a,b)')}"
        f"{_input('node', node, 'node')}{_input('org', org, 'organization')}"
        f'<label class="inline"><input type="checkbox" name="online" value="1"{check}> online'
        '</label><button type="submit">Filter</button></form>'
    )
    keep = {k: v for k, v in (("q", q), ("tag", tag), ("node", node), ("org", org)) if v}
    if online:
        keep["online"] = "1"
    body = (
        f"<h1>Flows <small>{total} via {escape(registry)}</small></h1>{form}"
        '<table class="list flows"><thead><tr><th>Flow</th><th>Summary</th><th>Tags</th>'
        f"<th>Node</th><th>State</th></tr></thead><tbody>{rows}</tbody></table>"
        f"{pager('/', keep, number, size, total)}"
    )
    return page(request, "Flows", body, active="/")


def _flow_row(f: FlowItem) -> str:
    href = f"/flows/{quote(f.node, safe='')}/{quote(f.name, safe='')}"
    tags = " ".join(
        f'<a class="tag" href="/?{urlencode({"tag": t})}">{escape(t)}</a>' for t in f.tags
    )
    meta = " · ".join(escape(x) for x in (f"v{f.version}" if f.version else "", f.author) if x)
    desc = f'<div class="desc">{escape(f.description)}</div>' if f.description else ""
    org = f'<div class="org">{escape(f.organization)}</div>' if f.organization else ""
    return (
        f'<tr class="flow" data-flow="{escape(f.node)}/{escape(f.name)}">'
        f'<td><a class="name" href="{href}">{escape(f.name)}</a><div class="meta">{meta}</div>'
        f"</td><td>{escape(f.summary)}{desc}</td><td>{tags}</td>"
        f"<td>{escape(f.node)}{org}</td><td>{badge(f.status)}</td></tr>"
    )


def pager(path: str, keep: dict[str, str], number: int, size: int, total: int) -> str:
    pages = max(1, -(-total // size))
    if pages == 1:
        return ""
    links = []
    if number > 1:
        links.append(
            f'<a rel="prev" href="{path}?{urlencode({**keep, "page": number - 1})}">← previous</a>'
        )
    links.append(f"<span>page {number} of {pages}</span>")
    if number < pages:
        links.append(
            f'<a rel="next" href="{path}?{urlencode({**keep, "page": number + 1})}">next →</a>'
        )
    return f'<nav class="pager">{"".join(links)}</nav>'


WITHIN = {"hour": 3600.0, "day": 86400.0, "week": 7 * 86400.0}
"""The time filter's presets: executions started in the last hour, day or week."""
SHOWN_MAX = 200
"""Executions listed at most (the newest of those that match)."""
SCANNED_MAX = 10_000
"""Records read at most to apply a time filter (the newest first)."""


def moment(text: str) -> float | None:
    """`2024-05-01T12:00` (a datetime-local field, read as UTC) or an ISO time with its
    offset, as Unix seconds; None when empty. Raises ValueError for anything else."""
    if not text.strip():
        return None
    when = datetime.fromisoformat(text.strip())
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _time_filter(
    within: str, since_text: str, until_text: str, now: float
) -> tuple[float | None, float | None, str]:
    """(since, until, problem) of the executions page's time fields."""
    problem = ""
    try:
        since, until = moment(since_text), moment(until_text)
    except ValueError:
        since = until = None
        problem = "since/until: give a date and time such as 2024-05-01T12:00 (UTC)"
    if within in WITHIN:
        since = max(since or 0.0, now - WITHIN[within])
    return since, until, problem


async def executions_page(request: Request) -> Response:
    panel = panel_of(request)
    args = request.query_params
    status, flow, node, within, since_text, until_text = (
        args.get(k, "").strip() for k in ("status", "flow", "node", "within", "since", "until")
    )
    now = time.time()
    since, until, problem = _time_filter(within, since_text, until_text, now)
    timed = since is not None or until is not None
    try:
        records = await panel.client.executions(
            status=status or None,
            flow=flow or None,
            node=node or None,
            limit=SCANNED_MAX if timed else SHOWN_MAX,
        )
    except KodoError as exc:
        return trouble(request, "Executions", exc, "/executions")
    if timed:
        records = [
            r
            for r in records
            if (since is None or r.created >= since) and (until is None or r.created <= until)
        ][:SHOWN_MAX]
    rows = (
        "".join(
            f'<tr class="execution" data-status="{escape(r.status)}" data-created="{r.created}">'
            f'<td><a class="mono" href="/executions/{escape(r.execution)}">'
            f"{escape(r.execution[:12])}</a></td><td>{escape(r.flow)}</td><td>{escape(r.node)}</td>"
            f'<td>{badge(r.status)}</td><td title="{utc(r.created)}">{ago(now - r.created)} ago'
            f"</td><td>{escape(r.parent[:12]) if r.parent else ''}</td></tr>"
            for r in records
        )
        or '<tr><td colspan="6" class="empty">No execution matches.</td></tr>'
    )
    options = "".join(f"<option{' selected' if s == status else ''}>{s}</option>" for s in STATUSES)
    presets = "".join(
        f'<option value="{k}"{" selected" if k == within else ""}>last {k}</option>' for k in WITHIN
    )
    form = (
        '<form class="filters" method="get" action="/executions">'
        f'<select name="status" aria-label="status"><option value="">any status</option>'
        f"{options}</select>{_input('flow', flow, 'flow')}{_input('node', node, 'node')}"
        f'<select name="within" aria-label="started within"><option value="">any time</option>'
        f"{presets}</select>"
        f'<label class="inline">since <input type="datetime-local" step="1" name="since" '
        f'value="{escape(since_text)}" aria-label="since (UTC)"></label>'
        f'<label class="inline">until <input type="datetime-local" step="1" name="until" '
        f'value="{escape(until_text)}" aria-label="until (UTC)"></label>'
        '<small class="help">times in UTC</small>'
        '<button type="submit">Filter</button></form>'
    )
    note = f'<p class="error-box" id="filter-error">{escape(problem)}</p>' if problem else ""
    running = sum(1 for r in records if r.status not in TERMINAL_STATUSES)
    body = (
        f"<h1>Executions <small>of {escape(panel.user)}: {len(records)} shown, "
        f"{running} not ended</small></h1>{form}{note}"
        '<table class="list"><thead><tr><th>Id</th><th>Flow</th><th>Node</th><th>Status</th>'
        f"<th>Started</th><th>Parent</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return page(request, "Executions", body, active="/executions")


async def nodes_page(request: Request) -> Response:
    panel = panel_of(request)
    try:
        registry = await panel.registry()
        nodes = await registry_nodes(panel.client.nc, registry, panel.client.timeout)
    except KodoError as exc:
        return trouble(request, "Nodes", exc, "/nodes")
    now = time.time()
    rows = (
        "".join(
            _node_row(n, now)
            for n in sorted(nodes.items, key=lambda n: (n.status != "online", n.id))
        )
        or '<tr><td colspan="9" class="empty">No node is known.</td></tr>'
    )
    body = (
        f"<h1>Nodes <small>{nodes.total} via {escape(registry)}</small></h1>"
        '<table class="list nodes"><thead><tr><th>Node</th><th>Role</th><th>Organization</th>'
        '<th>State</th><th>Flows</th><th title="running executions / capacity">Load</th>'
        '<th>CPU</th><th title="processes serving this node id">Replicas</th>'
        f"<th>Last seen</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return page(request, "Nodes", body, active="/nodes")


def _node_row(n: NodeItem, now: float) -> str:
    """One node: its load (running executions of its capacity, summed over its replicas, as
    the registry's view tells from their heartbeats) and how many processes serve its id."""
    replicas = n.replicas or 1
    share = min(1.0, n.running / n.capacity) if n.capacity else 0.0
    return (
        f'<tr class="node" data-node="{escape(n.id)}" data-running="{n.running}" '
        f'data-capacity="{n.capacity}" data-replicas="{replicas}"><td>'
        f'<a href="/?{urlencode({"node": n.id})}">{escape(n.id)}</a></td>'
        f"<td>{escape(n.role)}</td><td>{escape(n.organization)}</td><td>{badge(n.status)}</td>"
        f'<td class="flows">{n.flows} flows</td>'
        f'<td class="load"><meter min="0" max="1" value="{share:.2f}"></meter> '
        f'<span class="n">{n.running}/{n.capacity}</span> running</td>'
        f'<td>{n.cpu:.0f} % CPU</td><td class="replicas">{replicas} '
        f"{'replica' if replicas == 1 else 'replicas'}</td>"
        f"<td>{ago(now - n.last_seen)} ago</td></tr>"
    )
