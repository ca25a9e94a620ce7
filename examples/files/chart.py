"""A flow that takes a CSV file and hands back a bar chart (SVG, no plotting library).

    kodo-bus launch chart -f data=examples/files/sales.csv
    kodo-bus files <execution> --out charts/

The CSV's first column is the label, the second the value (a header row is skipped when its
second cell is not a number).
"""

from __future__ import annotations

import csv
from html import escape
from typing import Any

from pydantic import BaseModel, Field

from kodo_bus.flows import flow
from kodo_bus.models import File

WIDTH, BAR, GAP, LABEL = 480, 22, 6, 120


class ChartInputs(BaseModel):
    data: File = Field(description="CSV: label, value")
    title: str = "Chart"


def bars(rows: list[tuple[str, float]], title: str) -> str:
    """An SVG bar chart: one horizontal bar per row, scaled to the largest value."""
    top = max((v for _, v in rows), default=0.0) or 1.0
    height = 40 + len(rows) * (BAR + GAP)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}">',
        f'<text x="8" y="22" font-size="16" font-family="sans-serif">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(rows):
        y = 36 + i * (BAR + GAP)
        length = max(1, int((WIDTH - LABEL - 60) * value / top))
        parts += [
            f'<text x="8" y="{y + 16}" font-size="12" font-family="sans-serif">'
            f"{escape(label)}</text>",
            f'<rect x="{LABEL}" y="{y}" width="{length}" height="{BAR}" fill="#3a7bd5"/>',
            f'<text x="{LABEL + length + 4}" y="{y + 16}" font-size="12" '
            f'font-family="sans-serif">{value:g}</text>',
        ]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def read_rows(inputs: ChartInputs) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    with inputs.data.path.open(newline="") as stream:
        for cells in csv.reader(stream):
            if len(cells) < 2:
                continue
            try:
                rows.append((cells[0], float(cells[1])))
            except ValueError:
                continue  # a header row
    return rows


@flow(summary="CSV in, bar chart (SVG) out", tags=["files", "demo"])
async def chart(inputs: ChartInputs, tracer: Any) -> dict[str, Any]:
    rows = read_rows(inputs)
    await tracer.markdown(f"{len(rows)} rows read from `{inputs.data.filename}`")
    ref = await tracer.file(bars(rows, inputs.title).encode(), name="chart.svg")
    return {"rows": len(rows), "chart": ref.name, "sha256": ref.digest}
