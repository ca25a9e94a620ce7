"""Typed errors: bad inputs are caught before launching, failures come back with their type."""

import asyncio

from kodo_bus import Client, InputsInvalid


async def main() -> None:
    async with Client() as kb:
        flow = await kb.flow("hello")
        try:
            flow.validate({"name": "x" * 500})
        except InputsInvalid as exc:
            for problem in exc.problems:
                print(f"{problem.field}: {problem.message}")


if __name__ == "__main__":
    asyncio.run(main())
