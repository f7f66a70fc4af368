"""Moving a rig's default branch: landing a tested candidate, catching up with the remote.

Its one job: keep the refinery clone's default branch and the remote's in step, forward
only. :func:`land` pushes a tested candidate to the remote's branch, verifies that it
moved, and only then fast-forwards the local branch to it. :func:`catch_up` brings the
local branch up to the remote's: a fast-forward when behind; work landed here but not
on the remote (a refused push, a crash before it) is pushed again, and a refusal is
recorded in the rig's row (``landed_head``, ``remote_head``, ``push_error``); when the
two diverged the queue stops (``rigs.mq_paused``) with the way out in the reason, and
it starts again once the remote's branch holds that work. :func:`recover` settles what
a crashed refinery left: stray gates, a dirty checkout (and the second one of speculative
gating), ``running`` MRs (``merged`` when
their change is on the default branch, here or on the remote, else queued again).

Layer: operations, called by the refinery's role loop and by :mod:`.merging`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

import trio

from ..adapters import git, landed, log
from ..adapters.faults import fault_point
from ..adapters.processes import processes_with_env, terminate_process_group
from ..adapters.store import MergeRequest
from ..core.errors import GastownError, GitError
from .merge_site import (
    MergeSite,
    clean_checkout,
    commit_of,
    fetch_remote,
    has_remote,
    off_thread,
    short,
)
from .rigs import is_url
from .speculation import remove_checkout

#: Git operations that talk to the remote: their failure means "unreachable, retry later".
NETWORK_OPS: Final = ("fetch", "push", "ls-remote")

_log = log.get_logger()


class RemoteMoved(Exception):
    """The push was rejected because the remote's branch moved: fetch and redo."""


class QueuePaused(Exception):
    """The remote's branch diverged from landed work not pushed yet: the queue waits."""


# -- recovery at start ------------------------------------------------------------------


async def recover(site: MergeSite) -> None:
    """End a killed refinery's gates, clean the checkout, catch up, settle running MRs."""
    branch = site.config().default_branch
    store = site.store
    rig = await store.call(store.store.rig, site.rig)
    site.state.paused = rig.mq_paused
    site.state.unpushed = rig.push_error is not None
    # Gates of a refinery that was SIGKILLed run on, in this very checkout: end them.
    groups = set()
    for pid in await trio.to_thread.run_sync(processes_with_env, site.gate_tag()):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    for pgid in groups:
        _log.warning("stray_gate_killed", pgid=pgid)
        await trio.to_thread.run_sync(terminate_process_group, pgid, 2.0)
    await clean_checkout(site, branch, force=True, thorough=True)
    await remove_checkout(site)  # the second checkout of speculative gating, if any
    running = await store.call(store.store.merge_requests_in, site.rig, ["running"])
    # Forward only, like every catch-up: tested merges that never reached the remote
    # (killed before the push, or refused) are pushed again, never dropped.
    await try_catch_up(site, branch)
    for mr in running:
        target = await _landed_on(site, mr, branch)
        if target is not None:
            commit = await commit_of(site, target)
            await store.call(store.store.merge_landed, mr.id, commit)
            _log.info("mr_recovered_merged", mr=mr.id, bead=mr.bead)
        else:
            await store.call(store.store.requeue_merge_request, mr.id,
                             "the refinery restarted mid-merge")
            _log.info("mr_recovered_requeued", mr=mr.id, bead=mr.bead)


async def _landed_on(site: MergeSite, mr: MergeRequest, branch: str) -> str | None:
    """``branch`` or ``origin/<branch>`` when it holds every commit of the MR (by
    ancestry or by patch), the local one first; None when neither does."""
    facts = await off_thread(landed.gather, site.clone, branch, [mr.head])
    where = facts.landed_on
    return None if where is None else branch if where == "local" else f"origin/{branch}"


# -- catching up with the remote --------------------------------------------------------


async def try_catch_up(site: MergeSite, branch: str) -> bool:
    """:func:`catch_up` for a wake-up or a start: False while the queue must wait."""
    try:
        await catch_up(site, branch)
    except QueuePaused:
        return False
    except GastownError as exc:
        _log.warning("refinery_catch_up_failed", error=exc.message)
        return False
    return True


