"""Chained flows: launching the flows a `Next` names, as children of the current execution.

This runs in the Ray worker, right after the flow returned and before its `final` event, so the
children's records exist by the time anyone sees the parent end (`Execution.workflow()` relies on
that). A child is launched as the same launcher, on the same node when that node offers the flow,
else on whichever node a registry's view names (online first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from . import subjects
from .bus import request
from .discovery import find_registry
from .errors import KodoError
from .flows import Next
from .models import FlowsPage, FlowsQuery, LaunchReply, LaunchRequest


class WorkflowError(KodoError):
    """A next flow could not be launched (unknown flow, bad outputs, depth limit)."""


@dataclass(frozen=True, kw_only=True)
class ChainContext:
    """Where the current execution stands in its workflow."""

    execution: str
    root: str | None
    depth: int
    max_depth: int
    launcher: str
    node: str
    node_flows: frozenset[str]


async def _node_offering(nc: NATS, ctx: ChainContext, flow: str) -> str:
    if flow in ctx.node_flows:
        return ctx.node
    registry = await find_registry(nc)
    page = await request(
        nc, subjects.svc_flows(registry), FlowsQuery(q=flow, limit=1000), FlowsPage
    )
    offers = sorted(
        (item for item in page.items if item.name == flow),
        key=lambda item: (item.status != "online", item.node),
    )
    if not offers:
        raise WorkflowError(f"next flow {flow!r} is not offered by any node in the federation")
    return offers[0].node


async def launch_next(nc: NATS, ctx: ChainContext, nxt: Next) -> list[dict[str, Any]]:
    """Launch every flow of `nxt`; returns `{flow, node, execution}` per child."""
    if not nxt.flows:
        return []
    if ctx.depth + 1 >= ctx.max_depth:
        raise WorkflowError(
            f"workflow depth limit reached ({ctx.max_depth}): not launching {', '.join(nxt.flows)}"
        )
    children = []
    for flow in nxt.flows:
        node = await _node_offering(nc, ctx, flow)
        launch = LaunchRequest(
            inputs=nxt.outputs,
            parent=ctx.execution,
            root=ctx.root or ctx.execution,
            depth=ctx.depth + 1,
        )
        try:
            reply = await request(
                nc, subjects.launch(ctx.launcher, node, flow), launch, LaunchReply
            )
        except KodoError as exc:
            raise WorkflowError(f"next flow {node}/{flow} refused the launch: {exc}") from None
        children.append({"flow": flow, "node": node, "execution": reply.execution})
    return children
