"""The list pages: Flows (search, tags, node, organization, online; paged), Executions (the
user's history, filtered) and Nodes — each one read from the bus per request."""

from __future__ import annotations

import time
from html import escape
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response

from .. import bus, subjects
from ..client import flows_page as registry_flows
from ..errors import KodoError
from ..models import TERMINAL_STATUSES, Empty, FlowItem, FlowsQuery, NodesPage
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


async def executions_page(request: Request) -> Response:
    panel = panel_of(request)
    args = request.query_params
    status, flow, node = (args.get(k, "").strip() for k in ("status", "flow", "node"))
    try:
        records = await panel.client.executions(
            status=status or None, flow=flow or None, node=node or None, limit=200
        )
    except KodoError as exc:
        return trouble(request, "Executions", exc, "/executions")
    now = time.time()
    rows = (
        "".join(
            f'<tr class="execution" data-status="{escape(r.status)}">'
            f'<td><a class="mono" href="/executions/{escape(r.execution)}">'
            f"{escape(r.execution[:12])}</a></td><td>{escape(r.flow)}</td><td>{escape(r.node)}</td>"
            f"<td>{badge(r.status)}</td><td>{ago(now - r.created)} ago</td>"
            f"<td>{escape(r.parent[:12]) if r.parent else ''}</td></tr>"
            for r in records
        )
        or '<tr><td colspan="6" class="empty">No execution yet.</td></tr>'
    )
    options = "".join(f"<option{' selected' if s == status else ''}>{s}</option>" for s in STATUSES)
    form = (
        '<form class="filters" method="get" action="/executions">'
        f'<select name="status" aria-label="status"><option value="">any status</option>'
        f"{options}</select>{_input('flow', flow, 'flow')}{_input('node', node, 'node')}"
        '<button type="submit">Filter</button></form>'
    )
    running = sum(1 for r in records if r.status not in TERMINAL_STATUSES)
    body = (
        f"<h1>Executions <small>of {escape(panel.user)}: {len(records)} shown, "
        f"{running} not ended</small></h1>{form}"
        '<table class="list"><thead><tr><th>Id</th><th>Flow</th><th>Node</th><th>Status</th>'
        f"<th>Started</th><th>Parent</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return page(request, "Executions", body, active="/executions")


async def nodes_page(request: Request) -> Response:
    panel = panel_of(request)
    try:
        registry = await panel.registry()
        nodes = await bus.request(
            panel.client.nc,
            subjects.svc_nodes(registry),
            Empty(),
            NodesPage,
            timeout=panel.client.timeout,
        )
    except KodoError as exc:
        return trouble(request, "Nodes", exc, "/nodes")
    now = time.time()
    rows = (
        "".join(
            f'<tr class="node" data-node="{escape(n.id)}"><td>'
            f'<a href="/?{urlencode({"node": n.id})}">{escape(n.id)}</a></td>'
            f"<td>{escape(n.role)}</td><td>{escape(n.organization)}</td><td>{badge(n.status)}</td>"
            f"<td>{n.flows}</td><td>{n.running}/{n.capacity}</td><td>{n.cpu:.0f} %</td>"
            f"<td>{n.replicas or 1}</td><td>{ago(now - n.last_seen)} ago</td></tr>"
            for n in sorted(nodes.items, key=lambda n: (n.status != "online", n.id))
        )
        or '<tr><td colspan="9" class="empty">No node is known.</td></tr>'
    )
    body = (
        f"<h1>Nodes <small>{nodes.total} via {escape(registry)}</small></h1>"
        '<table class="list"><thead><tr><th>Node</th><th>Role</th><th>Organization</th>'
        "<th>State</th><th>Flows</th><th>Running</th><th>CPU</th><th>Replicas</th>"
        f"<th>Last seen</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return page(request, "Nodes", body, active="/nodes")