async def catch_up(site: MergeSite, branch: str, *, push: bool = True) -> str:
    """Bring the default branch up to the remote's, never backwards; return its commit.

    - local is behind the remote: fast-forward;
    - local is ahead (landed, not pushed yet): keep it and push it (unless ``push`` is
      False); a refusal is recorded, the queue goes on;
    - they diverged: stop the queue with the reason (:class:`QueuePaused`).
    """
    clone = site.clone
    await clean_checkout(site, branch)  # a no-op right after the previous batch's clean
    if not await has_remote(site):
        return await commit_of(site, branch)
    retries = site.config().merge_queue.push_retries
    local: str | None = None
    for attempt in range(retries + 1):
        # ``local`` stays what it was first read: only this refinery moves the branch,
        # and in this loop only by the fast-forward that returns (a fetch moves only
        # ``origin/*``, so reading it after the first fetch, with the remote's in one git
        # command, reads the same). Work not pushed yet, a second look, or a queue
        # allowed no push retry (a stale base would cost it the batch) always asks the
        # remote.
        await fetch_remote(site, force=attempt > 0 or retries == 0 or site.state.unpushed
                           or site.state.paused is not None)
        if local is None:
            local, upstream = await off_thread(git.revs, clone, [branch, f"origin/{branch}"])
            if local is None:
                raise GitError("rev-parse", str(clone), f"no commit named {branch}")
        else:
            upstream = await off_thread(git.rev, clone, f"origin/{branch}")
        if upstream == local:
            await caught_up(site, local)
            return local
        if upstream and await _is_ancestor(site, local, upstream):
            await off_thread(git.fast_forward, clone, branch, upstream)
            _log.info("refinery_fast_forwarded", old=short(local), new=short(upstream))
            await caught_up(site, upstream)
            return upstream
        if upstream and not await _is_ancestor(site, upstream, local):
            await _pause_diverged(site, branch, local, upstream)
            raise QueuePaused()
        # Landed here and not on the remote yet: a refused push, or a crash before it.
        await set_paused(site, None)
        if not push:
            return local
        _log.warning("refinery_repush", local=short(local), remote=short(upstream))
        outcome = await off_thread(git.push_commit, clone, local, branch)
        if outcome.result == "pushed":
            await caught_up(site, local)
            return local
        if outcome.result == "refused":
            await _record_unpushed(site, branch, local, upstream, outcome.reason)
            return local
        # The remote moved between the fetch and the push: look again.
    assert local is not None  # read in the first round (push_retries is never negative)
    return local


async def _is_ancestor(site: MergeSite, ancestor: str, descendant: str) -> bool:
    return await off_thread(git.is_ancestor, site.clone, ancestor, descendant)


async def caught_up(site: MergeSite, head: str) -> None:
    """The remote's branch is the local one: no backlog, no reason to stop."""
    await set_paused(site, None)
    if site.state.unpushed:
        await site.store.call(site.store.store.record_pushed, site.rig, head)
        site.state.unpushed = False
        _log.info("push_caught_up", head=short(head))


async def _record_unpushed(site: MergeSite, branch: str, landed: str, upstream: str | None,
                           reason: str) -> None:
    """Merged work is in the clone only: say where, and why the remote refused it."""
    count = len(await off_thread(git.commits_between, site.clone, upstream, landed))
    error = f"the remote refused the push ({reason})"
    _log.warning("push_refused", branch=branch, reason=reason, unpushed=count,
                 landed=short(landed), remote=short(upstream))
    await site.store.call(site.store.store.record_unpushed, site.rig, landed_head=landed,
                          remote_head=upstream, error=error, count=count)
    site.state.unpushed = True


