"""Follow an execution's events as they happen, then re-attach to it by id."""

import asyncio
import sys

from kodo_bus import Client


async def main(name: str) -> None:
    async with Client() as kb:
        flow = await kb.flow("hello")
        print(f"{flow.qualified_name}: {flow.summary}; inputs: {list(flow.schema['properties'])}")
        execution = await flow.launch({"name": name})
        async for event in execution.events():
            print(f"{event.seq:3} {event.kind:9} {event.data}")
        again = kb.execution(execution.id)  # any process can do this with the id alone
        print("status:", await again.status())
        for record in await kb.executions(flow="hello", limit=3):
            print("recent:", record.execution[:8], record.status)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "Ada"))
