"""`kodo-bus bench`: the instrument that measures kodo-bus against floors on the same machine.

Every scenario reports absolute figures and, next to each, a floor measured in the same process
and run (a bare Ray task, a bare NATS round trip, bare nats-py publish→subscribe...), so a result
reads as "x times the floor" and survives a change of machine. One module per scenario; `common`
holds percentiles, the result models, the table and the JSON record; `env` starts and stops
everything a scenario needs (by PID, also on failure).
"""

from __future__ import annotations

SCENARIOS: tuple[str, ...] = (
    "launch",
    "throughput",
    "events",
    "registry",
    "memory",
    "federation",
    "slowreader",
)
"""In the order `all` runs them (cheap and Ray-bound first, then the process-bound ones)."""

ON_DEMAND: tuple[str, ...] = ("soak",)
"""Scenarios `all` leaves out: they run for minutes (`kodo-bus bench soak --minutes N`)."""
