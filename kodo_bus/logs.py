"""Logging set-up for kodo-bus processes: rich on a terminal, plain lines in files."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_OURS = "_kodo_handler"


def setup(level: str = "INFO", file: Path | None = None, file_level: str = "DEBUG") -> None:
    """Configure the root logger once per process (idempotent: replaces our handlers)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OURS, False):
            root.removeHandler(handler)
    screen: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        screen = RichHandler(show_path=False, rich_tracebacks=False)
        screen.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        screen = logging.StreamHandler(sys.stderr)
        screen.setFormatter(logging.Formatter(_FORMAT))
    screen.setLevel(level.upper())
    setattr(screen, _OURS, True)
    root.addHandler(screen)
    levels = [screen.level]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(file)
        to_file.setFormatter(logging.Formatter(_FORMAT))
        to_file.setLevel(file_level.upper())
        setattr(to_file, _OURS, True)
        root.addHandler(to_file)
        levels.append(to_file.level)
    root.setLevel(min(levels))
    # nats-py logs every reconnect attempt at ERROR; our own callbacks report those once.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
