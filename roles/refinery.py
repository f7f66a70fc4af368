"""The refinery: the rig's merge queue, in ``<rig>/refinery/rig``.

Its one job: the loop. It takes the rig's merge requests in queue order (priority, then
age), a batch at a time, woken by events (``mr_created``, ``mr_requeued``,
``mq_resume_requested``), never by a timer; marks the batch ``running``; has it merged
(:func:`~gastown.roles.operations.merging.run_plan`: stack, gate, land or reject); and
reports. A remote that moved meanwhile is fetched and rebased on, never overwritten
(bounded by ``push_retries``); an unreachable remote puts the batch back in the queue
and is retried after a back-off. The batch size is ``batch_size``, or learnt
(:class:`~gastown.roles.core.merge_queue.AutoBatch`) when it is ``"auto"``; with
``speculative = true`` the next batch is taken (marked ``running``) with the current one
and gated on top of it meanwhile (:mod:`~gastown.roles.operations.speculation`).
With batches of one, the MRs ready together are taken as a chain: each gated on its own
on top of the one before, all pushed at once (``land_within`` bounds how much later the
first lands; :func:`~gastown.roles.core.merge_queue.chain_limit`).

Layer: a role loop, at the top of ``roles``; run by :mod:`~gastown.roles.role_process`.

The default branch only ever moves forward, in the clone and on the remote; nothing
resets it (:mod:`~gastown.roles.operations.landing`). Work that landed in the clone but
that the remote refused (a working copy with the branch checked out, a dirty tree
under ``updateInstead``, a hook) stays on the local branch, is recorded in the rig's row
(``landed_head``, ``remote_head``, ``push_error``, shown by ``gastown status``) and is
pushed again after every later batch, at start and on ``gastown mq resume``. If the
remote's branch diverged from such work, the queue stops (``rigs.mq_paused``, event
``mq_paused``) with the way out in the reason, queued MRs stay queued, and it starts
again (``mq_resumed``) once the remote's branch holds that work.

Crash safety: every MR is marked ``running`` and each step recorded before git is
touched. On start the refinery cleans its checkout, catches up with the remote by the
rules above (re-pushing tested work that never reached it), and settles ``running``
MRs: one whose change is on the default branch, here or on the remote (patch
equivalence, so rebased work counts), is ``merged`` (exactly once), any other goes back
to the queue (:func:`~gastown.roles.operations.landing.recover`). The default branch
only ever moves to a commit whose gates passed, so nothing a crash interrupts can leave
untested code on it.
"""

from __future__ import annotations

from typing import Final

import trio

from ..supervisor.bus.client import BusClient
from ..supervisor.bus.protocol import BusMessage
from ..supervisor.bus.requests import Reply, Request
from .adapters import log
from .adapters.async_store import AsyncStore
from .adapters.store import MergeRequest
from .core.errors import GastownError, GitError
from .core.merge_queue import (
    AUTO_BATCH_CAP,
    CHAIN_CAP,
    AutoBatch,
    batch_limit,
    chain_limit,
    next_batch,
)
from .operations.landing import NETWORK_OPS, QueuePaused, RemoteMoved, recover, try_catch_up
from .operations.merge_site import (
    MergeSite,
    QueueState,
    QueueStatus,
    clean_checkout,
    own_maintenance,
    upkeep,
)
from .operations.merging import fail_batch, run_plan
from .operations.speculation import Ahead, Speculated
from .role_context import RoleContext

#: Events after which there may be work for the queue.
WAKE_TOPICS: Final = ("mr_created", "mr_requeued", "mq_resume_requested")


