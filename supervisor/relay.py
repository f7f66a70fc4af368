"""The feed relay: the single writer of ``events.jsonl`` and the bus's publisher of events.

Layer: supervisor (reads the store's outbox, writes :class:`~.feed.EventLog`, publishes on
the running :class:`~.bus.server.BusServer`). A store transaction that wrote events
wakes it by itself after its commit (a datagram on ``.runtime/wake``, see
:mod:`gastown.roles.adapters.outbox_wake`; a ``pub`` on topic ``outbox`` or an ``outbox``
request to ``bus`` still pokes it too); it then copies the new outbox rows to the file
and publishes each on the bus under its kind. A slow timer catches a wake lost to a
process that died between its commit and its datagram.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from ..roles.adapters import log
from ..roles.adapters.async_store import AsyncStore
from ..roles.adapters.outbox_wake import WakeSocket
from ..roles.core.errors import StoreError
from ..roles.core.events import DomainEvent
from .feed import EventLog

if TYPE_CHECKING:
    from .bus.server import BusServer

#: The outbox is drained on every poke; this slow timer only catches a poke lost to a
#: process that died between its commit and its poke.
OUTBOX_SAFETY_INTERVAL: Final = 30.0

#: Kinds of event after which the supervisor starts or stops a rig's roles.
RIG_EVENTS: Final = frozenset({"rig_added", "rig_removed"})


class OutboxRelay:
    """Copies new outbox rows to ``events.jsonl`` and the bus, on every poke."""

    def __init__(self, store: AsyncStore, events: EventLog) -> None:
        self.store = store
        self.events = events
        #: Set once the bus is up; events drained before that go to the file only.
        self.bus: BusServer | None = None
        self._poked = trio.Event()
        self._log = log.get_logger()

    def poke(self) -> None:
        """The store has new events: drain them soon."""
        self._poked.set()

    async def emit(self, event: DomainEvent) -> None:
        """Record the supervisor's own ``event`` in the store, then drain it."""
        with trio.CancelScope(shield=True):
            try:
                await self.store.call(self.store.store.emit, event)
            except StoreError as exc:
                self._log.error("store_unwritable", event_kind=event.kind, error=exc.message)
                return
        self.poke()

    async def listen_for_wakes(self, path: Path, *,
                               task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                               ) -> None:
        """Poke on every wake datagram a committing store sends to ``path``, forever.

        Without the socket (a path the system refuses) the town still works: the bus
        pokes and the safety timer drain the outbox, later.
        """
        try:
            wake = WakeSocket(path)
        except OSError as exc:
            self._log.warning("wake_socket_unavailable", path=str(path), error=str(exc))
            task_status.started()
            return
        try:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(wake.sock)
                if wake.drain():
                    self.poke()
        finally:
            wake.close()

    async def run(self, after: Callable[[bool], Awaitable[None]]) -> None:
        """Drain on every poke (and every :data:`OUTBOX_SAFETY_INTERVAL`), forever;
        ``after(rigs_changed)`` runs after each drain."""
        while True:
            await after(await self.drain_once())
            with trio.move_on_after(OUTBOX_SAFETY_INTERVAL):
                await self._poked.wait()
            self._poked = trio.Event()

    async def drain_once(self) -> bool:
        """Copy new outbox rows to ``events.jsonl`` and publish each under its kind.

        Returns whether a rig was added or removed among them.
        """
        rigs_changed = False
        while True:
            batch = await self.store.call(self.store.store.events_after, self.events.last_seq)
            if not batch:
                return rigs_changed
            payloads = [e.as_json() for e in batch]
            self.events.append(payloads)
            for event in payloads:
                if self.bus is not None:
                    self.bus.publish(event["kind"], event)
                rigs_changed |= event["kind"] in RIG_EVENTS
