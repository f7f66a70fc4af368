"""Merging one batch of a rig's merge requests: build candidates, gate them, land or reject.

Its one job: drive a :mod:`~gastown.roles.core.merge_queue` plan for one batch to its end.
A candidate is built by stacking the MRs onto the default branch, rebasing detached
copies of their heads (a polecat's branch is checked out in its worktree and is never
touched); the rig's gates run on it; a green candidate is landed
(:func:`.landing.land`) and its MRs recorded as merged; a red one is bisected by the
plan until the culprit is rejected with the failing gate's tail. A conflict rejects the
MR at once and, when the rig says ``on_conflict = "resling"``, slings its bead again.
Every step is recorded on the MRs before git is touched, for crash recovery.

Layer: operations, called by the refinery's role loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from ..adapters import git, log
from ..adapters.faults import fault_point
from ..adapters.store import MergeRequest
from ..core.config import RigConfig
from ..core.errors import GastownError
from ..core.merge_queue import (
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
from .gates import gates_with_setup, run_gates
from .landing import catch_up, land
from .merge_site import MergeSite, off_thread, short
from .speculation import Ahead, Speculated, prepare_checkout

_log = log.get_logger()


@dataclass
class BatchState:
    """Candidates built for the current base: prefix of MR ids -> stacked commit."""

    base: str
    tips: dict[tuple[str, ...], str] = field(default_factory=dict)


async def run_plan(site: MergeSite, config: RigConfig, by_id: dict[str, MergeRequest], *,
                   ahead: Ahead | None = None, speculated: Speculated | None = None,
                   each: bool = False) -> Finished:
    """Drive one batch plan (``each``: a chain) to its end; ``by_id`` loses each MR as it
    is settled.

    With ``ahead`` (``merge_queue.speculative``), that next batch is gated on top of
    this one's whole-batch candidate meanwhile (:func:`speculate`). ``speculated`` is
    such a run of these very MRs: used instead of gating them when it was on this base.

    Raises :class:`.landing.QueuePaused` (before anything is built) and
    :class:`.landing.RemoteMoved` (a landing lost the race for the remote's branch).
    """
    branch = config.default_branch
    # The base: the default branch, caught up with the remote (forward only). Known
    # unpushed work is not pushed here: the landing pushes it with the candidate on it.
    base = await catch_up(site, branch, push=not site.state.unpushed)
    state = BatchState(base=base)
    if speculated is not None and speculated.base == base:
        state.tips.update(speculated.tips)  # the same commits: the result applies to them
    else:
        speculated = None
    plan = start_plan(list(by_id), retry_flaky=config.merge_queue.retry_flaky, each=each)
    #: The candidates that ran green on this base, by their MRs: a Land takes one.
    green: dict[tuple[str, ...], str] = {}
    last_failure, last_tail = "gate failed", ""
    while True:
        action = next_action(plan)
        if isinstance(action, Finished):
            return action
        if isinstance(action, Test):
            started = time.monotonic()
            candidate, conflict = await _stack(site, state, action.mrs, by_id)
            if conflict is not None:
                mr_id, files = conflict
                reason = "conflict: " + ", ".join(files[:10])
                await reject(site, by_id, mr_id, reason, "")
                plan = drop(plan, mr_id, reason)
                continue
            assert candidate is not None
            if speculated is not None and action.kind == "batch" and \
                    (speculated.mrs, speculated.candidate) == (tuple(action.mrs), candidate):
                # Gated ahead on exactly this base: the result stands, no second run.
                ok, failure, tail = speculated.ok, speculated.failure, speculated.tail
                _log.info("speculative_result_used", mrs=list(action.mrs), ok=ok,
                          candidate=short(candidate))
            elif ahead is not None and action.kind == "batch":
                ok, failure, tail = await _gate_and_speculate(site, config, action.mrs,
                                                              candidate, ahead)
            else:
                # A chain's step gates one MR more: only its record says so (the ones
                # before it keep their own candidate and log).
                ok, failure, tail = await _gate(site, config, action.mrs, candidate,
                                                marked=action.mrs[-1:] if each else None)
            speculated = None
            if not ok:
                # The last red run holds the culprit (bisection only narrows onto it).
                last_failure, last_tail = failure, tail
            else:
                green[tuple(action.mrs)] = candidate
            plan = record_test(plan, ok)
            if each:
                site.note_step(time.monotonic() - started)
                if ok and isinstance(next_action(plan), Test) and \
                        await off_thread(git.is_pristine, site.clone):
                    # The gates left the tree as they found it: the next MR is rebased
                    # onto this candidate where it stands, no checkout, no clean.
                    site.candidate_ready = candidate
        elif isinstance(action, Land):
            candidate = green[tuple(action.mrs)]
            await _land(site, action.mrs, candidate, state, by_id)
            state, green = BatchState(base=candidate), {}
            plan = record_done(plan)
        elif isinstance(action, Reject):
            _log.info("culprit_found", mr=action.mr, plan_reason=action.reason)
            await reject(site, by_id, action.mr, last_failure, last_tail)
            plan = record_done(plan)


async def _gate_and_speculate(site: MergeSite, config: RigConfig, mrs: Sequence[str],
                              candidate: str, ahead: Ahead) -> tuple[bool, str, str]:
    """:func:`_gate` on ``candidate`` while ``ahead`` is gated on top of it; a red
    ``candidate`` cancels that run (its gates are killed as a group, nothing recorded)."""
    spec_scope = trio.CancelScope()

    async def run_ahead() -> None:
        with spec_scope:
            await speculate(site, config, ahead, candidate)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_ahead)
            ok, failure, tail = await _gate(site, config, mrs, candidate)
            if not ok:
                spec_scope.cancel()
    except BaseExceptionGroup as group:  # speculate() raises nothing of its own
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    if spec_scope.cancelled_caught:
        ahead.discarded += 1
        _log.info("speculation_discarded", mrs=list(ahead.mrs), under=list(mrs))
    return ok, failure, tail


async def speculate(site: MergeSite, config: RigConfig, ahead: Ahead, base: str) -> None:
    """Stack ``ahead``'s MRs on ``base`` in the second checkout and gate them; the result
    goes to ``ahead.result``. A conflict or an error leaves no result (the batch is then
    built and gated as usual when its turn comes)."""
    ahead.started += 1
    ahead.result = None
    mrs = list(ahead.mrs)
    _log.info("speculation_started", mrs=mrs, base=short(base))
    try:
        checkout = await prepare_checkout(site, base)
        state = BatchState(base=base)
        candidate, conflict = await _stack(site, state, mrs, ahead.by_id, checkout=checkout)
        if candidate is None:
            _log.info("speculation_conflict", mrs=mrs, conflict=conflict)
            return
        fault_point(site.role, "merge.speculating")
        ok, failure, tail = await _gate(site, config, mrs, candidate, checkout=checkout)
    except (GastownError, OSError) as exc:
        _log.warning("speculation_failed", mrs=mrs, error=str(exc))
        return
    ahead.result = Speculated(mrs=tuple(mrs), base=base, candidate=candidate, ok=ok,
                              failure=failure, tail=tail, tips=dict(state.tips))
    _log.info("speculation_finished", mrs=mrs, ok=ok, candidate=short(candidate))


async def _stack(site: MergeSite, state: BatchState, mrs: Sequence[str],
                 by_id: dict[str, MergeRequest], *, checkout: Path | None = None,
                 ) -> tuple[str | None, tuple[str, list[str]] | None]:
    """The candidate for ``base + mrs``, built by rebasing each MR onto the previous tip
    in ``checkout`` (the refinery's own by default).

    Returns ``(commit, None)``, or ``(None, (mr_id, files))`` for the first MR that
    conflicts. Prefixes already built for this base are reused.
    """
    own = checkout is None
    where = site.clone if checkout is None else checkout
    tip = state.base
    prefix: tuple[str, ...] = ()
    for mr_id in mrs:
        prefix = (*prefix, mr_id)
        if prefix in state.tips:
            tip = state.tips[prefix]
            continue
        mr = by_id[mr_id]
        await site.store.call(site.store.store.set_merge_step, [mr_id], "rebasing")
        if own:
            site.state.current = {"mrs": list(mrs), "step": "rebasing", "mr": mr_id}
            fault_point(site.role, "merge.before_rebase")
        head = mr.head or await off_thread(git.rev, where, mr.branch)
        if not head:
            return None, (mr_id, ["(branch missing)"])
        # A pristine tree stays pristine through the checkout and the rebase: the gates
        # can then run on the candidate as it is (see _gate).
        pristine = own and (site.checkout_clean or site.candidate_ready is not None)
        if own:
            site.checkout_clean, site.candidate_ready = False, None
        try:
            new_tip, files = await off_thread(git.rebase_detached, where, head, tip,
                                              pristine=pristine)
        except GastownError:
            if not await off_thread(git.rev, where, head):  # asked only when it failed
                return None, (mr_id, ["(branch missing)"])
            raise
        if new_tip is None:
            return None, (mr_id, files)
        if pristine:
            site.candidate_ready = new_tip
        state.tips[prefix] = new_tip
        tip = new_tip
    return tip, None


async def _gate(site: MergeSite, config: RigConfig, mrs: Sequence[str],
                candidate: str, *, checkout: Path | None = None,
                marked: Sequence[str] | None = None) -> tuple[bool, str, str]:
    """Run the gates on ``candidate`` in ``checkout`` (the refinery's own by default):
    (passed, ``gate <name> (<why>)``, output tail). The records of ``marked`` (default:
    all ``mrs``) say they are being gated, on this candidate, with this log."""
    store = site.store
    marked = list(mrs if marked is None else marked)
    own = checkout is None
    where = site.clone if checkout is None else checkout
    ready = own and site.candidate_ready == candidate  # rebased here, still pristine
    if own:
        site.checkout_clean, site.candidate_ready = False, None  # the gates touch it
    if not ready:
        await off_thread(git.checkout_detached, where, candidate)
    log_path = site.town.logs_dir / "mq" / f"{site.rig}-{mrs[-1]}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    await store.call(store.store.set_merge_step, marked, "gating",
                     candidate=candidate, log_path=str(log_path))
    if own:
        fault_point(site.role, "merge.before_gates")
    env = dict(os.environ)
    env.update({"GASTOWN_RIG": site.rig, "GASTOWN_MRS": " ".join(mrs),
                "GASTOWN_CANDIDATE": candidate, **site.gate_tag()})
    gates = await off_thread(gates_with_setup, site.town, site.rig, config, where, env)
    async with trio.open_nursery() as nursery:

        def on_gate(name: str) -> None:
            if own:
                site.state.current = {"mrs": list(mrs), "step": "gating", "gate": name,
                                      "candidate": short(candidate)}
            _log.info("gate_started", gate=name, mrs=list(mrs), candidate=short(candidate),
                      speculative=not own)
            nursery.start_soon(partial(store.call, store.store.set_merge_step,
                                       marked, "gating", gate=name))

        results = await run_gates(gates, cwd=where,
                                  log_path=log_path, env=env, on_gate=on_gate)
    if own:
        fault_point(site.role, "merge.after_gates")
    failed = [r for r in results if not r.ok]
    if failed:
        gate = failed[0]
        why = "timed out" if gate.timed_out else f"exit {gate.exit_code}"
        _log.info("gate_failed", gate=gate.name, why=why, mrs=list(mrs))
        return False, f"gate {gate.name} ({why})", gate.tail
    _log.info("gates_passed", mrs=list(mrs), candidate=short(candidate))
    return True, "", ""


async def _land(site: MergeSite, mrs: Sequence[str], candidate: str, state: BatchState,
                by_id: dict[str, MergeRequest]) -> None:
    """Land the tested candidate (:func:`.landing.land`), then record its MRs merged, each
    as its own commit on the branch (the candidate is the last one's)."""
    await land(site, mrs, candidate, state.base)
    for count, mr_id in enumerate(mrs, start=1):
        commit = state.tips.get(tuple(mrs[:count]), candidate)
        await site.store.call(site.store.store.merge_landed, mr_id, commit)
        by_id.pop(mr_id, None)
        site.state.merged += 1
        _log.info("mr_merged", mr=mr_id, commit=short(commit))


async def fail_batch(site: MergeSite, by_id: dict[str, MergeRequest], reason: str) -> None:
    """Reject every MR still in the batch with ``reason`` (the refinery itself failed)."""
    _log.error("batch_failed", reason=reason, mrs=list(by_id))
    for mr_id in list(by_id):
        await reject(site, by_id, mr_id, reason, "")


async def reject(site: MergeSite, by_id: dict[str, MergeRequest], mr_id: str, reason: str,
                 tail: str) -> None:
    """Reject ``mr_id`` (it leaves ``by_id``); a polecat's conflict may be slung again."""
    mr = by_id.pop(mr_id)
    config = site.config()
    store = site.store
    await store.call(store.store.merge_rejected, mr_id, reason, tail=tail)
    site.state.rejected += 1
    _log.info("mr_rejected", mr=mr_id, bead=mr.bead, reason=reason)
    if reason.startswith("conflict") and config.merge_queue.on_conflict == "resling" \
            and mr.kind == "polecat":  # a crew conflict is for its person to resolve
        note = (f"A previous attempt at this bead ({mr.branch}) conflicted with "
                f"{config.default_branch} ({reason}). Start from the current "
                f"{config.default_branch} and redo the change so that it applies.")
        try:
            # The same agent as the attempt that conflicted, if its polecat is still known.
            try:
                agent: str | None = (await store.call(
                    store.store.polecat, site.rig, mr.polecat)).agent
            except GastownError:
                agent = None
            sling = await store.call(store.store.queue_sling, mr.bead, site.rig,
                                     agent=agent, force=True, note=note)
            _log.info("bead_reslung", bead=mr.bead, sling=sling.id)
        except GastownError as exc:
            _log.warning("resling_failed", bead=mr.bead, error=exc.message)
