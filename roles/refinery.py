"""The refinery: the rig's merge queue, in ``<rig>/refinery/rig``.

It takes the rig's merge requests in queue order (priority, then age), a batch at a
time, woken by events (``mr_created``, ``mr_requeued``, ``mq_resume_requested``), never
by a timer. For a batch it follows a :mod:`~gastown.roles.core.merge_queue` plan: stack the
MRs onto the default branch by rebasing detached copies of their heads (a polecat's
branch is checked out in its worktree and is never touched), run the gates on the
candidate, push the tested candidate to the remote's branch, verify that it moved, and
only then fast-forward the local default branch to it. A remote that moved meanwhile is
fetched and rebased on, never overwritten (bounded by ``push_retries``).

The default branch only ever moves forward, in the clone and on the remote; nothing here
resets it. Catching up with the remote is a fast-forward. Work that landed in the clone
but that the remote refused (a working copy with the branch checked out, a dirty tree
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
to the queue. The default branch only ever moves to a commit whose gates passed, so
nothing a crash interrupts can leave untested code on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import trio

from ..supervisor.bus.requests import Reply, Request, Wake
from .adapters import git, landed, log
from .adapters.async_store import AsyncStore
from .adapters.faults import fault_point
from .adapters.processes import processes_with_env, terminate_process_group
from .adapters.store import MergeRequest
from .core.config import RigConfig
from .core.errors import GastownError, GitError
from .operations.rigs import is_url
from .role_context import RoleContext

#: Events after which there may be work for the queue.
WAKE_TOPICS: Final = ("mr_created", "mr_requeued", "mq_resume_requested")

#: Git operations that talk to the remote: their failure means "unreachable, retry later".
NETWORK_OPS: Final = ("fetch", "push", "ls-remote")


class RemoteMoved(Exception):
    """The push was rejected because the remote's branch moved: fetch and redo."""


class QueuePaused(Exception):
    """The remote's branch diverged from landed work not pushed yet: the queue waits."""


@dataclass
class BatchState:
    """Candidates built for the current base: prefix of MR ids -> stacked commit."""

    base: str
    tips: dict[tuple[str, ...], str] = field(default_factory=dict)


def short(commit: str | None) -> str:
    return (commit or "")[:10]


