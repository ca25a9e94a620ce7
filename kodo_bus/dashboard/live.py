"""The screen loop: redraw on a refresh tick from the pushed state; quit on `q` or Ctrl-C.

Keys are read with the event loop's `add_reader` on a stdin put in cbreak mode (restored on
exit), so no thread blocks on input and Ctrl-C still raises SIGINT, which only sets the stop
event: the loop then closes the Live screen and the NATS connection in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator

from rich.console import Console
from rich.live import Live

from ..client import Client
from .feeds import Feeds
from .state import DashboardState
from .view import render

QUIT_KEYS = frozenset("qQ")


@contextlib.contextmanager
def _keys(stop: asyncio.Event) -> Iterator[None]:
    """Set `stop` when `q` is typed on the terminal (nothing when stdin is not a terminal)."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def on_key() -> None:
        data = os.read(fd, 64).decode(errors="ignore")
        if not data or set(data) & QUIT_KEYS:
            stop.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_dashboard(
    client: Client,
    via: str | None,
    refresh: float,
    monitor: str | None,
    console: Console | None = None,
    *,
    guessed: bool = False,
) -> None:
    """Show the dashboard until `q` or Ctrl-C (`guessed`: `monitor` is a guess, see `Feeds`)."""
    console = console or Console()
    state = DashboardState()
    every = max(1.0, refresh)
    feeds = Feeds(client, state, via=via, monitor=monitor, monitor_every=every, guessed=guessed)
    await feeds.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        with (
            _keys(stop),
            Live(console=console, screen=True, auto_refresh=False, transient=True) as live,
        ):
            while not stop.is_set():
                size = console.size
                live.update(render(state, size.width, size.height, time.time()), refresh=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), refresh)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await feeds.stop()
