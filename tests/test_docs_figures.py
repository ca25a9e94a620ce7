"""One fact in one place (issue 17, finding 10): throughput, latency, CPU and memory figures live
in README.md's "Performance" section only; every other doc links there. A second copy drifts:
deploy/README.md quoted 18,000 to 27,000 events/s and a 15 ms query long after the README's own
bench said 184k/s and 2.9 ms.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from .conftest import REPO

FIGURE = re.compile(
    r"""
      \d[\d,.]*\s*k?\s*(?:[a-z]+)?/s\b       # a rate: 1,377 /s, 27,000 events/s, 184k/s
    | \d[\d,.]*\s*(?:ms|µs)\b                # a latency: 2.9 ms
    | \d[\d,.]*\s*%\s*(?:of\s+a\s+)?core     # a CPU share: 13 % of a core
    | \d[\d,.]*\s*[MG]B\s+RSS                # a memory figure: 99 MB RSS
    | \bper\s+second\b                       # a rate in words: a few hundred per second
    """,
    re.IGNORECASE | re.VERBOSE,
)
"""What a performance figure looks like in prose, tables and pasted bench output alike."""
PERFORMANCE = "[README \u203a Performance](../README.md#performance)"


def docs() -> list[str]:
    """Every tracked markdown file but README.md (and vendored packages)."""
    listed = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return [p for p in listed if p != "README.md" and "node_modules/" not in p]


def figures(text: str) -> list[str]:
    return [
        f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
        for m in FIGURE.finditer(text)
    ]


@pytest.mark.parametrize(
    "quote",
    [
        "One reader is bound by nats-py (≈18,000\u201327,000 events/s in the bench).",
        "Queries scan every flow of the view (p50 15 ms at 20,000 flows in the bench).",
        "beating every 5 s at 13 % of a core, 99 MB RSS (bench)",
        "its launches one at a time (a few hundred per second on 2 cores)",
        "a live reader at 184k/s",
        "1,377 /s (all final)",
    ],
)
def test_the_pattern_sees_a_quoted_figure(quote: str) -> None:
    """The quotes this issue found (and the README's own forms) are figures to the check."""
    assert figures(quote), quote


@pytest.mark.parametrize(
    "prose",
    [
        "restarts a crashed service after 5 s",
        "`TimeoutStopSec=90s` leaves 60 s for that cleanup",
        "duplicate window 120 s (de-duplicates on `Nats-Msg-Id`)",
        "1,000 nodes \u00d7 20 flows beating every 5 s",
        f"how many per-node launches: {PERFORMANCE}",
    ],
)
def test_the_pattern_leaves_durations_and_sizes_alone(prose: str) -> None:
    """Timeouts, retention windows and benchmark sizes are settings, not measurements."""
    assert not figures(prose), prose


def test_the_readme_performance_section_holds_the_figures() -> None:
    """The one place: figures there (so the pattern is not blind), and reachable by its anchor."""
    readme = (REPO / "README.md").read_text()
    section = readme.partition("\n## Performance\n")[2].partition("\n## ")[0]
    assert len(figures(section)) > 20


@pytest.mark.parametrize("doc", docs())
def test_no_other_doc_quotes_a_performance_figure(doc: str) -> None:
    found = figures((REPO / doc).read_text())
    assert not found, (
        f"{doc} quotes performance figures {found}: link to {PERFORMANCE} instead "
        "(the figures live in README.md's Performance section only)"
    )


def test_deploy_readme_links_the_performance_section() -> None:
    """Where deploy/README.md used to quote its own figures, it points at the README's."""
    assert (REPO / "deploy" / "README.md").read_text().count(PERFORMANCE) >= 4
