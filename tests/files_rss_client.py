"""Run by tests/test_files.py in a process of its own: a launch with a big input file and the
download of its copy, printing how much the peak resident memory grew meanwhile (kB)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from kodo_bus.client import Client
from tests.flowpkg.file_flows import peak_kb


async def main(url: str, source: Path, out: Path) -> None:
    async with Client(url) as kb:
        flow = await kb.flow("echo_file")
        before = peak_kb()
        execution = await flow.launch(files={"data": source})
        result = await execution.result(timeout=600)
        (path,) = await execution.download(out)
        grown = peak_kb() - before
    print(json.dumps({"client_grown_kb": grown, "result": result, "path": str(path)}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])))
