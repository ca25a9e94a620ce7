"""Flows the file tests launch on a real node: files in, files out."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel

from kodo_bus.flows import flow
from kodo_bus.models import File

CHUNK = 1 << 20


class OneFile(BaseModel):
    data: File
    hand_back: bool = True


@flow(summary="Hashes its input file in chunks and hands back a copy of it")
async def echo_file(inputs: OneFile, tracer: Any) -> dict[str, Any]:
    sha = hashlib.sha256()
    size = 0
    with inputs.data.open() as stream:
        while chunk := stream.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    if inputs.hand_back:
        await tracer.file(inputs.data.path, name="copy.bin")
    return {
        "size": size,
        "sha256": sha.hexdigest(),
        "path": str(inputs.data.path),
        "peak_kb": peak_kb(),
    }


def peak_kb() -> int:
    """This process's peak resident memory so far (VmHWM), in kB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Nothing(BaseModel):
    text: str = "hello"


@flow(summary="Hands back two small files, one of them twice")
async def make_files(inputs: Nothing, tracer: Any) -> str:
    await tracer.file(b"first version", name="a.txt")
    await tracer.file(inputs.text.encode(), name="a.txt")
    await tracer.file(b"bee", name="b.txt")
    return "made"


@flow(summary="A sync flow that hands back a file")
def make_file_sync(inputs: Nothing, tracer: Any) -> str:
    tracer.file_sync(inputs.text.encode(), name="sync.txt")
    return "made"
