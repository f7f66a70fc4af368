"""Fixtures for integration tests that watch real child processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio


class Fifo:
    """A named pipe the test reads lines from; children open it by path and write to it.

    Opened read-write so that it always has a writer: a child's write never blocks, and
    reads wait for data rather than returning EOF before a child has opened it.
    """

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self._stream = trio.lowlevel.FdStream(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        self._buffer = b""

    async def receive_line(self) -> str:
        while b"\n" not in self._buffer:
            self._buffer += await self._stream.receive_some()
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    async def aclose(self) -> None:
        await self._stream.aclose()


@pytest.fixture
async def fifo(tmp_path: Path) -> AsyncIterator[Fifo]:
    """A fresh named pipe for children to report on."""
    channel = Fifo(tmp_path / "report.fifo")
    try:
        yield channel
    finally:
        await channel.aclose()