class Refinery:
    """The refinery's behaviour: the loop over the rig's merge queue."""

    def __init__(self, ctx: RoleContext) -> None:
        assert ctx.rig is not None
        self.ctx = ctx
        self.state = QueueState()
        self.rig = ctx.rig
        self.town = ctx.town
        self.clone = self.town.refinery_clone(self.rig)
        self._site: MergeSite | None = None
        self._client: BusClient | None = None
        self._wakeup = trio.Event()
        self._log = log.get_logger()
        self._backoff = 1.0
        #: What ``batch_size = "auto"`` learnt from the batches so far.
        self._auto = AutoBatch()
        #: The next batch, marked running and gated ahead (``merge_queue.speculative``).
        self._ahead: Ahead | None = None

    # -- main loop ---------------------------------------------------------------------

    async def run(self, client: BusClient) -> None:
        store = await AsyncStore.open(self.town.db_path)
        self._site = MergeSite(town=self.town, rig=self.rig, role=self.ctx.name,
                               clone=self.clone, store=store,
                               state=self.state)
        try:
            self._client = client
            events = await client.subscribe(*WAKE_TOPICS)
            await own_maintenance(self.site)
            await recover(self.site)
            self._log.info("merge_queue_open")  # recovered; merges from here on
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wake_on_events, events)
                while True:
                    while await self._process_one_batch():
                        await upkeep(self.site, idle=False)
                    if self.site.batches_since_upkeep:
                        await upkeep(self.site, idle=True)
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
        finally:
            store.close()

    async def _wake_on_events(self, events: trio.MemoryReceiveChannel[BusMessage]) -> None:
        async for message in events:
            if message.data.get("rig") in (None, self.rig):
                self._wakeup.set()

    @property
    def site(self) -> MergeSite:
        assert self._site is not None, "the refinery's store opens when it runs"
        return self._site

    @property
    def store(self) -> AsyncStore:
        return self.site.store

    # -- the role's answers ----------------------------------------------------------

    def status(self) -> QueueStatus:
        return self.state.status()

    async def handle(self, request: Request, sender: str) -> Reply:
        if request.method == "wake":
            self._wakeup.set()
            return {"ok": True}
        raise LookupError(request.method)

    # -- one batch -----------------------------------------------------------------------

    async def _process_one_batch(self) -> bool:
        """Merge or reject the next batch; returns False when the queue is empty."""
        site, state = self.site, self.state
        config = site.config()
        mq = config.merge_queue
        # Batches of one are taken as a chain (each MR gated on its own, pushed together)
        # when the queue is longer than one and the gates are quick (``land_within``).
        chain = mq.batch_size == 1 and not mq.speculative and mq.land_within > 0
        # The head of the queue: this batch, and the next one gated ahead of it.
        if chain:
            cap = CHAIN_CAP
        elif mq.batch_size == "auto":
            cap = AUTO_BATCH_CAP
        else:
            cap = mq.batch_size
        queued = await self.store.call(self.store.store.merge_requests_in, self.rig,
                                       ["queued"], 2 * cap)
        # The batch gated ahead during the previous one: already running, taken first.
        ahead, self._ahead = self._ahead, None
        if state.paused and ahead is not None:
            await self._requeue(ahead.by_id, "the merge queue is paused")
            ahead = None
        if (not queued and ahead is None) or state.paused:
            # Woken with a stopped queue or work the remote has not taken yet: look again
            # (a resume, or the next MR); while it stays stopped, the MRs stay queued.
            if (state.paused or state.unpushed) and \
                    not await try_catch_up(site, config.default_branch):
                return False
            if not queued:
                return False
        speculated: Speculated | None = None
        if ahead is not None:
            batch, speculated = list(ahead.by_id.values()), ahead.result
        else:
            if chain:
                size = chain_limit(mq.land_within, site.step_seconds, len(queued))
            else:
                size = batch_limit(mq.batch_size, self._auto, len(queued))
            batch = next_batch(queued, size)
            await self.store.call(self.store.store.start_merge_requests,
                                  [mr.id for mr in batch])
        ids = [mr.id for mr in batch]
        by_id = {mr.id: mr for mr in batch}
        if mq.speculative:
            rest = [mr for mr in queued if mr.id not in by_id]
            # Sized as if this batch lands whole: the only case its result is used in.
            size = batch_limit(mq.batch_size, self._auto.after(len(batch), True), len(rest))
            if size:
                nxt = next_batch(rest, size)
                await self.store.call(self.store.store.start_merge_requests,
                                      [mr.id for mr in nxt])
                self._ahead = Ahead(by_id={mr.id: mr for mr in nxt})
        done = False
        for attempt in range(config.merge_queue.push_retries + 1):
            try:
                finished = await run_plan(site, config, by_id, ahead=self._ahead,
                                          speculated=speculated, each=chain)
                done = True
                self._backoff = 1.0
                self._auto = self._auto.after(len(batch), not finished.rejected)
                if config.merge_queue.batch_size == "auto":
                    self._log.info("batch_size_auto", batch=len(batch), next=self._auto.size)
                break
            except QueuePaused:
                for mr_id in list(by_id):
                    await self.store.call(self.store.store.requeue_merge_request, mr_id,
                                          "the merge queue is paused: " + (state.paused or ""))
                break
            except GitError as exc:
                if exc.op in NETWORK_OPS:
                    # The remote is unreachable: keep the MRs, retry after a back-off.
                    self._log.warning("remote_unreachable", error=exc.message,
                                      retry_in=self._backoff)
                    for mr_id in by_id:
                        await self.store.call(self.store.store.requeue_merge_request, mr_id,
                                              f"remote unreachable: {exc.message}")
                    await trio.sleep(self._backoff)
                    self._backoff = min(self._backoff * 2, 60.0)
                    break
                await fail_batch(site, by_id, f"refinery error: {exc.message}")
                break
            except GastownError as exc:
                await fail_batch(site, by_id, f"refinery error: {exc.message}")
                break
            except RemoteMoved:
                self._log.info("refinery_remote_moved", attempt=attempt + 1)
                still = [i for i in ids if i in by_id]
                if attempt == config.merge_queue.push_retries:
                    for mr_id in still:
                        await self.store.call(self.store.store.merge_rejected, mr_id,
                                              "push: the remote kept moving")
                    break
        if not done and self._ahead is not None:
            await self._requeue(self._ahead.by_id, "the batch before it did not finish")
            self._ahead = None
        state.current = {}
        # The batch's one clean: the next batch (and a wake-up's catch-up) starts from it.
        await clean_checkout(site, config.default_branch, force=True)
        return True

    async def _requeue(self, by_id: dict[str, MergeRequest], reason: str) -> None:
        """Put a batch taken ahead back in the queue (marked running, never gated for real)."""
        for mr_id in by_id:
            await self.store.call(self.store.store.requeue_merge_request, mr_id, reason)
