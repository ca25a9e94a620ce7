"""The launch form of a flow: generated from its input schema, posted back, checked by the
node (its field-level messages shown at their fields), then off to the execution's page."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..errors import FieldProblem, FlowNotFound, InputsInvalid, KodoError
from ..flow_ref import Flow
from ..models import File
from . import csrf, forms, uploads
from .context import form_of, panel_of, refused, web_of
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
    multipart = f' enctype="{uploads.MULTIPART}"' if forms.file_fields(fields) else ""
    body = (
        f'<h1>{escape(flow.name)} {badge(flow.status)}</h1><p class="meta">{meta} {tags}</p>'
        f"<p>{escape(flow.summary)}</p>{desc}"
        f'<form class="launch" method="post" action="{action}"{multipart} novalidate>'
        f"{csrf_field(request)}"
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
    if uploads.is_multipart(request):
        return await _submit_with_files(request)
    form = await form_of(request)
    if form is None:
        return refused(request)
    try:
        flow = await _flow(request)
    except KodoError as exc:
        return trouble(request, "Launch", exc, "/")
    return await _launch(request, flow, form, {})


async def _submit_with_files(request: Request) -> Response:
    """A form with file inputs: its files spooled to disk, then uploaded by the SDK as this
    browser's NATS user, then the launch; the spooled copies removed whatever happens."""
    if not csrf.same_origin(request) or not request.cookies.get(csrf.COOKIE):
        return refused(request)  # before a byte of a cross-site upload is read
    try:
        flow = await _flow(request)
    except KodoError as exc:
        return trouble(request, "Launch", exc, "/")
    wanted = [forms.PREFIX + f for f in forms.file_fields(forms.fields_of(flow.schema))]
    try:
        posted = await uploads.read(request, web_of(request).upload_max, wanted)
    except HTTPException as exc:
        if exc.status_code != 413:
            raise
        problem = FieldProblem("", f"Not launched: {exc.detail}.")
        return _form_page(request, flow, None, [problem], status=413)
    try:
        if not csrf.valid(request, posted.form.get(csrf.FIELD)):
            return refused(request)
        paths = {k.removeprefix(forms.PREFIX): p for k, p in posted.files.items()}
        return await _launch(request, flow, posted.form, paths)
    finally:
        await posted.remove()


def _placeholder(path: Path) -> dict[str, Any]:
    """What a file input's reference will look like, to check the other inputs before any
    upload (a form with a typo uploads nothing)."""
    return File(bucket="-", name=path.name, size=0, digest="0" * 64).model_dump()


async def _launch(
    request: Request, flow: Flow, form: dict[str, str], paths: dict[str, Path]
) -> Response:
    values = {k: v for k, v in form.items() if k.startswith(forms.PREFIX)}
    data: dict[str, Any] = forms.parse(forms.fields_of(flow.schema), form)
    try:
        flow.validate(data | {k: _placeholder(p) for k, p in paths.items()})
        # uploaded here, chunk by chunk, then validated with the node's rules, then by it
        execution = await flow.launch(data, files=paths or None)
    except InputsInvalid as exc:
        return _form_page(request, flow, values, exc.problems, status=422)
    except KodoError as exc:
        problem = FieldProblem("", f"{type(exc).__name__}: {exc}")
        return _form_page(request, flow, values, [problem], status=502)
    return RedirectResponse(f"/executions/{quote(execution.id, safe='')}", status_code=303)
