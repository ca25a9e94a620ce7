"""Processes kodo-bus starts, found and stopped by their PID — never by name.

Why this exists: a terminal's Ctrl-C reaches a whole process group, so a supervisor (`kodo-bus
up`) starts each child in its own session and stops them itself, in order; and a node that
started its own Ray must take Ray's processes down with it — its `DashboardAgent` and
`RuntimeEnvAgent` outlive a node killed by SIGKILL (reparented to init, they run on for good).
So such a node records the PIDs of its Ray in a small file (`RayRecord`), and the next start on
this machine kills what a dead owner left (`clean_left`). A PID is trusted only with the
creation time it had when recorded: a PID reused by another program is never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import psutil

log = logging.getLogger("kodo_bus.procs")

RECORDS = Path(tempfile.gettempdir()) / f"kodo-bus-{os.getuid()}" / "ray"
"""Where nodes that run their own Ray record its PIDs (one file per node process, per user)."""
_SAME_START = 0.5
"""Seconds two creation times of one PID may differ and still be the same process."""


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie holds its PID but nothing else)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tree(pid: int) -> list[psutil.Process]:
    """`pid` and every process below it, parents first ([] when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def kill(procs: Iterable[psutil.Process]) -> int:
    """SIGKILL each process still alive (psutil refuses a PID reused since); how many."""
    killed = 0
    for proc in procs:
        if _alive(proc):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
    return killed


def kill_trees(pids: Iterable[int]) -> int:
    """SIGKILL each PID's whole tree (children looked up first: they outlive their parent)."""
    return kill([p for pid in pids for p in tree(pid)])


def spawn(argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
    """Start a child in its own session (a terminal's Ctrl-C does not reach it: its parent
    stops it) with no stdin (a process outside the terminal's group must not read it)."""
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        list(argv), stdin=subprocess.DEVNULL, start_new_session=True, **kw
    )


def stop_in_order(
    children: Sequence[subprocess.Popen[bytes]],
    timeout: Sequence[float],
    force: threading.Event,
) -> None:
    """SIGTERM each child in turn, the next once the previous has exited (nodes before the
    registry, which hears their bye); one that outlives its `timeout` is killed with its tree.
    Whatever a child left behind (its own children, Ray's included) is killed once it exited.
    `force` (a second Ctrl-C) ends the wait at once: the signal handler has killed them all."""
    for child, limit in zip(children, timeout, strict=True):
        family = tree(child.pid)[1:]
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + limit
        while child.poll() is None and not force.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(0.05)
        if child.poll() is None:
            if not force.is_set():
                log.warning("pid %d did not stop within %.0f s: killed", child.pid, limit)
            kill_trees([child.pid])
            child.wait()
        if kill(family):
            log.debug("killed what pid %d left", child.pid)
        if force.is_set():
            return


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same(pid: int, created: float) -> psutil.Process | None:
    """The process `pid` if it is still the one created at `created` (and alive)."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - created) < _SAME_START and _alive(proc):
            return proc
    except psutil.Error:
        pass
    return None


class RayRecord:
    """The PID file of one process's own Ray: written when Ray starts (and as it grows), used
    to kill what is left at stop, removed once everything is gone."""

    def __init__(self, directory: Path | None = None, owner: int | None = None) -> None:
        self.directory = directory or RECORDS
        self.owner = owner or os.getpid()
        self.path = self.directory / f"{self.owner}.json"
        self._known: dict[int, float] = {}
        self._lock = threading.Lock()
        """The pool records Ray's processes from several threads at once (`asyncio.to_thread`,
        one per actor it starts): one write at a time, or the second `replace` finds the
        temporary file gone."""
        self.created: float | None = None
        """When the owner started (a PID reused by another program is not the owner)."""

    @classmethod
    def read(cls, path: Path) -> RayRecord:
        """The record in `path` (empty when missing or unreadable: nothing to kill)."""
        try:
            data = json.loads(path.read_text())
            record = cls(path.parent, int(data["owner"][0]))
            record.created = None if data["owner"][1] is None else float(data["owner"][1])
            record._known = {int(pid): float(t) for pid, t in data["processes"]}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            record = cls(path.parent, int(path.stem) if path.stem.isdigit() else None)
        return record

    def add(self, procs: Iterable[psutil.Process]) -> None:
        """Record these processes too (the file is replaced whole: never half-written)."""
        found = {}
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                found[proc.pid] = proc.create_time()
        with self._lock:
            self._known.update(found)
            self.created = self.created or _start_time(self.owner)
            data = {"owner": [self.owner, self.created], "processes": sorted(self._known.items())}
            self.directory.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".tmp")
            partial.write_text(json.dumps(data))
            partial.replace(self.path)

    def processes(self) -> list[psutil.Process]:
        """The recorded processes still alive, with whatever runs below them now."""
        with self._lock:
            known = list(self._known.items())
        found = [p for pid, t in known if (p := _same(pid, t)) is not None]
        below = [c for p in found for c in tree(p.pid)[1:]]
        return found + below

    def kill(self) -> int:
        """Kill what is left of the recorded processes and forget the file; how many."""
        killed = kill(self.processes())
        self.forget()
        return killed

    def forget(self) -> None:
        with self._lock:
            self._known.clear()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def clean_left(directory: Path | None = None) -> int:
    """Kill the Ray processes recorded by owners that are gone (SIGKILLed nodes), by PID;
    how many were killed. An owner still alive keeps its record (replicas on one machine)."""
    directory = directory or RECORDS
    killed = 0
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        record = RayRecord.read(path)
        if record.created is not None and _same(record.owner, record.created) is not None:
            continue
        count = record.kill()
        if count:
            log.info("killed %d Ray processes left by process %d, gone", count, record.owner)
        killed += count
    return killed
