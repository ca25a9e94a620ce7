"""`kodo-bus dashboard`: a live, full-screen view of a federation, fed by NATS pushes.

`state` holds what the pushes taught (no NATS in it, so it is tested with plain data), `view`
turns a state into a rich renderable (pure, so it is tested on a recorded console), `feeds`
subscribes and fills the state, `live` runs the screen loop and the keys.
"""

from .state import DashboardState
from .view import render

__all__ = ["DashboardState", "render"]
