"""Driver side of the Ray actors: starts Ray when first needed, hands jobs over through NATS.

Why not a Ray call per execution: on a 2-core machine a Ray actor call costs about 1.5 ms of
CPU (driver and actor together) — more than everything else a no-op execution costs, and it
capped throughput near 200 executions/s. So Ray only hosts the actors; jobs go to an actor as
`JobBatch`es on its own subject and outcomes come back as `OutcomeBatch`es, both acknowledged
and re-sent until they are (`bus.deliver`). One batch per actor is on its way at a time: jobs
that become ready meanwhile go together in the next one, so batches grow with the load (under
load, one job per message made the hand-over cost as much as the rest of an execution) while
a single launch is not delayed. Batches are JSON: pydantic reads and writes it in one pass,
about twice as fast as msgpack for a batch of jobs.

One Ray call per actor stays outstanding (`serve`): it raises when the actor dies, and then
every execution the actor held ends `WorkerDied` and a replacement actor is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from . import subjects
from .bus import deliver, respond
from .codec import JSON, decode_msg
from .config import ACK_WAIT, RESEND_WITHIN, ConnectSettings
from .errors import WireError
from .executor import ExecActor, Job, JobBatch, Outcome, OutcomeBatch
from .models import Ack, ExecutionRecord
from .procs import RayRecord, clean_left, tree
from .tasks import TaskSet

log = logging.getLogger("kodo_bus.pool")

ACTOR_CONCURRENCY = 4
"""Ray calls an actor serves at once: start, serve, stop (executions and cancels are not Ray
calls: they arrive over NATS and run as tasks in the actor's event loop)."""


LOCAL_RAY_CONFIG: dict[str, Any] = {"prestart_worker_first_driver": False, "worker_niceness": 0}
"""Ray system config of a node's own Ray (never a cluster's: `ray.init` refuses it there).

`worker_niceness`: Ray starts its workers at nice 15 so that its own processes stay responsive
beside them; here the workers are the node's actors, the half of every execution that the
node's process hands over to, and at nice 15 they ran only when the node, the nats-server and
everything else on the machine had no use for a core. With other work on two cores (issue 18,
load 9-15) no-op executions went from 300-400/s to 700-1,000/s at nice 0, the node's own
niceness; bare Ray tasks, measured in the same Ray, moved little (1,430 -> 1,480/s).

Ray starts one idle worker per CPU as soon as a driver connects, so that tasks find one ready;
a node runs its flows on its few long-lived actors instead, so those workers sat idle (~46 MB
PSS each) until the actors took them — and one stayed idle for good when there are more CPUs
than actors. Without them the first actor starts its own worker, at the first launch, which
starts Ray anyway. Flows that start Ray tasks still get workers, started on demand.
"""


def _trim_local_ray() -> None:
    """Stop the three processes of a node's own Ray that nothing of kodo-bus uses (~200 MB PSS
    of the ~550 MB an idle local Ray takes on this machine, issue 18).

    `ray.init` always starts them on a head node and has no switch to leave them out: the
    autoscaler's monitor (no autoscaling on one machine; only `ray status` reads it), the log
    monitor (it forwards Ray workers' stdout to the driver's terminal, `log_to_driver`; a flow's
    output reaches its execution's events through the tracer, and a Ray task's stays in Ray's
    session logs), and the dashboard's API server (`include_dashboard=False` already leaves it
    nothing but usage statistics; the job and state APIs are not used). `ray start` leaves the
    first two out with `--no-monitor --include-log-monitor=false`; here Ray's own `Node.kill_*`
    stops each and forgets it, so `ray.shutdown` and its liveness checks are unaffected. GCS,
    raylet and the raylet's two agents stay: the raylet cannot run without its agents. A Ray
    cluster (`ray_address`) is never touched. Any failure here leaves Ray whole (logged).
    """
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    for name in ("kill_monitor", "kill_log_monitor", "kill_dashboard"):
        try:
            getattr(node, name)(check_alive=False)
        except Exception as exc:  # another Ray version: costs memory, never the node
            log.debug("local Ray: %s failed: %r", name, exc)


ENDED_KEPT = 4096
"""Ended executions remembered per actor (`ENDED_WITHIN`); bounded, so a flood of short ones
costs memory in proportion to this, not to the flood."""
ENDED_WITHIN = ACK_WAIT + RESEND_WITHIN
"""Seconds after an actor reported an execution ended during which its terminal status may
still be on its way: a worker reports its ending once the status is handed to its publisher,
which re-sends it through an outage for this long. An actor that dies meanwhile takes the
status with it, and nobody else would store it (the runner ends from outside only what a dead
actor had not reported ended): so the runner repairs those (`Runner._repair_endings`)."""


class WorkerDied(Exception):
    """The Ray actor running an execution died (the flow called os._exit, OOM, crash...)."""


class JobTooLarge(Exception):
    """A job's inputs are too large to hand to a Ray worker in one NATS message."""


class _Worker:
    """One actor, the executions it holds and the jobs about to be sent to it."""

    def __init__(self, handle: Any, subject: str) -> None:
        self.handle = handle
        self.subject = subject
        self.waiting: dict[str, asyncio.Future[Outcome]] = {}
        self.outbox: list[Job] = []
        self.cancels: list[str] = []
        self.sending = False
        """The sender runs: it takes the outbox at its next step (one batch on its way at a
        time; the next one waits for its acknowledgement)."""
        self.ended: deque[tuple[float, ExecutionRecord]] = deque(maxlen=ENDED_KEPT)
        """The records of the executions it reported ended, with when (see `ENDED_KEPT`)."""
        self.watch: asyncio.Task[Any] | None = None
        self.sender: asyncio.Task[Any] | None = None
        """The sender: cancelled when the actor dies (no one would ever ack its batch)."""
        self.alive = True


class ActorPool:
    """Keeps `size` actors of one node and spreads executions over them (least busy first)."""

    def __init__(
        self,
        nc: NATS,
        node: str,
        connect_settings: ConnectSettings,
        ray_address: str | None,
        size: int | None,
        *,
        on_death: Callable[[list[ExecutionRecord]], None] | None = None,
    ) -> None:
        self._nc = nc
        self._on_death = on_death
        """Told the executions a dead actor reported ended within `ENDED_WITHIN` (a repair)."""
        self._node = node
        self._pool = secrets.token_hex(4)
        """Tells this process's actors from other replicas' of the same node id."""
        self._connect = connect_settings
        self._ray_address = ray_address
        self._size = size
        self._workers: list[_Worker] = []
        self._where: dict[str, _Worker] = {}
        self._numbered = 0
        self._started = False
        self._lock = asyncio.Lock()
        self._outcomes: Subscription | None = None
        self._tasks = TaskSet(log)
        """Deliveries of job batches, and one watch per actor."""
        self.cpus: int | None = None
        self._own_ray = False
        """This pool started a local Ray (so it shuts it down: its agents outlive the node)."""
        self._ray_record: RayRecord | None = None
        """The PIDs of that Ray, in a file, so a stop (or the next start, after a SIGKILL)
        kills what `ray.shutdown` leaves."""

    async def start(self, max_running: int | None) -> int:
        """Start Ray (if needed) and the actors; the number of executions to run at once."""
        async with self._lock:
            if not self._started:
                await asyncio.to_thread(self._init_ray)
                if self._outcomes is None:
                    self._outcomes = await self._nc.subscribe(
                        subjects.work_outcomes(self._node, self._pool), cb=self._on_outcomes
                    )
                running = max_running or self.cpus or 1
                size = self._size or max(1, min(running, 4))
                self._workers = list(
                    await asyncio.gather(*(self._new_worker() for _ in range(size)))
                )
                self._started = True
            return max_running or self.cpus or 1

    def _init_ray(self) -> None:
        # Ray's driver otherwise installs a C-level SIGTERM handler that dumps a stack and kills
        # the node at once: no grace period, executions cut off mid-write. Read when `ray` is
        # first imported, hence set before the import.
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        import ray

        if not ray.is_initialized():
            if self._ray_address:
                ray.init(address=self._ray_address, include_dashboard=False)
            else:
                # A Ray of our own serves this process only: every part of it (GCS, raylet and
                # object manager, dashboard and runtime-env agents, workers) listens on loopback
                # when, and only when, its node address is 127.0.0.1. Ray 2.60 swaps 127.0.0.1
                # for the machine's own address (so that other machines could join) unless its
                # multi-machine switch is off. That switch (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER)
                # is read once, when `ray` is first imported, which has happened by now (a flow
                # module may import it, and the variable alone was seen not to work), and looked
                # up on `ray_constants` at each call: so it is turned off there, for `init` only.
                # Token authentication is untouched (on, as `ray.init` sets it up). "local": a
                # Ray of our own, never one found through RAY_ADDRESS or a `ray start` of this
                # machine (that is what `ray_address` is for).
                from ray._private import ray_constants

                clean_left()  # a node SIGKILLed earlier left its Ray's agents running
                clusters = ray_constants.ENABLE_RAY_CLUSTER
                ray_constants.ENABLE_RAY_CLUSTER = False
                try:
                    ray.init(
                        address="local",
                        include_dashboard=False,
                        _node_ip_address="127.0.0.1",
                        _system_config=LOCAL_RAY_CONFIG,
                    )
                finally:
                    ray_constants.ENABLE_RAY_CLUSTER = clusters
                _trim_local_ray()
                self._own_ray = True
                self._ray_record = RayRecord()
                self._record_ray()
                log.info("started a local Ray for this node (loopback only)")
        self.cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
        # Importing Ray leaves a heap of objects that live as long as the process; every full
        # garbage collection would walk them all again.
        gc.freeze()

    async def _new_worker(self) -> _Worker:
        import ray

        self._numbered += 1
        subject = subjects.work_jobs(self._node, self._pool, self._numbered)
        cls = ray.remote(ExecActor)
        handle = cls.options(num_cpus=0, max_concurrency=ACTOR_CONCURRENCY, max_restarts=0).remote(
            self._connect.model_dump(mode="json"),
            list(sys.path),
            subject,
            subjects.work_outcomes(self._node, self._pool),
        )
        await handle.start.remote()  # type: ignore[attr-defined]
        if self._ray_record is not None:  # the actor's worker process is Ray's newest one
            await asyncio.to_thread(self._record_ray)
        worker = _Worker(handle, subject)
        worker.watch = self._tasks.spawn(self._watch(worker), "kodo-actor-watch")
        return worker

    async def run(self, job: Job, *, cancel: bool = False) -> Outcome:
        """Run one job on the least busy actor; its outcome (`WorkerDied` if the actor died).

        `cancel`: it was cancelled while being handed over; the actor cancels it on arrival.
        """
        if not self._workers:  # every actor died and none could be started since
            await self._replace(None)
        if not self._workers:
            raise WorkerDied("no Ray actor is running and none could be started")
        worker = min(self._workers, key=lambda w: len(w.waiting))
        execution = job.record.execution
        outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        worker.waiting[execution] = outcome
        self._where[execution] = worker
        worker.outbox.append(job)
        if cancel:
            worker.cancels.append(execution)
        self._flush_soon(worker)
        try:
            result = await outcome
        finally:
            worker.waiting.pop(execution, None)
            self._where.pop(execution, None)
        if result.ended:
            worker.ended.append((asyncio.get_running_loop().time(), job.record))
        return result

    def _flush_soon(self, worker: _Worker) -> None:
        """Start the sender unless it runs: its first step comes after this loop iteration,
        so the jobs that become ready in this one go together (a `call_soon` before the task,
        as before, cost a loop iteration more on every launch's way to its actor)."""
        if not worker.sending and worker.alive:
            worker.sending = True
            worker.sender = self._tasks.spawn(self._send_next(worker), "kodo-actor-jobs")

    async def _send_next(self, worker: _Worker) -> None:
        """Deliver the outbox as batches, one at a time, until it stays empty."""
        try:
            while worker.alive and (worker.outbox or worker.cancels):
                jobs, worker.outbox = worker.outbox, []
                cancels, worker.cancels = worker.cancels, []
                await self._send(worker, jobs, cancels)
        finally:
            worker.sending = False

    async def _send(self, worker: _Worker, jobs: list[Job], cancels: list[str]) -> None:
        """Deliver `jobs` (then `cancels`), halving a batch too large for one message; a job
        alone too large ends as an error (its launch request fit: inputs near `max_payload`)."""
        try:
            batch = JobBatch(jobs=jobs, cancel=cancels)
            await deliver(self._nc, worker.subject, batch, content_type=JSON)
        except nats.errors.MaxPayloadError:
            if len(jobs) > 1:
                half = len(jobs) // 2
                await self._send(worker, jobs[:half], [])
                await self._send(worker, jobs[half:], cancels)
                return
            waiting = worker.waiting.get(jobs[0].record.execution)
            if waiting is not None and not waiting.done():
                waiting.set_exception(JobTooLarge("the job does not fit in one NATS message"))

    async def _on_outcomes(self, msg: Msg) -> None:
        try:
            batch = decode_msg(msg, OutcomeBatch)
        except WireError as exc:
            log.error("dropping an outcome batch: %s", exc)
            return
        await respond(msg, Ack())
        for execution, outcome in batch.outcomes.items():
            worker = self._where.get(execution)
            waiting = worker.waiting.get(execution) if worker is not None else None
            if waiting is not None and not waiting.done():
                waiting.set_result(outcome)

    async def _watch(self, worker: _Worker) -> None:
        """Wait on the actor's `serve` call: it returns at stop and raises if the actor dies."""
        try:
            await worker.handle.serve.remote()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # RayActorError, mostly: the actor is gone
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        worker.alive = False
        if worker.sender is not None:
            worker.sender.cancel()
        for future in worker.waiting.values():
            if not future.done():
                future.set_exception(WorkerDied(reason))
        since = asyncio.get_running_loop().time() - ENDED_WITHIN
        recent = [record for when, record in worker.ended if when >= since]
        if recent and self._on_death is not None:
            self._on_death(recent)
        await self._replace(worker)

    def cancel(self, execution: str) -> None:
        """Ask the actor holding `execution` to cancel it (after the job, if both are queued)."""
        worker = self._where.get(execution)
        if worker is not None:
            worker.cancels.append(execution)
            self._flush_soon(worker)

    async def _replace(self, dead: _Worker | None) -> None:
        """Start an actor in place of `dead` (None: one more, the pool being empty)."""
        async with self._lock:
            if dead is None:
                if self._workers or not self._started:
                    return
            elif dead not in self._workers:
                return  # stopping
            else:
                self._workers.remove(dead)
            try:
                self._workers.append(await self._new_worker())
            except Exception:
                log.exception("cannot start a replacement Ray actor")

    async def stop(self) -> None:
        async with self._lock:
            workers, self._workers = self._workers, []
            self._started = False
        # all at once: each may wait out its timeout, and a stop has seconds, not minutes
        await asyncio.gather(*(self._stop_worker(worker) for worker in workers))
        await self._tasks.close()
        if self._outcomes is not None:
            await self._outcomes.unsubscribe()
            self._outcomes = None
        if self._own_ray:
            self._own_ray = False
            await asyncio.to_thread(self._shutdown_ray)

    async def _stop_worker(self, worker: _Worker) -> None:
        import ray

        worker.alive = False
        try:
            await asyncio.wait_for(worker.handle.stop.remote(), 5)
        except Exception as exc:
            log.debug("a Ray actor did not stop cleanly: %r", exc)
        if worker.watch is not None:
            worker.watch.cancel()
            await asyncio.wait({worker.watch})
        ray.kill(worker.handle)

    def _record_ray(self) -> None:
        """Record the processes of our own Ray: those its session lists (GCS, raylet, monitors)
        and every process they started (agents, workers) — found by PID, never by name."""
        import ray

        node = getattr(ray._private.worker, "_global_node", None)
        if self._ray_record is None or node is None:
            return
        roots = [p.process.pid for infos in node.all_processes.values() for p in infos]
        self._ray_record.add(p for pid in roots for p in tree(pid))

    def _shutdown_ray(self) -> None:
        """`ray.shutdown`, then kill by PID whatever of our Ray outlived it."""
        import ray

        with contextlib.suppress(Exception):  # a last look (replacement workers, late agents)
            self._record_ray()
        record, self._ray_record = self._ray_record, None
        ray.shutdown()
        if record is not None and (left := record.kill()):
            log.debug("killed %d Ray processes that outlived ray.shutdown", left)