async def _pause_diverged(site: MergeSite, branch: str, local: str, upstream: str) -> None:
    """Stop the queue: the remote's branch and landed-but-unpushed work diverged."""
    unpushed = await off_thread(git.commits_between, site.clone, upstream, local)
    shown = ", ".join(short(c) + "..." for c in reversed(unpushed[-5:]))
    more = f" and {len(unpushed) - 5} more" if len(unpushed) > 5 else ""
    repo = site.config().repo
    if is_url(repo):
        fix = (f"merge them with the remote's {branch} (git -C {site.clone} pull "
               f"--no-rebase origin {branch}; the refinery pushes the result)")
    else:
        fix = f"merge them into the remote's {branch} (git -C {repo} pull {site.clone} " \
              f"{branch})"
    reason = (f"origin/{branch} diverged from {len(unpushed)} landed commit(s) not yet "
              f"pushed ({shown}{more}): {fix} then `gastown mq resume {site.rig}`")
    if site.state.paused != reason:
        _log.error("mq_paused", reason=reason, local=short(local), remote=short(upstream))
    await site.store.call(site.store.store.record_unpushed, site.rig, landed_head=local,
                          remote_head=upstream, error=f"origin/{branch} diverged",
                          count=len(unpushed))
    site.state.unpushed = True
    await set_paused(site, reason)


async def set_paused(site: MergeSite, reason: str | None) -> None:
    if site.state.paused == reason:
        return
    if reason is None:
        _log.info("mq_resumed", was=site.state.paused)
    await site.store.call(site.store.store.set_mq_paused, site.rig, reason)
    site.state.paused = reason


# -- landing a tested candidate ---------------------------------------------------------


async def land(site: MergeSite, mrs: Sequence[str], candidate: str, base: str) -> None:
    """Push the tested candidate, verify, then move the default branch from ``base`` (its
    commit when the candidate was built on it) forward to it.

    The remote first: a push rejected because the remote moved leaves nothing local
    to undo (:class:`RemoteMoved`). A push the remote refuses for another reason (a
    working copy) still lands here: the MRs are gated and on the canonical clone's
    branch, recorded as not pushed yet, and pushed again after every later batch.
    The caller records the MRs as merged.

    The push is verified by the remote's own report of the ref (``push --porcelain``,
    :attr:`~gastown.roles.adapters.git_push.PushOutcome.confirmed`); without that line,
    by the remote-tracking branch git moves on the same report; ``ls-remote`` (a second
    connection to the remote) only when that branch does not follow either (a clone
    without the usual fetch refspec). The local branch moves by ``update-ref`` from
    ``base``: the checkout is on the candidate already, and the batch's clean checks the
    branch out after.
    """
    branch = site.config().default_branch
    store, clone = site.store, site.clone
    await store.call(store.store.set_merge_step, list(mrs), "landing", candidate=candidate)
    site.state.current = {"mrs": list(mrs), "step": "landing", "candidate": short(candidate)}
    remote = await has_remote(site)
    refused: str | None = None
    if remote:
        await store.call(store.store.set_merge_step, list(mrs), "pushing")
        outcome = await off_thread(git.push_commit, clone, candidate, branch)
        if outcome.result == "moved":
            # Someone else moved the remote: nothing moved here; redo on theirs.
            site.fetched_at = None
            for mr_id in mrs:
                await store.call(store.store.set_merge_step, [mr_id], "queued")
            raise RemoteMoved()
        if outcome.result == "refused":
            refused = outcome.reason
        elif not outcome.confirmed and \
                await off_thread(git.rev, clone, f"origin/{branch}") != candidate:
            remote_head = await off_thread(git.remote_branch_head, clone, branch)
            if remote_head != candidate:
                raise GastownError(f"push of {branch} did not move the remote "
                                   f"(remote at {short(remote_head)}, expected "
                                   f"{short(candidate)})")
        fault_point(site.role, "merge.after_push")
    site.checkout_clean = False  # the branch moves under a checkout that may be on it
    try:
        await off_thread(git.advance_branch, clone, branch, candidate, base)
    except GitError:
        # The branch is not where the batch began (moved by hand in the clone?): the
        # fast-forward still takes it to the candidate if it can, or says why not.
        await off_thread(git.fast_forward, clone, branch, candidate)
    fault_point(site.role, "merge.after_ff")
    if refused is not None:
        upstream = await off_thread(git.rev, clone, f"origin/{branch}")
        await _record_unpushed(site, branch, candidate, upstream, refused)
    elif remote:
        await caught_up(site, candidate)
