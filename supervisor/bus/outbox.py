"""One peer's queue of frames waiting to be written: bounded, and honest about drops.

Layer: bus (trio memory channels), used by :mod:`.server` and :mod:`.router`.

Used by :mod:`gastown.supervisor.bus.server`, one per connection, filled by
other peers' reader tasks (which must never block) and drained by the peer's
own writer task.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

import trio

from . import protocol
from .frames import encode_frame

#: About how many bytes :meth:`Outbox.take_batch` hands to one ``send_all``.
BATCH_BYTES: Final = 1 << 16


class Outbox:
    """Frames waiting to be written to one peer: bounded for publications, with drop counting.

    Publications are *offered*: with ``capacity`` frames already waiting, the
    frame is dropped and counted. The count goes out as a ``dropped`` marker
    ahead of the next publication accepted, or on its own as soon as the queue
    drains, so ordering holds: everything before the gap, the marker, then what
    came after. Requests are pushed only after checking :attr:`has_room`.
    Replies are always pushed: they answer the peer's own requests, which the
    server caps per peer, so they stay bounded too.
    """

    def __init__(self, capacity: int, logger: Any) -> None:
        self.capacity = capacity
        self.log = logger
        self._frames: deque[bytes] = deque()
        self._dropped = 0
        self._nonempty = trio.lowlevel.ParkingLot()
        self._drained = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def has_room(self) -> bool:
        return len(self._frames) < self.capacity

    def push(self, frame: bytes) -> None:
        """Queue ``frame`` regardless of capacity (replies and acknowledgements)."""
        self._frames.append(frame)
        self._nonempty.unpark_all()

    def offer_publication(self, frame: bytes) -> bool:
        """Queue ``frame`` if there is room; otherwise count it as dropped. Never blocks."""
        if not self.has_room:
            self._dropped += 1
            if self._dropped == 1:
                self.log.warning("bus.subscriber_lagging", queued=len(self._frames))
            return False
        if self._dropped:
            self._frames.append(self._take_marker())
        self.push(frame)
        return True

    def _take_marker(self) -> bytes:
        count, self._dropped = self._dropped, 0
        self.log.warning("bus.publications_dropped", count=count)
        return encode_frame(protocol.dropped(count))

    async def take_batch(self) -> list[bytes]:
        """Wait for frames, then return those waiting (about 64 KiB at most), oldest first."""
        while not self._frames and not self._dropped:
            await self._nonempty.park()
        if not self._frames:
            return [self._take_marker()]
        batch: list[bytes] = []
        size = 0
        while self._frames and size < BATCH_BYTES:
            frame = self._frames.popleft()
            batch.append(frame)
            size += len(frame)
        self._drained.unpark_all()
        return batch

    async def wait_below(self, limit: int) -> None:
        """Wait until fewer than ``limit`` frames are queued."""
        while len(self._frames) >= limit:
            await self._drained.park()
