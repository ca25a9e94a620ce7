"""Flows of the Ray cluster test (`tests/test_deploy_ray.py`): they say where they ran.

Every Ray machine imports this module as `tests.flowpkg.ray_flows` (PYTHONPATH = the repository
root): the node's actors to run the flow, and any worker that runs one of its Ray tasks, since
`_here` travels by reference (module and name), not by value.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from pydantic import BaseModel, Field

from kodo_bus.flows import flow
from kodo_bus.tracer import Tracer


class Where(BaseModel):
    per_node: int = Field(default=1, ge=1, le=8, description="Ray tasks pinned to each node")


def _here() -> dict[str, Any]:
    """The Ray node and the process this runs in; `ppid` is the raylet that started it."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return {"node": node, "pid": os.getpid(), "ppid": os.getppid()}


@flow(summary="Where this flow and its Ray tasks run: tasks pinned to every alive Ray node")
async def where(inputs: Where, tracer: Tracer) -> dict[str, Any]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = await asyncio.to_thread(ray.nodes)
    alive = sorted(n["NodeID"] for n in nodes if n["Alive"])
    await tracer.markdown(f"{len(alive)} alive Ray nodes")
    probe = ray.remote(num_cpus=1)(_here)
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
        for node in alive
        for _ in range(inputs.per_node)
    ]
    tasks = await asyncio.gather(*refs)
    return {"flow": _here(), "nodes": alive, "tasks": list(tasks)}
