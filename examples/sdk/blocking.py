"""The blocking twin, for scripts and notebooks: the same names without `await`."""

from kodo_bus.sync import Client

with Client() as kb:
    execution = kb.flow("hello").launch({"name": "Grace"})
    for event in execution.events(kinds=["markdown"]):
        print(event.data)
    print(execution.result(timeout=60))
