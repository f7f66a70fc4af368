"""The witness's nukes of merged polecats: in parallel, one task per polecat, and one
search for surviving processes per batch instead of one per nuke.

Layer: operations, for the witness (a role loop); trio, over the
:class:`~gastown.roles.adapters.async_store.AsyncStore`'s worker threads.

A merged polecat is asked to be nuked twice as a rule: by the refinery's ``mr_merged``
notice and by the witness's settle pass that the same commit wakes. :meth:`MergedNukes.nuke`
runs one nuke per polecat at a time and drops a request for a polecat whose nuke is
already in flight (else the second would wait for the first, then read the nuked row
and run git on a worktree that is gone, holding one of the ``concurrency`` slots).

Each nuke stops the session through its record (:func:`.polecat_sessions.stop_polecat_session`
with ``strays=False``: pidfds, no ``/proc/*/environ``). What can outlive that is a process
that called ``setsid`` and is no longer the agent's descendant; :meth:`MergedNukes.sweep`
looks for those by identity once per batch (:data:`SWEEP_DELAY` after the first nuke of
the batch), for every polecat the batch nuked.
"""

from __future__ import annotations

from typing import Final, Literal

import trio

from ..adapters import log
from ..adapters.async_store import AsyncStore, OperationLocks
from ..adapters.store import Polecat
from ..adapters.town import Town
from ..core.errors import GastownError
from .nuking import nuke_merged
from .polecat_sessions import stop_ended_strays

#: How long the sweep waits after a nuke for more nukes of the same batch.
SWEEP_DELAY: Final = 1.0

NOT_LANDED: Final = "its merge request has not landed"


class MergedNukes:
    """The witness's merged-polecat nukes for one rig."""

    def __init__(self, town: Town, rig: str, store: AsyncStore, locks: OperationLocks,
                 concurrency: int) -> None:
        self.town = town
        self.rig = rig
        self.store = store
        self.locks = locks
        self._limit = trio.CapacityLimiter(concurrency)
        self._in_flight: set[str] = set()
        self._ended: list[Polecat] = []
        self._ended_added = trio.Event()
        self._log = log.get_logger()
        #: Requests dropped because that polecat's nuke was in flight.
        self.duplicates = 0

    async def nuke(self, name: str) -> Literal["nuked", "kept"] | None:
        """Nuke merged polecat ``name`` unless its nuke is in flight: ``"nuked"``, or
        ``"kept"`` (unlanded work; the reason is noted on it), or None (nothing done:
        a duplicate request, its MR not landed, the polecat gone or changed)."""
        if name in self._in_flight:
            self.duplicates += 1
            return None
        self._in_flight.add(name)
        try:
            async with self._limit, self.locks.hold(name):
                polecat = await self.store.call(self.store.store.polecat, self.rig, name)
                kept = await self.store.operate(nuke_merged, self.town, self.rig, name)
        except GastownError as exc:
            self._log.info("nuke_skipped", reason=exc.message)
            return None
        finally:
            self._in_flight.discard(name)
        if kept == NOT_LANDED:
            return None
        if kept:
            self._log.warning("nuke_refused", reason=kept)
            return "kept"
        self._log.info("polecat_nuked_after_merge")
        self._ended.append(polecat)
        self._ended_added.set()
        return "nuked"

    async def sweep(self) -> None:
        """Forever: after each batch of nukes, one search for what outlived them."""
        while True:
            await self._ended_added.wait()
            await trio.sleep(SWEEP_DELAY)
            self._ended_added = trio.Event()
            ended, self._ended = self._ended, []
            try:
                stopped = await self.store.operate(stop_ended_strays, self.town, ended)
            except GastownError as exc:
                self._log.info("stray_sweep_failed", error=exc.message)
                continue
            if stopped:
                self._log.warning("strays_stopped", pids=stopped,
                                  polecats=sorted({p.name for p in ended}))