class Refinery:
    def __init__(self, ctx: RoleContext) -> None:
        assert ctx.rig is not None
        self.ctx = ctx
        self.rig = ctx.rig
        self.town = ctx.town
        self.clone = self.town.refinery_clone(self.rig)
        self._store: AsyncStore | None = None
        self._wakeup = trio.Event()
        self._log = log.get_logger()
        self.current: dict[str, Any] = {}
        self._backoff = 1.0
        self.merged = 0
        self.rejected = 0
        #: Mirrors of the rig's row: why the queue is stopped, whether work is unpushed.
        self._paused: str | None = None
        self._unpushed = False

    @property
    def store(self) -> AsyncStore:
        assert self._store is not None
        return self._store

    def status(self) -> dict[str, Any]:
        return {"merged": self.merged, "rejected": self.rejected, "current": self.current,
                "paused": self._paused, "unpushed": self._unpushed}

    async def handle(self, request: Request, sender: str) -> Reply:
        if isinstance(request, Wake):
            self._wakeup.set()
            return {"ok": True}
        raise LookupError(request.method)

    async def _git(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    # -- main loop ---------------------------------------------------------------------

    async def run(self, client: Any) -> None:
        self._store = await AsyncStore.open(self.town.db_path)
        try:
            self._client = client
            events = await client.subscribe(*WAKE_TOPICS)
            await self._recover()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wake_on_events, events)
                while True:
                    while await self._process_one_batch():
                        pass
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
        finally:
            self.store.close()

    async def _wake_on_events(self, events: Any) -> None:
        async for message in events:
            if message.data.get("rig") in (None, self.rig):
                self._wakeup.set()

    async def _announce(self) -> None:
        """Ask the supervisor to copy the new outbox rows to the feed and the bus."""
        try:
            await self._client.publish("outbox", {})
        except GastownError:
            pass  # the events are in the store; the next poke carries them

    def _gate_tag(self) -> dict[str, str]:
        """Environment that marks this rig's gate processes, so a restart can find them."""
        return {"GASTOWN_GATE_OF": f"{self.town.root}:{self.rig}"}

    def _config(self) -> RigConfig:
        return self.town.rig_config(self.rig)

    # -- recovery ----------------------------------------------------------------------

    async def _recover(self) -> None:
        config = self._config()
        branch = config.default_branch
        rig = await self.store.call(self.store.store.rig, self.rig)
        self._paused = rig.mq_paused
        self._unpushed = rig.push_error is not None
        # Gates of a refinery that was SIGKILLed run on, in this very checkout: end them.
        groups = set()
        for pid in await trio.to_thread.run_sync(processes_with_env, self._gate_tag()):
            try:
                groups.add(os.getpgid(pid))
            except ProcessLookupError:
                continue
        for pgid in groups:
            self._log.warning("stray_gate_killed", pgid=pgid)
            await trio.to_thread.run_sync(terminate_process_group, pgid, 2.0)
        await self._git(git.clean_checkout, self.clone, branch)
        running = await self.store.call(self.store.store.merge_requests_in, self.rig,
                                        ["running"])
        # Forward only, like every catch-up: tested merges that never reached the remote
        # (killed before the push, or refused) are pushed again, never dropped.
        await self._try_catch_up(branch)
        for mr in running:
            target = await self._landed_on(mr, branch)
            if target is not None:
                commit = await self._git(git.rev, self.clone, target)
                await self.store.call(self.store.store.merge_landed, mr.id, commit)
                self._log.info("mr_recovered_merged", mr=mr.id, bead=mr.bead)
            else:
                await self.store.call(self.store.store.requeue_merge_request, mr.id,
                                      "the refinery restarted mid-merge")
                self._log.info("mr_recovered_requeued", mr=mr.id, bead=mr.bead)
        if running:
            await self._announce()

    async def _landed_on(self, mr: MergeRequest, branch: str) -> str | None:
        """``branch`` or ``origin/<branch>`` when it holds every commit of the MR (by
        ancestry or by patch), the local one first; None when neither does."""
        facts: landed.Facts = await self._git(landed.gather, self.clone, branch, [mr.head])
        where = facts.landed_on
        return None if where is None else branch if where == "local" else f"origin/{branch}"

    # -- one batch -----------------------------------------------------------------------

    async def _process_one_batch(self) -> bool:
        """Merge or reject the next batch; returns False when the queue is empty."""
        from .core.merge_queue import next_batch

        config = self._config()
        queued = await self.store.call(self.store.store.merge_requests_in, self.rig,
                                       ["queued"])
        if not queued or self._paused:
            # Woken with a stopped queue or work the remote has not taken yet: look again
            # (a resume, or the next MR); while it stays stopped, the MRs stay queued.
            if (self._paused or self._unpushed) and \
                    not await self._try_catch_up(config.default_branch):
                return False
            if not queued:
                return False
        batch = next_batch(queued, config.merge_queue.batch_size)
        ids = [mr.id for mr in batch]
        await self.store.call(self.store.store.start_merge_requests, ids)
        await self._announce()
        by_id = {mr.id: mr for mr in batch}
        for attempt in range(config.merge_queue.push_retries + 1):
            try:
                await self._run_plan(config, by_id)
                self._backoff = 1.0
                break
            except QueuePaused:
                for mr_id in list(by_id):
                    await self.store.call(self.store.store.requeue_merge_request, mr_id,
                                          "the merge queue is paused: " + (self._paused or ""))
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
                await self._fail_batch(by_id, f"refinery error: {exc.message}")
                break
            except GastownError as exc:
                await self._fail_batch(by_id, f"refinery error: {exc.message}")
                break
            except RemoteMoved:
                self._log.info("refinery_remote_moved", attempt=attempt + 1)
                still = [i for i in ids if i in by_id]
                if attempt == config.merge_queue.push_retries:
                    for mr_id in still:
                        await self.store.call(self.store.store.merge_rejected, mr_id,
                                              "push: the remote kept moving")
                    break
        self.current = {}
        await self._git(git.clean_checkout, self.clone, config.default_branch)
        await self._announce()
        return True

    async def _fail_batch(self, by_id: dict[str, MergeRequest], reason: str) -> None:
        self._log.error("batch_failed", reason=reason, mrs=list(by_id))
        for mr_id in list(by_id):
            await self._reject(by_id, mr_id, reason, "")

    async def _run_plan(self, config: RigConfig, by_id: dict[str, MergeRequest]) -> None:
        """Drive one batch plan to its end; ``by_id`` loses each MR as it is settled."""
        from .core.merge_queue import (
            Finished,
            Land,
            Reject,
            Test,
            drop,
            next_action,
            record_done,
            record_test,
            start_plan,
        )

        branch = config.default_branch
        base = await self._sync_base(branch)
        state = BatchState(base=base)
        plan = start_plan(list(by_id), retry_flaky=config.merge_queue.retry_flaky)
        tested: tuple[tuple[str, ...], str] | None = None
        last_failure, last_tail = "gate failed", ""
        while True:
            action = next_action(plan)
            if isinstance(action, Finished):
                return
            if isinstance(action, Test):
                candidate, conflict = await self._stack(state, action.mrs, by_id)
                if conflict is not None:
                    mr_id, files = conflict
                    reason = "conflict: " + ", ".join(files[:10])
                    await self._reject(by_id, mr_id, reason, "")
                    plan = drop(plan, mr_id, reason)
                    continue
                assert candidate is not None
                ok, failure, tail = await self._gate(config, action.mrs, candidate)
                if not ok:
                    # The last red run holds the culprit (bisection only narrows onto it).
                    last_failure, last_tail = failure, tail
                tested = (tuple(action.mrs), candidate)
                plan = record_test(plan, ok)
            elif isinstance(action, Land):
                assert tested is not None and tested[0] == tuple(action.mrs)
                await self._land(config, action.mrs, tested[1], by_id)
                state = BatchState(base=tested[1])
                plan = record_done(plan)
            elif isinstance(action, Reject):
                self._log.info("culprit_found", mr=action.mr, plan_reason=action.reason)
                await self._reject(by_id, action.mr, last_failure, last_tail)
                plan = record_done(plan)

    async def _sync_base(self, branch: str) -> str:
        """The base for a batch: the default branch, caught up with the remote (forward only).

        Raises :class:`QueuePaused` when the remote diverged from unpushed landed work.
        Known unpushed work is not pushed here: the batch's landing pushes it with the
        candidate built on it.
        """
        return await self._catch_up(branch, push=not self._unpushed)

    async def _try_catch_up(self, branch: str) -> bool:
        """:meth:`_catch_up` for a wake-up or a start: False while the queue must wait."""
        try:
            await self._catch_up(branch)
        except QueuePaused:
            return False
        except GastownError as exc:
            self._log.warning("refinery_catch_up_failed", error=exc.message)
            return False
        return True

    async def _catch_up(self, branch: str, *, push: bool = True) -> str:
        """Bring the default branch up to the remote's, never backwards; return its commit.

        - local is behind the remote: fast-forward;
        - local is ahead (landed, not pushed yet): keep it and push it (unless ``push`` is
          False); a refusal is recorded, the queue goes on;
        - they diverged: stop the queue with the reason (:class:`QueuePaused`).
        """
        await self._git(git.clean_checkout, self.clone, branch)
        local: str = await self._git(git.rev, self.clone, branch)
        if not await self._git(git.has_remote, self.clone):
            return local
        retries = self._config().merge_queue.push_retries
        for _ in range(retries + 1):
            await self._git(git.fetch, self.clone)
            upstream: str | None = await self._git(git.rev, self.clone, f"origin/{branch}")
            local = await self._git(git.rev, self.clone, branch)
            if upstream == local:
                await self._caught_up(local)
                return local
            if upstream and await self._git(git.is_ancestor, self.clone, local, upstream):
                await self._git(git.fast_forward, self.clone, branch, upstream)
                self._log.info("refinery_fast_forwarded", old=short(local),
                               new=short(upstream))
                await self._caught_up(upstream)
                return upstream
            if upstream and not await self._git(git.is_ancestor, self.clone, upstream, local):
                await self._pause_diverged(branch, local, upstream)
                raise QueuePaused()
            # Landed here and not on the remote yet: a refused push, or a crash before it.
            await self._set_paused(None)
            if not push:
                return local
            self._log.warning("refinery_repush", local=short(local), remote=short(upstream))
            outcome = await self._git(git.push_commit, self.clone, local, branch)
            if outcome.result == "pushed":
                await self._caught_up(local)
                return local
            if outcome.result == "refused":
                await self._record_unpushed(branch, local, upstream, outcome.reason)
                return local
            # The remote moved between the fetch and the push: look again.
        return local

    async def _caught_up(self, head: str) -> None:
        """The remote's branch is the local one: no backlog, no reason to stop."""
        await self._set_paused(None)
        if self._unpushed:
            await self.store.call(self.store.store.record_pushed, self.rig, head)
            self._unpushed = False
            self._log.info("push_caught_up", head=short(head))
            await self._announce()

    async def _record_unpushed(self, branch: str, landed: str, upstream: str | None,
                               reason: str) -> None:
        """Merged work is in the clone only: say where, and why the remote refused it."""
        count = len(await self._git(git.commits_between, self.clone, upstream, landed))
        error = f"the remote refused the push ({reason})"
        self._log.warning("push_refused", branch=branch, reason=reason, unpushed=count,
                          landed=short(landed), remote=short(upstream))
        await self.store.call(self.store.store.record_unpushed, self.rig, landed_head=landed,
                              remote_head=upstream, error=error, count=count)
        self._unpushed = True
        await self._announce()

    async def _pause_diverged(self, branch: str, local: str, upstream: str) -> None:
        """Stop the queue: the remote's branch and landed-but-unpushed work diverged."""
        unpushed = await self._git(git.commits_between, self.clone, upstream, local)
        shown = ", ".join(short(c) + "..." for c in reversed(unpushed[-5:]))
        more = f" and {len(unpushed) - 5} more" if len(unpushed) > 5 else ""
        repo = self._config().repo
        if is_url(repo):
            fix = (f"merge them with the remote's {branch} (git -C {self.clone} pull "
                   f"--no-rebase origin {branch}; the refinery pushes the result)")
        else:
            fix = f"merge them into the remote's {branch} (git -C {repo} pull {self.clone} " \
                  f"{branch})"
        reason = (f"origin/{branch} diverged from {len(unpushed)} landed commit(s) not yet "
                  f"pushed ({shown}{more}): {fix} then `gastown mq resume {self.rig}`")
        if self._paused != reason:
            self._log.error("mq_paused", reason=reason, local=short(local),
                            remote=short(upstream))
        await self.store.call(self.store.store.record_unpushed, self.rig, landed_head=local,
                              remote_head=upstream, error=f"origin/{branch} diverged",
                              count=len(unpushed))
        self._unpushed = True
        await self._set_paused(reason)

    async def _set_paused(self, reason: str | None) -> None:
        if self._paused == reason:
            return
        if reason is None:
            self._log.info("mq_resumed", was=self._paused)
        await self.store.call(self.store.store.set_mq_paused, self.rig, reason)
        self._paused = reason
        await self._announce()

    async def _stack(self, state: BatchState, mrs: tuple[str, ...] | list[str],
                     by_id: dict[str, MergeRequest],
                     ) -> tuple[str | None, tuple[str, list[str]] | None]:
        """The candidate for ``base + mrs``, built by rebasing each MR onto the previous tip.

        Returns ``(commit, None)``, or ``(None, (mr_id, files))`` for the first MR that
        conflicts. Prefixes already built for this base are reused.
        """
        tip = state.base
        prefix: tuple[str, ...] = ()
        for mr_id in mrs:
            prefix = (*prefix, mr_id)
            if prefix in state.tips:
                tip = state.tips[prefix]
                continue
            mr = by_id[mr_id]
            await self.store.call(self.store.store.set_merge_step, [mr_id], "rebasing")
            self.current = {"mrs": list(mrs), "step": "rebasing", "mr": mr_id}
            fault_point(self.ctx.name, "merge.before_rebase")
            head = mr.head or await self._git(git.rev, self.clone, mr.branch)
            if not head or not await self._git(git.rev, self.clone, head):
                return None, (mr_id, ["(branch missing)"])
            new_tip, files = await self._git(git.rebase_detached, self.clone, head, tip)
            if new_tip is None:
                return None, (mr_id, files)
            state.tips[prefix] = new_tip
            tip = new_tip
        return tip, None

    async def _gate(self, config: RigConfig, mrs: tuple[str, ...] | list[str],
                    candidate: str) -> tuple[bool, str, str]:
        """Run the gates on ``candidate``: (passed, ``gate <name> (<why>)``, output tail)."""
        from .operations.gates import run_gates

        await self._git(git.checkout_detached, self.clone, candidate)
        log_path = self.town.logs_dir / "mq" / f"{self.rig}-{mrs[-1]}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        await self.store.call(self.store.store.set_merge_step, list(mrs), "gating",
                              candidate=candidate, log_path=str(log_path))
        fault_point(self.ctx.name, "merge.before_gates")
        env = dict(os.environ)
        env.update({"GASTOWN_RIG": self.rig, "GASTOWN_MRS": " ".join(mrs),
                    "GASTOWN_CANDIDATE": candidate, **self._gate_tag()})
        async with trio.open_nursery() as nursery:

            def on_gate(name: str) -> None:
                self.current = {"mrs": list(mrs), "step": "gating", "gate": name,
                                "candidate": short(candidate)}
                self._log.info("gate_started", gate=name, mrs=list(mrs),
                               candidate=short(candidate))
                nursery.start_soon(partial(self.store.call, self.store.store.set_merge_step,
                                           list(mrs), "gating", gate=name))

            results = await run_gates(config.merge_queue.gates, cwd=self.clone,
                                      log_path=log_path, env=env, on_gate=on_gate)
        fault_point(self.ctx.name, "merge.after_gates")
        failed = [r for r in results if not r.ok]
        if failed:
            gate = failed[0]
            why = "timed out" if gate.timed_out else f"exit {gate.exit_code}"
            self._log.info("gate_failed", gate=gate.name, why=why, mrs=list(mrs))
            return False, f"gate {gate.name} ({why})", gate.tail
        self._log.info("gates_passed", mrs=list(mrs), candidate=short(candidate))
        return True, "", ""

    async def _land(self, config: RigConfig, mrs: tuple[str, ...] | list[str], candidate: str,
                    by_id: dict[str, MergeRequest]) -> None:
        """Push the tested candidate, verify, then fast-forward the default branch to it.

        The remote first: a push rejected because the remote moved leaves nothing local
        to undo. A push the remote refuses for another reason (a working copy) still
        lands here: the MRs are gated and on the canonical clone's branch, recorded as
        not pushed yet, and pushed again after every later batch.
        """
        branch = config.default_branch
        await self.store.call(self.store.store.set_merge_step, list(mrs), "landing",
                              candidate=candidate)
        self.current = {"mrs": list(mrs), "step": "landing", "candidate": short(candidate)}
        remote = await self._git(git.has_remote, self.clone)
        refused: str | None = None
        if remote:
            await self.store.call(self.store.store.set_merge_step, list(mrs), "pushing")
            outcome = await self._git(git.push_commit, self.clone, candidate, branch)
            if outcome.result == "moved":
                # Someone else moved the remote: nothing moved here; redo on theirs.
                for mr_id in mrs:
                    await self.store.call(self.store.store.set_merge_step, [mr_id], "queued")
                raise RemoteMoved()
            if outcome.result == "refused":
                refused = outcome.reason
            else:
                remote_head = await self._git(git.remote_branch_head, self.clone, branch)
                if remote_head != candidate:
                    raise GastownError(f"push of {branch} did not move the remote "
                                       f"(remote at {short(remote_head)}, expected "
                                       f"{short(candidate)})")
            fault_point(self.ctx.name, "merge.after_push")
        await self._git(git.fast_forward, self.clone, branch, candidate)
        fault_point(self.ctx.name, "merge.after_ff")
        if refused is not None:
            upstream = await self._git(git.rev, self.clone, f"origin/{branch}")
            await self._record_unpushed(branch, candidate, upstream, refused)
        elif remote:
            await self._caught_up(candidate)
        for mr_id in mrs:
            await self.store.call(self.store.store.merge_landed, mr_id, candidate)
            by_id.pop(mr_id, None)
            self.merged += 1
            self._log.info("mr_merged", mr=mr_id, commit=short(candidate))
        await self._announce()

    async def _reject(self, by_id: dict[str, MergeRequest], mr_id: str, reason: str,
                      tail: str) -> None:
        mr = by_id.pop(mr_id)
        config = self._config()
        await self.store.call(self.store.store.merge_rejected, mr_id, reason, tail=tail)
        self.rejected += 1
        self._log.info("mr_rejected", mr=mr_id, bead=mr.bead, reason=reason)
        if reason.startswith("conflict") and config.merge_queue.on_conflict == "resling" \
                and mr.kind == "polecat":  # a crew conflict is for its person to resolve
            note = (f"A previous attempt at this bead ({mr.branch}) conflicted with "
                    f"{config.default_branch} ({reason}). Start from the current "
                    f"{config.default_branch} and redo the change so that it applies.")
            try:
                # The same agent as the attempt that conflicted, if its polecat is still known.
                try:
                    agent: str | None = (await self.store.call(
                        self.store.store.polecat, self.rig, mr.polecat)).agent
                except GastownError:
                    agent = None
                sling = await self.store.call(self.store.store.queue_sling, mr.bead, self.rig,
                                              agent=agent, force=True, note=note)
                self._log.info("bead_reslung", bead=mr.bead, sling=sling.id)
            except GastownError as exc:
                self._log.warning("resling_failed", bead=mr.bead, error=exc.message)
        await self._announce()
