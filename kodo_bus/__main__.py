"""`python -m kodo_bus` is `kodo-bus`."""

from .cli import main

main()
