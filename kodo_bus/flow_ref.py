"""`Flow`: one flow of the federation as a client sees it, ready to validate inputs and launch."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from . import subjects
from .config import LAUNCH_ATTEMPTS, LAUNCH_RESPONDERS_WITHIN
from .errors import (
    AmbiguousFlow,
    FieldProblem,
    FlowOffline,
    InputsInvalid,
    KodoError,
    KodoTimeout,
    LaunchUnanswered,
    NoResponders,
    problems_from,
)
from .files import upload_inputs
from .flows import unknown_inputs
from .models import FlowItem, LaunchReply, LaunchRequest
from .schema_model import model_from_schema

if TYPE_CHECKING:
    from .client import Client
    from .execution_ref import Execution


class Flow:
    """A flow offered by a node: its description, input schema and a `launch` method."""

    def __init__(self, client: Client, item: FlowItem) -> None:
        self._client = client
        self._item = item

    def __repr__(self) -> str:
        return f"Flow({self.node}/{self.name}, status={self.status!r})"

    name = property(lambda self: self._item.name, doc="Flow name, unique on its node.")
    node = property(lambda self: self._item.node, doc="Id of the node that runs it.")
    summary = property(lambda self: self._item.summary, doc="One line for lists and search.")
    description = property(
        lambda self: self._item.description, doc="Longer text (the flow's docstring by default)."
    )
    tags = property(lambda self: list(self._item.tags), doc="Labels to filter flows by.")
    version = property(lambda self: self._item.version, doc="The flow author's version string.")
    author = property(lambda self: self._item.author, doc="Who wrote the flow, as declared.")
    organization = property(
        lambda self: self._item.organization, doc="Organization of the node, as it announces it."
    )
    status = property(lambda self: self._item.status, doc="online or offline.")
    urls = property(lambda self: list(self._item.urls), doc="Bus of the node when not this one.")

    @property
    def schema(self) -> dict[str, Any]:
        """JSON schema of the inputs (titles, descriptions, defaults, bounds, enums)."""
        return self._item.input_schema

    @property
    def qualified_name(self) -> str:
        """`node/name`: the form that stays unambiguous when several nodes offer one name."""
        return f"{self.node}/{self.name}"

    @cached_property
    def _model(self) -> type[BaseModel] | None:
        return model_from_schema(self.schema, f"{self.name}_inputs")

    def validate(self, inputs: Mapping[str, Any] | BaseModel | None = None) -> dict[str, Any]:
        """Check inputs here, with the node's messages; returns them as JSON-ready data.

        The node's rule for unknown inputs, read from the schema: refused unless the schema
        takes extra properties (`additionalProperties` true, from `extra="allow"`).
        """
        data = _as_data(inputs)
        if self._model is None:
            return data
        accepted = self.schema.get("properties", {}).keys()
        unknown: list[FieldProblem] = []
        if not self.schema.get("additionalProperties", False):
            unknown = unknown_inputs(data, accepted)
        checked = {k: v for k, v in data.items() if k in accepted} if unknown else data
        try:
            self._model.model_validate(checked)
        except ValidationError as exc:
            raise InputsInvalid(unknown + problems_from(exc), flow=self.name) from None
        if unknown:
            raise InputsInvalid(unknown, flow=self.name)
        return data

    async def launch(
        self,
        inputs: Mapping[str, Any] | BaseModel | None = None,
        timeout: float | None = None,
        *,
        parent: str | None = None,
        execution_id: str | None = None,
        files: Mapping[str, Path | str] | None = None,
    ) -> Execution:
        """Start an execution; returns at once with its handle (the node validates again).

        `execution_id` (16 to 64 letters, digits, `_` or `-`; a random one by default) names the
        execution: launching an id again is the same execution, so a launch that got no reply
        is sent again (`LAUNCH_ATTEMPTS` times in all) without any risk of running twice, and
        the id is known before the launch — to follow its events from the very first.

        `files` maps file inputs (fields of type `File`) to local paths: each is uploaded, in
        chunks, to the launcher's bucket before the launch, and the flow gets a local copy.
        """
        from .execution_ref import Execution

        execution = execution_id or secrets.token_hex(16)
        nc = await self._client._bus_for(self.urls)
        data = _as_data(inputs)
        if files:
            js = self._client._jetstream(nc)
            data |= await upload_inputs(js, self._client.user, execution, files)
        data = self.validate(data)
        subject = subjects.launch(self._client.user, self.node, self.name)
        request = LaunchRequest(
            inputs=data,
            timeout=timeout,
            parent=parent,
            execution=execution,
        )
        unanswered_until = time.monotonic() + LAUNCH_RESPONDERS_WITHIN
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            try:
                reply = await self._client._request(subject, request, LaunchReply, nc=nc)
                break
            except NoResponders:
                if time.monotonic() + delay > unanswered_until:
                    raise
                attempt -= 1  # not an unanswered launch: nobody took it
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            except KodoTimeout as exc:
                if attempt == LAUNCH_ATTEMPTS:
                    raise LaunchUnanswered(
                        str(request.execution),
                        f"{exc}, {attempt} times: execution {request.execution} may have "
                        f"started; follow it, or launch again with that execution id",
                    ) from None
        bus = None if nc is self._client.nc else nc  # the node's own bus: the execution is there
        return Execution(
            self._client, reply.execution, reply.launcher, reply.node, reply.flow, nc=bus
        )


async def choose(client: Client, name: str, offers: Sequence[Flow], via: str | None) -> Flow:
    """The flow a launch by `name` goes to, among the `offers` of that name.

    Offline nodes never count: a node that stopped (or died) stays listed until it is forgotten
    or pruned, and a launch sent to it would only wait for a reply that cannot come. One
    online offer is the one; several are ambiguous (the user names one as `node/flow`); none
    is an error naming the offline nodes and when each was last seen, so the user knows
    whether to start one again or `kodo-bus forget` it.
    """
    online = [f for f in offers if f.status == "online"]
    if len(online) == 1:
        return online[0]
    if online:
        names = ", ".join(sorted(f.qualified_name for f in online))
        raise AmbiguousFlow(f"{name!r} is offered by several nodes: {names} — name one")
    seen = await _last_seen(client, via)
    now = time.time()
    listed = "; ".join(
        f"{f.qualified_name} ({_seen(seen.get(f.node, 0.0), now)})"
        for f in sorted(offers, key=lambda f: f.qualified_name)
    )
    raise FlowOffline(
        f"{name!r} is offered only by offline nodes: {listed} — start one of them again, or "
        f"'kodo-bus forget NODE' a node that is gone"
    )


async def _last_seen(client: Client, via: str | None) -> dict[str, float]:
    """Node id → when the registry last heard it; empty when no registry tells (an error
    message is on its way: it is written with what is known)."""
    try:
        nodes = await client.nodes(via)
    except KodoError:
        return {}
    return {n.id: n.last_seen for n in nodes}


def _seen(when: float, now: float) -> str:
    if when <= 0:
        return "never seen by the registry"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
    return f"last seen {stamp}, {_age(now - when)} ago"


def _age(seconds: float) -> str:
    """`42 s`, `7 min`, `3 h`, `2 d`: as precise as a user needs to judge a stale node."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{max(0, int(seconds))} s"


def _as_data(inputs: Mapping[str, Any] | BaseModel | None) -> dict[str, Any]:
    if inputs is None:
        return {}
    if isinstance(inputs, BaseModel):
        return inputs.model_dump(mode="json")
    return dict(inputs)
