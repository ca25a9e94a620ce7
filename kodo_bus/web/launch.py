"""The launch form of a flow: generated from its input schema, posted back, checked by the
node (its field-level messages shown at their fields), then off to the execution's page."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..errors import FieldProblem, FlowNotFound, InputsInvalid, KodoError
from ..flow_ref import Flow
from . import forms
from .context import form_of, panel_of, refused
from .layout import badge, csrf_field, page
from .pages import trouble


async def _flow(request: Request) -> Flow:
    """The flow the path names (node and name), from the registry's view."""
    panel = panel_of(request)
    node, name = request.path_params["node"], request.path_params["name"]
    for found in await panel.client.flows(via=panel.via, node=node):
        if found.name == name and found.node == node:
            return found
    raise FlowNotFound(f"no flow {name!r} on node {node!r}")


def _form_page(
    request: Request,
    flow: Flow,
    values: dict[str, str] | None = None,
    problems: list[FieldProblem] | None = None,
    status: int = 200,
) -> Response:
    fields = forms.fields_of(flow.schema)
    placed, rest = forms.problems_by_field(fields, problems or [])
    top = "".join(f'<p class="field-error form-error">{escape(m)}</p>' for m in rest)
    if problems:
        top = f'<p class="error-box">Not launched: see the fields below.</p>{top}'
    action = f"/flows/{quote(flow.node, safe='')}/{quote(flow.name, safe='')}"
    meta = " · ".join(
        escape(x)
        for x in (
            flow.node,
            flow.organization,
            f"v{flow.version}" if flow.version else "",
            flow.author,
        )
        if x
    )
    tags = " ".join(f'<span class="tag">{escape(t)}</span>' for t in flow.tags)
    desc = f'<p class="desc">{escape(flow.description)}</p>' if flow.description else ""
    body = (
        f'<h1>{escape(flow.name)} {badge(flow.status)}</h1><p class="meta">{meta} {tags}</p>'
        f"<p>{escape(flow.summary)}</p>{desc}"
        f'<form class="launch" method="post" action="{action}" novalidate>{csrf_field(request)}'
        f"{top}{forms.render(fields, values, placed)}"
        '<button type="submit" class="primary">Launch</button></form>'
    )
    return page(request, f"Launch {flow.name}", body, status=status, active="/")


async def form_page(request: Request) -> Response:
    try:
        flow = await _flow(request)
    except KodoError as exc:
        return trouble(request, "Launch", exc, "/")
    return _form_page(request, flow)


async def submit(request: Request) -> Response:
    form = await form_of(request)
    if form is None:
        return refused(request)
    try:
        flow = await _flow(request)
    except KodoError as exc:
        return trouble(request, "Launch", exc, "/")
    values = {k: v for k, v in form.items() if k.startswith(forms.PREFIX)}
    data: dict[str, Any] = forms.parse(forms.fields_of(flow.schema), form)
    try:
        execution = await flow.launch(data)  # validated here with the node's rules, then by it
    except InputsInvalid as exc:
        return _form_page(request, flow, values, exc.problems, status=422)
    except KodoError as exc:
        problem = FieldProblem("", f"{type(exc).__name__}: {exc}")
        return _form_page(request, flow, values, [problem], status=502)
    return RedirectResponse(f"/executions/{quote(execution.id, safe='')}", status_code=303)
