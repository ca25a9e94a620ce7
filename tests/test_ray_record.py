"""`procs.RayRecord`: a node's PID record of its own Ray, written from several threads at once.

The pool starts its actors together, and each records Ray's newest processes from a thread of
its own (`asyncio.to_thread`). Two writers of one record used one temporary file: the second
`replace` found it gone, and the node failed to start Ray (`RayUnavailable` in CI).
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil

from kodo_bus.procs import RayRecord


def test_a_record_written_from_many_threads_at_once_stays_whole(tmp_path: Path) -> None:
    record = RayRecord(tmp_path, owner=psutil.Process().pid)
    me = psutil.Process()
    start = threading.Barrier(8)
    failures: list[BaseException] = []

    def write() -> None:
        start.wait()
        for _ in range(200):
            try:
                record.add([me])
            except BaseException as exc:  # what a writer would raise into the pool's start
                failures.append(exc)
                return

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures[:3]
    read = RayRecord.read(record.path)
    assert read.owner == me.pid and [p.pid for p in read.processes()][:1] == [me.pid]
    assert list(tmp_path.iterdir()) == [record.path]  # no temporary file left behind
