"""Everything a benchmark run needs, started once and stopped by PID — also when a scenario fails.

`BenchEnv` owns: an embedded nats-server on free loopback ports with a temporary store (unless
`--nats URL` names a bus), one local Ray (`ray.init(num_cpus=...)`, shut down only if this run
started it), an in-process hybrid service serving the benchmark flows (a node and a registry in
one, so the SDK finds the flows at once), SDK clients, and `python -m kodo_bus run` subprocesses
for the process-bound figures (registry CPU/memory, idle node memory). Readiness of a subprocess
is a push — the registry's `kodo.sync` or the node's first catalog — never a polling loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil
import yaml
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import BaseModel, Field

from .. import subjects
from ..bus import connect, jetstream
from ..client import Client
from ..config import ConnectSettings, FlowDecl, ServerSettings, ServiceSettings
from ..errors import FlowNotFound, KodoError
from ..flow_ref import Flow
from ..flows import load_flows
from ..server import NatsServer
from ..service import KodoService
from .flows import FLOW_MODULE


class BenchError(KodoError):
    """A benchmark could not run (a process did not start, an execution failed...)."""


class BenchSettings(BaseModel):
    """How `kodo-bus bench` runs (every scenario reads the parts it needs)."""

    nats: str | None = None
    """URL of an existing bus; None starts an embedded nats-server."""
    ray_cpus: int = Field(default=2, ge=1)
    max_running: int = Field(default=32, ge=1)
    """Executions the benchmark node runs at once (the rest queue, FIFO)."""
    actors: int | None = Field(default=None, ge=1)
    """Ray actors of the benchmark node. Default: ray_cpus."""
    quick: bool = False
    """Tiny sizes everywhere (the smoke tests): checks that it works, not how fast."""
    start_timeout: float = Field(default=60.0, gt=0)


class BenchEnv:
    """Shared by every scenario of one run; an async context manager."""

    def __init__(self, settings: BenchSettings | None = None) -> None:
        self.settings = settings or BenchSettings()
        self.run_id = secrets.token_hex(3)
        self._tmp = Path(tempfile.mkdtemp(prefix="kodo-bench-"))
        self._server: NatsServer | None = None
        self._ray_started = False
        self._service: KodoService | None = None
        self._clients: list[Client] = []
        self._connections: list[NATS] = []
        self._procs: list[Process] = []
        self._buckets: set[str] = set()
        """View buckets of the registries this run started (deleted on a bus we were given)."""
        self.url = self.settings.nats or ""
        self._signals = False
        self._interrupted = False
        self.nats_label = f"bus at {self.settings.nats}" if self.settings.nats else ""

    # -- life cycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._watch_signals()
        try:
            if not self.settings.nats:
                config = ServerSettings(port=0, http_port=0, store=self._tmp / "nats")
                server = NatsServer(config)
                self._server = server
                await asyncio.to_thread(server.start)
                self.url = server.url
                self.nats_label = f"embedded nats-server {server.version}"
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _watch_signals(self) -> None:
        """SIGTERM and SIGINT cancel the run, so `close` stops every child by PID.

        Called again after `ray.init`: Ray's core worker installs a SIGTERM handler that ends the
        process at once (which would orphan the nats-server and the `kodo_bus run` children).
        """
        task = asyncio.current_task()
        if task is None:
            return
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if not self._interrupted:  # a second signal must not cancel the clean-up itself
                self._interrupted = True
                task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, on_signal)
        self._signals = True

    def _unwatch_signals(self) -> None:
        if self._signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
            self._signals = False

    async def close(self) -> None:
        """Stop everything this run started, newest first; each step runs even if one fails."""
        for proc in reversed(self._procs):
            await stop_process(proc)
        self._procs.clear()
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()
        if self._service is not None:
            service, self._service = self._service, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(service.stop(), 30)
        if self.settings.nats and self._buckets and self._connections:
            await self._forget_views(self._connections[0])
        for nc in self._connections:
            with contextlib.suppress(Exception):
                await nc.close()
        self._connections.clear()
        if self._ray_started:
            import ray

            self._ray_started = False
            await asyncio.to_thread(ray.shutdown)
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.stop)
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._unwatch_signals()

    async def _forget_views(self, nc: NATS) -> None:
        """On a bus we were given, leave no view bucket of a benchmark registry behind (clients
        list registries by their buckets). Events and records age out with the stream."""
        js = jetstream(nc)
        for bucket in sorted(self._buckets):
            with contextlib.suppress(Exception):
                await js.delete_key_value(bucket)
        self._buckets.clear()

    # -- parts, started on first use ---------------------------------------------------------
    async def ray(self) -> None:
        """Start the local Ray once (a no-op when this process already has one)."""
        import ray

        if ray.is_initialized():
            return
        from ..pool import LOCAL_RAY_CONFIG

        # A node's own Ray as `kodo-bus run` starts it (its workers at the node's niceness).
        await asyncio.to_thread(
            ray.init,
            num_cpus=self.settings.ray_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _system_config=LOCAL_RAY_CONFIG,
        )
        self._ray_started = True
        self._watch_signals()

    @property
    def service_pids(self) -> set[int]:
        """The `kodo_bus run` children of this run (not part of the in-process node)."""
        return {proc.pid for proc in self._procs}

    @property
    def server_pid(self) -> int | None:
        """The embedded nats-server's process id (None on a bus given with --nats)."""
        return self._server.pid if self._server is not None else None

    @property
    def monitor_url(self) -> str | None:
        """The embedded nats-server's monitoring base URL (`/varz`, `/jsz`...); None on a bus
        given with --nats (its monitoring is not this run's to find)."""
        return self._server.monitor_url if self._server is not None else None

    @property
    def service_id(self) -> str:
        return f"bench-{self.run_id}"

    async def service(self) -> KodoService:
        """The in-process hybrid (node + registry) serving the benchmark flows."""
        if self._service is None:
            await self.ray()
            s = self.settings
            settings = ServiceSettings(
                id=self.service_id,
                role="hybrid",
                nats=[self.url],
                max_running=s.max_running,
                actors=s.actors or s.ray_cpus,
                grace=5,
                log_level="WARNING",
            )
            self._buckets.add(subjects.bucket_view(self.service_id))
            service = KodoService(settings, load_flows([FlowDecl(module=FLOW_MODULE)]))
            await service.start()
            self._service = service
        return self._service

    async def stop_service(self) -> None:
        """Stop the in-process service (so it does not compete with a measured subprocess)."""
        if self._service is not None:
            service, self._service = self._service, None
            await asyncio.wait_for(service.stop(), 30)

    async def client(self, timeout: float = 60.0) -> Client:
        """An SDK client on the bench bus (closed at the end of the run)."""
        kb = Client(self.url, timeout=timeout)
        await kb.connect()
        self._clients.append(kb)
        return kb

    async def nats(self) -> NATS:
        """A bare nats-py connection (floors, simulated nodes), closed at the end of the run."""
        nc = await connect(ConnectSettings(nats=[self.url], name="kodo-bench"))
        self._connections.append(nc)
        return nc

    # -- subprocesses ------------------------------------------------------------------------
    def write_config(self, name: str, data: dict[str, Any]) -> Path:
        path = self._tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    async def run_service(self, service_id: str, role: str, *args: str) -> Process:
        """`python -m kodo_bus run` as a child; returns once it announced itself on the bus.

        A registry is ready when it sends `kodo.sync` (its subscriptions are in place by then);
        a node when its first catalog arrives.
        """
        nc = await self.nats()
        if role != "node":
            self._buckets.add(subjects.bucket_view(service_id))
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        subject = subjects.SYNC if role != "node" else subjects.node_catalog(service_id)

        async def on_msg(msg: Msg) -> None:
            if not ready.done():
                ready.set_result(None)

        sub = await nc.subscribe(subject, cb=on_msg)
        await nc.flush()
        cmd = [sys.executable, "-m", "kodo_bus", "run", "--id", service_id, "--role", role]
        cmd += ["--nats", self.url, "--log-level", "WARNING", *args]
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
            cwd=self._tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._procs.append(proc)
        exited: asyncio.Future[Any] = asyncio.ensure_future(proc.wait())
        try:
            done, _ = await asyncio.wait(
                [ready, exited],
                timeout=self.settings.start_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            await sub.unsubscribe()
        if ready not in done:
            await self.stop(proc)
            raise BenchError(f"{role} {service_id} did not start (exit code {proc.returncode})")
        exited.cancel()
        return proc

    @contextlib.asynccontextmanager
    async def own_node(self, kb: Client, flow: str) -> AsyncIterator[tuple[Flow, Process]]:
        """A node serving the benchmark flows in a `kodo-bus run` process of its own (its
        actors on this run's Ray), as a deployment has it, and its `flow` once listed; the
        node is stopped by PID on the way out. The in-process service shares one event loop
        between the SDK and the node: it saves a NATS hop's worth of work but makes them
        compete for one core."""
        import ray

        await self.ray()
        node_id = f"bench-sep-{self.run_id}"
        config = self.write_config(
            node_id,
            {
                "flows": [{"module": FLOW_MODULE}],
                "max_running": self.settings.max_running,
                "actors": self.settings.actors or self.settings.ray_cpus,
            },
        )
        gcs = ray.get_runtime_context().gcs_address
        node = await self.run_service(
            node_id, "node", "--config", str(config), "--ray-address", gcs
        )
        try:
            yield await _listed(kb, f"{node_id}/{flow}", self.service_id), node
        finally:
            await self.stop(node)

    async def stop(self, proc: Process) -> None:
        """Stop one child (SIGTERM, then SIGKILL) and its children, by PID."""
        await stop_process(proc)
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)


async def _listed(kb: Client, name: str, via: str, within: float = 30.0) -> Flow:
    """The flow once the registry lists it (its node announced it a moment ago)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            return await kb.flow(name, via=via)
        except FlowNotFound:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def stop_process(proc: Process, timeout: float = 15.0) -> None:
    """SIGTERM `proc`, wait, SIGKILL if needed; children it left behind are killed by PID."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
