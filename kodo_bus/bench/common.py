"""Shared pieces of the benchmarks: percentiles, result models, the rich table, the JSON record.

A figure is a number with a unit, the floor it is compared with (measured in the same run) and
an optional target. Ratios are always `value / floor`: above 1 for a latency that is slower than
the floor, below 1 for a rate that is lower than the floor. Keeping the figures as pydantic
models makes `--json` one validated record that scripts (and later runs) can compare.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Literal

import psutil
from pydantic import BaseModel, Field
from rich.table import Table

from ..version import __version__

Better = Literal["lower", "higher"]
TIMES = "\u00d7"
"""The multiplication sign of ratios, as in 2.40 times the floor."""


def percentile(values: Sequence[float], p: float) -> float:
    """The `p`-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return ordered[lo]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Floor(BaseModel):
    """What a figure is compared with: a bare measurement of the layer underneath."""

    name: str
    value: float
    unit: str


class Figure(BaseModel):
    """One measured number, with its floor and its target."""

    name: str
    value: float
    unit: str
    better: Better = "lower"
    floor: Floor | None = None
    target: float | None = None

    @property
    def ratio(self) -> float | None:
        """value / floor (same unit only), None without a usable floor."""
        if self.floor is None or self.floor.unit != self.unit or not self.floor.value:
            return None
        return self.value / self.floor.value

    @property
    def met(self) -> bool | None:
        if self.target is None or math.isnan(self.value):
            return None
        return self.value <= self.target if self.better == "lower" else self.value >= self.target


class FigureRecord(Figure):
    """A figure as written to JSON, with the derived ratio and verdict spelled out."""

    ratio_to_floor: float | None = None
    target_met: bool | None = None

    @classmethod
    def of(cls, figure: Figure) -> FigureRecord:
        return cls(**figure.model_dump(), ratio_to_floor=figure.ratio, target_met=figure.met)


class ScenarioResult(BaseModel):
    """What one scenario measured."""

    scenario: str
    params: dict[str, float | int | str | bool] = Field(default_factory=dict)
    figures: list[Figure] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    samples: list[dict[str, float]] = Field(default_factory=list)
    """Figures over time (a soak samples the server every few seconds), one dict per sample
    with the same keys; empty for a scenario measured once."""

    def add(
        self,
        name: str,
        value: float,
        unit: str,
        *,
        better: Better = "lower",
        floor: Floor | None = None,
        target: float | None = None,
    ) -> Figure:
        figure = Figure(
            name=name, value=value, unit=unit, better=better, floor=floor, target=target
        )
        self.figures.append(figure)
        return figure


class Machine(BaseModel):
    """Where the run happened (figures mean little without it)."""

    host: str
    platform: str
    python: str
    cpus: int
    memory_gb: float
    load_before: tuple[float, float, float]

    @classmethod
    def here(cls) -> Machine:
        return cls(
            host=socket.gethostname(),
            platform=platform.platform(),
            python=sys.version.split()[0],
            cpus=os.cpu_count() or 1,
            memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
            load_before=os.getloadavg(),
        )


class ScenarioRecord(BaseModel):
    """A scenario in the JSON record."""

    scenario: str
    params: dict[str, float | int | str | bool]
    figures: list[FigureRecord]
    notes: list[str]
    seconds: float
    samples: list[dict[str, float]] = Field(default_factory=list)


class BenchRecord(BaseModel):
    """The one machine-readable record `kodo-bus bench --json` prints."""

    kodo_bus: str = __version__
    date: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    machine: Machine = Field(default_factory=Machine.here)
    nats: str = ""
    """'embedded nats-server <version>' or the URL given with --nats."""
    scenarios: list[ScenarioRecord] = Field(default_factory=list)
    seconds: float = 0.0

    def add(self, result: ScenarioResult) -> None:
        self.scenarios.append(
            ScenarioRecord(
                scenario=result.scenario,
                params=result.params,
                figures=[FigureRecord.of(f) for f in result.figures],
                notes=result.notes,
                seconds=result.seconds,
                samples=result.samples,
            )
        )


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process so far."""
    times = proc.cpu_times()
    return float(times.user + times.system)


class Stopwatch:
    """Monotonic seconds since creation (perf_counter: the finest clock there is)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


# -- presentation ---------------------------------------------------------------------------------
def fmt(value: float, unit: str) -> str:
    """A number as a person reads it: 3 significant figures, thousands separated."""
    if math.isnan(value):
        return "—"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}"


def _verdict(figure: Figure) -> str:
    op = "≤" if figure.better == "lower" else "≥"
    if figure.target is None:
        return ""
    mark = "[green]✓[/]" if figure.met else "[red]✗[/]"
    return f"{mark} {op} {fmt(figure.target, figure.unit)}"


def table(results: Iterable[ScenarioResult], title: str = "kodo-bus bench") -> Table:
    """One rich table for any number of scenarios."""
    t = Table(title=title, show_lines=False, header_style="bold")
    t.add_column("scenario")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_column("floor", justify="right")
    t.add_column("÷ floor", justify="right")
    t.add_column("target")
    for result in results:
        first = True
        for f in result.figures:
            floor = (
                f"{fmt(f.floor.value, f.floor.unit)} [dim]({f.floor.name})[/]" if f.floor else ""
            )
            ratio = f"{f.ratio:.2f}{TIMES}" if f.ratio is not None else ""
            t.add_row(
                result.scenario if first else "",
                f.name,
                fmt(f.value, f.unit),
                floor,
                ratio,
                _verdict(f),
            )
            first = False
        for note in result.notes:
            t.add_row("", f"[dim]{note}[/]", "", "", "", "")
        t.add_section()
    return t


def markdown_table(record: BenchRecord) -> str:
    """The same figures as a Markdown table (for the README's Performance section)."""
    lines = [
        "| scenario | figure | value | floor | ÷ floor | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for s in record.scenarios:
        for f in s.figures:
            floor = f"{fmt(f.floor.value, f.floor.unit)} ({f.floor.name})" if f.floor else ""
            ratio = f"{f.ratio_to_floor:.2f}{TIMES}" if f.ratio_to_floor is not None else ""
            target = ""
            if f.target is not None:
                op = "≤" if f.better == "lower" else "≥"
                target = f"{'✓' if f.target_met else '✗'} {op} {fmt(f.target, f.unit)}"
            lines.append(
                f"| {s.scenario} | {f.name} | {fmt(f.value, f.unit)} | {floor} | {ratio} "
                f"| {target} |"
            )
    notes = [f"- {s.scenario}: {note}" for s in record.scenarios for note in s.notes]
    return "\n".join(lines + (["", *notes] if notes else []))
