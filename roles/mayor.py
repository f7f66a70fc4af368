"""The mayor: dispatches slings into polecats, in order, as capacity allows.

Layer: a role loop, at the top of ``roles``; run by :mod:`~gastown.roles.role_process`.

Slings are recorded in the store by whoever asks (``gastown sling``, even while the
town is down); the mayor turns queued slings into polecats: it reserves each (a name, a
``spawning`` row: :func:`~gastown.roles.operations.polecats.reserve_spawn`) in queue order,
then builds several at once (worktree, branch, session:
:func:`~gastown.roles.operations.polecats.build_spawn`). A sling that finds no
free slot stays queued and is retried when a slot frees: the mayor wakes on the domain
events that free one (a polecat done, escalated or nuked), never on a timer.

The queue's order is :func:`~gastown.roles.core.dispatch.plan`'s (the store's
``dispatch_plan``): ready slings by their bead's priority raised by age, then FIFO; a
sling whose bead needs beads not closed yet waits, and the mayor wakes when a bead closes
(merged or by hand) or a need is removed.

At start it first repairs spawns that a crash interrupted
(:func:`~gastown.roles.operations.polecats.recover_spawning`), then dispatches what was queued
while the town was down.

It also tends the rigs' warm worktree pools
(:func:`~gastown.roles.operations.worktree_pool.tend`: leftovers removed, trees moved to
the default branch's tip, the pool filled) in the background, off the slings' path: at
start, after merges and nukes, and once no build is running after slings took trees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypedDict

import trio

from ..supervisor.bus.client import BusClient
from ..supervisor.bus.protocol import BusMessage
from ..supervisor.bus.requests import Reply, Request
from ..supervisor.bus.requests import Sling as SlingRequest
from .adapters import log
from .adapters.async_store import AsyncStore
from .adapters.store import Polecat, Sling
from .adapters.town import Town
from .core.errors import GastownError
from .operations.polecats import build_spawn, recover_spawning, reserve_spawn
from .operations.worktree_pool import tend
from .role_context import RoleContext

#: Domain events after which a queued sling may find a slot (or a new sling exists).
WAKE_TOPICS: Final = ("sling_queued", "polecat_done", "polecat_escalated", "polecat_nuked",
                      "polecat_rejected", "rig_added", "bead_need_added", "bead_need_removed")

#: Domain events that wake the dispatch only with these fields, and only while a queued
#: sling waits for its needs: a bead closed (one of them may be met now).
WAKE_WHEN: Final = {"bead_status_changed": ("new", "closed")}

#: Domain events after which a rig's warm worktree pool may need tending: the default
#: branch moved (its trees follow), a nuke recycled or dropped a tree, a rig appeared.
POOL_TOPICS: Final = ("mr_merged", "polecat_nuked", "rig_added")

#: A sling's outcome as ``sling`` answers it: ``state`` (queued, dispatched, failed) and
#: its details (``error``; ``rig``, ``polecat``, ``worktree``, ``branch``; ``position``).
SlingResult = dict[str, object]

#: How many reserved polecats get their worktree and session made at once (one rig's
#: worktrees are still added one at a time, under its repository lock).
SPAWN_CONCURRENCY: Final = 4


class MayorStatus(TypedDict):
    """The mayor's fields in its role's ``status`` answer."""

    dispatched: int
    waiting_requests: int


class Mayor:
    def __init__(self, ctx: RoleContext) -> None:
        self.ctx = ctx
        self.town = ctx.town
        self._store: AsyncStore | None = None
        self._wakeup = trio.Event()
        self._pool_wakeup = trio.Event()
        self._waiters: dict[int, trio.Event] = {}
        self._results: dict[int, SlingResult] = {}
        self._log = log.get_logger()
        self.dispatched = 0
        #: The last pass left slings waiting for their needs (a bead closing may free one).
        self._needs_pending = True
        #: Slings reserved whose worktree and session are being made (they answer later).
        self._building: set[int] = set()
        self._spawn_limit = trio.CapacityLimiter(SPAWN_CONCURRENCY)
        self._nursery: trio.Nursery | None = None

    @property
    def store(self) -> AsyncStore:
        assert self._store is not None, "the mayor's store opens when it runs"
        return self._store

    async def run(self, client: BusClient) -> None:
        self._store = await AsyncStore.open(self.town.db_path)
        try:
            for line in await self.store.operate(recover_spawning, self.town):
                self._log.warning("spawn_recovered", detail=line)
            events = await client.subscribe(*dict.fromkeys(WAKE_TOPICS + POOL_TOPICS
                                                           + tuple(WAKE_WHEN)))
            self._wakeup.set()  # dispatch whatever was queued while the town was down
            self._pool_wakeup.set()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._wake_on_events, events)
                nursery.start_soon(self._tend_pools_forever)
                await self._dispatch_forever(client)
        finally:
            self.store.close()

    async def _wake_on_events(self, events: trio.MemoryReceiveChannel[BusMessage]) -> None:
        async for message in events:  # every topic is in one list or more
            if message.topic in WAKE_TOPICS:
                self._wakeup.set()
            if message.topic in WAKE_WHEN and self._needs_pending:
                key, value = WAKE_WHEN[message.topic]
                if message.data.get(key) == value:
                    self._wakeup.set()
            if message.topic in POOL_TOPICS:
                self._pool_wakeup.set()

    async def _tend_pools_forever(self) -> None:
        """Tend the pools after each wake-up, in a worker thread, never during builds."""
        while True:
            await self._pool_wakeup.wait()
            self._pool_wakeup = trio.Event()
            if self._building:
                continue  # the last build to end wakes this again
            for rig in await self.store.call(self.store.store.rigs):
                try:
                    # Abandoned when the mayor stops: a pool setup may run for minutes, and
                    # the mayor leaves as if killed (the busy tree's lock frees; the next
                    # tend stops that setup and removes the tree), not at stop_timeout.
                    done = await trio.to_thread.run_sync(tend, self.town, rig.name,
                                                         abandon_on_cancel=True)
                except GastownError as exc:
                    self._log.warning("pool_not_tended", rig=rig.name, error=exc.message)
                    continue
                except Exception:  # a bug or an OS error: the pool waits, the mayor lives
                    self._log.exception("pool_not_tended", rig=rig.name)
                    continue
                if done:
                    self._log.info("pool_tended", rig=rig.name, done=done)

    async def _dispatch_forever(self, client: BusClient) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self._dispatch_queued(client)

    async def _dispatch_queued(self, client: BusClient) -> None:
        """One pass over the queue in dispatch order (priority raised by age, then
        FIFO: :func:`~gastown.roles.core.dispatch.plan`); a full rig does not block other
        rigs; a sling whose bead's needs are not all closed waits (answered ``queued``
        with why).

        Reservations (a name, a ``spawning`` row) are made here, one after the other in
        queue order, so the caps and the order hold; the slow rest of each spawn (worktree,
        session) runs in the background, up to :data:`SPAWN_CONCURRENCY` at once, and
        answers its sling when it is done.
        """
        self._needs_pending = True  # a bead closing while the plan is read wakes a pass
        planned = await self.store.call(self.store.store.dispatch_plan)
        self._needs_pending = bool(planned.waiting)
        waiting = 0
        full: set[str] = set()  # rigs found without a free slot in this pass
        town_full = False
        for sling in planned.ready:
            reserved: Polecat | SlingResult | None = None
            if sling.rig not in full and not town_full:
                # A rig without a free slot gets no second attempt in this pass: a pass
                # costs one reservation per free slot plus one per rig, not one per
                # queued sling (each reads the config and the branches). A full town
                # ends the attempts: a slot freed during the pass must go to the first
                # sling in order at the next pass, not to a later one of another rig
                # (seen: a priority-2 bead dispatched before a priority-1 one).
                scope: list[str] = []
                with log.bound(bead=sling.bead, rig=sling.rig):
                    reserved = await self._attempt(sling, reserve_spawn, self.town, sling,
                                                   scope)
                if reserved is None:
                    full.add(sling.rig)
                    town_full = "town" in scope
            if isinstance(reserved, Polecat):
                self._building.add(sling.id)
                assert self._nursery is not None
                self._nursery.start_soon(self._build, sling, reserved)
                continue
            result: SlingResult = reserved or {"state": "queued"}
            if result["state"] == "queued":
                waiting += 1
                result["position"] = waiting
            self._answer(sling.id, result)
        for sling, why in planned.waiting:
            waiting += 1
            self._answer(sling.id, {"state": "queued", "position": waiting,
                                    "waiting": why.reason, "blocked": why.blocked})
        for sling_id in list(self._waiters):
            if sling_id in self._building:
                continue  # its build answers it
            settled = await self._settled(sling_id)
            if settled is None:
                self._wakeup.set()  # queued after this pass read the queue: one more pass
            else:
                self._answer(sling_id, settled)

    async def _build(self, sling: Sling, reserved: Polecat) -> None:
        """Worktree and session of a reserved polecat; then its sling is answered."""
        try:
            async with self._spawn_limit:
                with log.bound(bead=sling.bead, rig=sling.rig):
                    built = await self._attempt(sling, build_spawn, self.town, sling,
                                                reserved)
            if isinstance(built, Polecat):
                self.dispatched += 1
                self._log.info("polecat_slung", polecat=built.name, worktree=built.worktree,
                               bead=sling.bead, rig=sling.rig)
                result: SlingResult = {"state": "dispatched", "rig": built.rig,
                                       "polecat": built.name, "worktree": built.worktree,
                                       "branch": built.branch}
            else:
                result = built or {"state": "failed", "error": "no polecat"}
        finally:
            self._building.discard(sling.id)
            if not self._building:
                self._pool_wakeup.set()  # refill what the builds took
        self._answer(sling.id, result)
        self._wakeup.set()  # a failed build freed its slot

    async def _settled(self, sling_id: int) -> SlingResult | None:
        """The outcome of a sling this pass did not see, or None while it is queued."""
        store = self.store.store
        sling = await self.store.call(store.sling, sling_id)
        if sling.state == "failed":
            return {"state": "failed", "error": sling.error or "failed"}
        if sling.state == "queued":
            return None
        try:
            polecat = await self.store.call(store.polecat, sling.rig, sling.polecat or "")
        except GastownError:
            return {"state": "dispatched", "rig": sling.rig, "polecat": sling.polecat}
        return {"state": "dispatched", "rig": polecat.rig, "polecat": polecat.name,
                "worktree": polecat.worktree, "branch": polecat.branch}

    async def _attempt(self, sling: Sling, step: Callable[..., Polecat | None], town: Town,
                       *args: object) -> Polecat | SlingResult | None:
        """One spawn step as an operation: its polecat, None (no free slot), or the
        sling's failure (recorded: a sling that failed leaves the queue)."""
        try:
            return await self.store.operate(step, town, *args)
        except GastownError as exc:
            self._log.warning("sling_failed", sling=sling.id, error=exc.message)
            await self._fail_if_queued(sling, exc.message)
            return {"state": "failed", "error": exc.message}
        except Exception as exc:  # a bug or an OS error: the sling fails, the mayor lives
            self._log.exception("sling_failed", sling=sling.id)
            error = f"{type(exc).__name__}: {exc}"
            await self._fail_if_queued(sling, error)
            return {"state": "failed", "error": error}

    async def _fail_if_queued(self, sling: Sling, error: str) -> None:
        """A sling reported as failed leaves the queue (spawn_polecat usually did that)."""
        try:
            current = await self.store.call(self.store.store.sling, sling.id)
            if current.state == "queued":
                await self.store.call(self.store.store.fail_sling, sling.id, error)
        except GastownError as exc:
            self._log.warning("sling_not_marked_failed", sling=sling.id, error=exc.message)

    def _answer(self, sling_id: int, result: SlingResult) -> None:
        waiter = self._waiters.pop(sling_id, None)
        if waiter is not None:
            self._results[sling_id] = result
            waiter.set()

    async def handle(self, request: Request, sender: str) -> Reply:
        if isinstance(request, SlingRequest):
            event = self._waiters.setdefault(request.sling, trio.Event())
            self._wakeup.set()
            await event.wait()
            return self._results.pop(request.sling)
        if request.method == "dispatch":
            self._wakeup.set()
            return {"ok": True}
        raise LookupError(request.method)

    def status(self) -> MayorStatus:
        return {"dispatched": self.dispatched, "waiting_requests": len(self._waiters)}
