"""Five lines: find a flow, launch it, print its result (needs `kodo-bus up` running)."""

import asyncio

from kodo_bus import Client


async def main() -> None:
    async with Client() as kb:
        execution = await (await kb.flow("hello")).launch({"name": "Ada"})
        print(await execution.result(timeout=60))


if __name__ == "__main__":
    asyncio.run(main())
