"""`View.expire` reads only the processes and nodes silent past the ttl (the order they were
last heard in), not every entry: whatever happens to the view, it must judge exactly as the
plain look at every entry does (`View._expire_all`, also what a time going back falls to)."""

from __future__ import annotations

import random

import pytest

from kodo_bus.models import Catalog, Heartbeat
from kodo_bus.view import Expired, View

TTL = 15.0


def judged(view: View, out: Expired) -> tuple[object, ...]:
    """What a tick decided and what it left in the view (suspicion numbers aside: the two
    reads number them in their own order)."""
    return (
        sorted(out.died),
        sorted(set(out.changed)),
        sorted((node, instance) for node, instance, _ in out.silent),
        sorted((node, e.status, e.replicas) for node, e in view.entries.items()),
        sorted(
            (node, instance, bool(rep.suspect))
            for node, known in view.replicas.items()
            for instance, rep in known.items()
        ),
    )


@pytest.mark.parametrize("seed", range(12))
def test_expire_reads_the_silent_only_and_judges_as_reading_all(seed: int) -> None:
    rng = random.Random(seed)
    fast, plain = View("me"), View("me")
    nodes = [f"n{i}" for i in range(8)]
    instances = ["a", "b", "c"]
    suspicions: dict[int, dict[tuple[str, str], int]] = {id(fast): {}, id(plain): {}}
    now = 1000.0
    ticks = 0
    for _ in range(400):
        node, instance = rng.choice(nodes), rng.choice(instances)
        action = rng.random()
        which = rng.choice([instance, None])
        for view in (fast, plain):
            if action < 0.2:
                view.put_catalog(Catalog(node=node, revision=1, instance=instance), now)
            elif (
                action < 0.6
                and node in view.entries
                and not view.needs_catalog(Heartbeat(node=node, revision=1))
            ):
                view.beat(Heartbeat(node=node, revision=1, instance=instance), now)
            elif action < 0.65:
                view.stopped(node, which)
            elif action < 0.68:
                view.remove(node)
            elif action < 0.75:
                number = suspicions[id(view)].get((node, instance))
                if number is not None:
                    view.forget(node, instance, number)
            elif action < 0.77:
                view.refresh(now)
        if action >= 0.77:
            now += rng.uniform(0, TTL / 2)
            plain._ordered = False  # the plain view reads every entry
            outs = [fast.expire(now, TTL), plain.expire(now, TTL)]
            for view, out in zip((fast, plain), outs, strict=True):
                for n, i, number in out.silent:
                    suspicions[id(view)][(n, i)] = number
            assert judged(fast, outs[0]) == judged(plain, outs[1]), (seed, now)
            ticks += 1
    assert ticks > 50


def test_expire_after_time_went_back_reads_everything() -> None:
    """A clock set back: the orders are not sorted any more, and nothing silent is missed."""
    view = View("me")
    view.put_catalog(Catalog(node="late", revision=1, instance="x"), 2000.0)
    view.put_catalog(Catalog(node="early", revision=1, instance="y"), 1000.0)  # time went back
    assert not view._ordered
    out = view.expire(2000.0, TTL)
    assert out.died == ["early"]
    assert [(n, i) for n, i, _ in out.silent] == [("early", "y")]
    assert view._ordered  # put right by the full read
    out = view.expire(2000.0 + TTL + 1, TTL)
    assert out.died == ["late"]


def test_a_quiet_tick_reads_nothing_beyond_the_first_live_process() -> None:
    view = View("me")
    for i in range(1000):
        view.put_catalog(Catalog(node=f"n{i}", revision=1, instance="p"), 1000.0 + i)
    reads = 0
    entries_get = view.entries.get

    class Counting(dict[str, object]):
        def get(self, key: str, default: object = None) -> object:
            nonlocal reads
            reads += 1
            return entries_get(key, default)

    view.entries = Counting(view.entries)  # type: ignore[assignment]
    out = view.expire(1000.0 + 10 + TTL + 0.5, TTL)  # n0..n10 silent past the ttl
    assert sorted(out.died) == sorted(f"n{i}" for i in range(11))
    assert reads <= 2 * 11
