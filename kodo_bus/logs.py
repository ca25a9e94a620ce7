"""Logging set-up for kodo-bus processes: rich on a terminal, plain lines in files."""

from __future__ import annotations

import importlib.util
import logging
import pkgutil
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_OURS = "_kodo_handler"
_RAY_NOTICES = (
    ("ray._private.authentication.authentication_token_setup", "_warn_token_auth_enabled", ""),
    ("ray._private.worker", "init", "SIGTERM handler is not set"),
)
"""Ray warnings that are no news in a kodo-bus process, as (logger, function, message start):
a node's own Ray uses the machine's auth token as it should ("Token authentication is enabled
for this Ray cluster…"), and a node starts Ray from a worker thread precisely so that Ray does not
take SIGTERM from it ("SIGTERM handler is not set because current thread is not the main
thread."). Ray gives these records no code, hence the message start; if a Ray upgrade rewords
one, it shows again and tests/test_ray_quiet.py says so."""


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
    screen.addFilter(_quiet_ray)
    setattr(screen, _OURS, True)
    handlers: list[logging.Handler] = [screen]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(file)
        to_file.setFormatter(logging.Formatter(_FORMAT))
        to_file.setLevel(file_level.upper())
        setattr(to_file, _OURS, True)
        handlers.append(to_file)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(min(h.level for h in handlers))
    # nats-py logs every reconnect attempt at ERROR; our own callbacks report those once.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    _route_ray(handlers)


def _quiet_ray(record: logging.LogRecord) -> bool:
    """On the screen, Ray says what is wrong (WARNING and above, but for its `_RAY_NOTICES`);
    its INFO lines ("Started a local Ray instance.") go to the log file only."""
    if not record.name.startswith("ray."):
        return True
    if record.levelno < logging.WARNING:
        return False
    message = str(record.msg)
    return not any(
        record.name == name and record.funcName == func and message.startswith(start)
        for name, func, start in _RAY_NOTICES
    )


def _route_ray(handlers: list[logging.Handler]) -> None:
    """Ray's records through our handlers (its INFO into the log file, the screen filtered by
    `_quiet_ray`), set up before Ray is imported and whatever `ray.init` does afterwards.

    Ray gives its "ray" logger a stderr handler of its own and cuts it off from the root logger
    when imported, and `ray.init` resets that logger's level: so every Ray module logs past our
    handlers. Ray never configures the loggers one level below ("ray._private", "ray.util", …):
    each gets our handlers and stops there, without importing Ray (its package is only listed).
    """
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return  # Ray is not installed: nothing of it will log
    for module in pkgutil.iter_modules(spec.submodule_search_locations):
        logger = logging.getLogger(f"ray.{module.name}")
        for handler in list(logger.handlers):
            if getattr(handler, _OURS, False):
                logger.removeHandler(handler)
        for handler in handlers:
            logger.addHandler(handler)
        logger.propagate = False
