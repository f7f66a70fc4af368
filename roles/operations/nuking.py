"""The one nuke: every way a polecat's life ends goes through :func:`nuke`.

Layer: operations. Four callers, one path: ``gastown polecat nuke`` (:func:`nuke_polecat`),
the witness after a merge (:func:`nuke_merged`), a spawn that failed or was interrupted
(:func:`rollback_spawn`), and ``doctor`` for a polecat whose worktree is gone
(``reconcile``). Each checks what only it knows (has the MR landed? is the spawn still
ours?), then :func:`nuke` does the same three things in the same order:

1. decide: :func:`gastown.roles.core.lifecycle.transition` says whether this event may end
   the polecat and with which effects (a refusal changes nothing);
2. :func:`carry_out` the world effects, in the lifecycle's order, each idempotent: stop
   the session, settle the token usage, remove the worktree (or, with a warm pool, clean
   it and put it back: :func:`.worktree_pool.recycle`), delete the branch (re-checked
   for unlanded commits at that moment, unless forced: work that arrived meanwhile is kept
   and the nuke stops there);
3. the store applies the row effects (bead, cancelled MRs, the name released, the row
   kept as history) and the domain event in one transaction, compare-and-set on the
   polecat's incarnation.

A crash between two steps leaves the row as it was with some world effects done; the
next pass (the witness again, ``doctor``) decides again and finishes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..adapters import git, landed
from ..adapters.agent_homes import agent_home, remove_home
from ..adapters.store import Polecat, Store
from ..adapters.town import Town
from ..core.errors import GastownError, NotFound, Refused
from ..core.lifecycle import (
    DeleteBranch,
    Effect,
    GaveUp,
    Merged,
    Nuke,
    Refusal,
    RemoveWorktree,
    SettleUsage,
    SpawnFailed,
    StopSession,
    Transition,
    transition,
)
from ..core.names import validate_name
from .polecat_done import record_done
from .polecat_sessions import (
    done_marker_path,
    prompt_path,
    session_log_path,
    session_output_tail,
    stop_polecat_session,
)
from .setup import polecat_teardown, setup_marker
from .worktree_pool import pool_size, recycle

#: How long a stopping session gets between SIGTERM and SIGKILL, by who ends it.
SESSION_GRACE = 5.0
ROLLBACK_GRACE = 2.0


class WorkKept(GastownError):
    """The nuke stopped before deleting work that has not landed; the message says what."""


def unlanded_work(town: Town, polecat: Polecat) -> list[str]:
    """What a nuke would destroy, one phrase each; empty when everything landed."""
    return _check_work(town, polecat)[0]


def _check_work(town: Town, polecat: Polecat) -> tuple[list[str], str | None]:
    """:func:`unlanded_work`, and the branch's commit that was found landed (None when
    its commits are not all landed, or the worktree is not on its branch)."""
    default = town.rig_config(polecat.rig).default_branch
    facts = landed.gather(town.refinery_clone(polecat.rig), default,
                          [f"refs/heads/{polecat.branch}"], worktree=Path(polecat.worktree),
                          at_worktree_head=True)
    return (landed.nuke_problems(facts, polecat.branch, default),
            None if facts.unlanded else facts.branch_tip)


def nuke(town: Town, store: Store, polecat: Polecat, event: Nuke | Merged | SpawnFailed, *,
         grace: float = SESSION_GRACE, requeue_sling: bool = False,
         landed_tip: str | None = None, **data: Any) -> Transition:
    """End ``polecat`` with ``event``: decide, carry out the world effects, apply the rows.

    ``landed_tip``: the branch's commit the caller verified as landed (see
    :func:`carry_out`). Raises :class:`Refused` when the lifecycle refuses,
    :class:`WorkKept` when the branch gained unlanded commits before it could be deleted
    (nothing recorded), and :class:`NotFound` when the row went away or its name was
    reused meanwhile.
    """
    decision = transition(polecat.state, event)
    if isinstance(decision, Refusal):
        raise Refused(f"polecat {polecat.rig}/{polecat.name} ({polecat.state}): "
                      f"{decision.reason}")
    carry_out(town, store, polecat, decision.effects, grace=grace, landed_tip=landed_tip)
    return store.apply_polecat_event(polecat.rig, polecat.name, event,
                                     incarnation=polecat.incarnation,
                                     requeue_sling=requeue_sling, **data)


def carry_out(town: Town, store: Store, polecat: Polecat, effects: tuple[Effect, ...], *,
              grace: float = SESSION_GRACE, landed_tip: str | None = None) -> None:
    """Perform the world effects among ``effects``, in order; row effects are the store's.

    Each effect is idempotent (a session already stopped, a worktree already gone, a
    branch already deleted are fine), so a pass interrupted half-way is finished by the
    next. Raises :class:`WorkKept` before deleting a branch with unlanded commits unless
    the nuke was forced. The branch is checked again when it is deleted: with
    ``landed_tip`` (a commit the caller found landed) by deleting it only if it still
    points there, one git command; otherwise, or when it moved, by asking git again.
    """
    clone = town.refinery_clone(polecat.rig)
    for effect in effects:
        match effect:
            case StopSession():
                # By the record (its leader's pid and start time), no search of every
                # /proc/*/environ unless there is no record: the witness searches once
                # per batch of nukes (stop_ended_strays).
                stop_polecat_session(town, polecat, grace=grace, strays=False)
            case SettleUsage():
                from .agent_turns import settle_usage

                settle_usage(town, store, polecat)
            case RemoveWorktree():
                # [polecats.teardown]: logged when it fails, never stops the nuke.
                polecat_teardown(town, store, polecat, session_log_path(town, polecat))
                if pool_size(town, polecat.rig) > 0:
                    recycle(town, polecat.rig, Path(polecat.worktree))  # or removed
                else:
                    with git.repo_lock(clone, urgent=True):
                        git.remove_worktree(clone, Path(polecat.worktree))
                for path in (prompt_path(town, polecat.rig, polecat.name),
                             done_marker_path(town, polecat.rig, polecat.name),
                             setup_marker(town, polecat)):
                    path.unlink(missing_ok=True)
                remove_home(agent_home(town, polecat.rig, polecat.name))
            case DeleteBranch(unchecked):
                with git.repo_lock(clone, urgent=True):
                    _delete_branch(town, polecat, clone, unchecked=unchecked,
                                   landed_tip=landed_tip)
            case _:
                pass  # a row effect: applied by the store with the new state


def _delete_branch(town: Town, polecat: Polecat, clone: Path, *, unchecked: bool,
                   landed_tip: str | None) -> None:
    """Delete the polecat's branch in ``clone``; unless ``unchecked``, only while all of
    it has landed."""
    if not unchecked:
        if landed_tip is not None and git.delete_branch_at(clone, polecat.branch, landed_tip):
            return
        default = town.rig_config(polecat.rig).default_branch
        facts = landed.gather(clone, default, [f"refs/heads/{polecat.branch}"])
        problems = landed.nuke_problems(facts, polecat.branch, default)
        if problems:
            raise WorkKept(f"kept branch {polecat.branch}: {'; '.join(problems)}")
    git.delete_branch(clone, polecat.branch)


# -- the four callers ---------------------------------------------------------------------


def nuke_polecat(town: Town, store: Store, rig: str, name: str, *, force: bool = False,
                 reason: str = "nuked") -> Polecat:
    """``gastown polecat nuke``: session, worktree (verified gone), branch, name.

    Without ``force`` it refuses while work has not landed (uncommitted changes, or
    commits whose patches are not on the default branch) and says which.
    """
    validate_name("rig", rig)
    validate_name("polecat", name)
    polecat = store.polecat(rig, name)
    tip = None
    try:
        problems, tip = _check_work(town, polecat)
    except GastownError as exc:
        if not force:
            raise
        problems = [f"state unknown ({exc.message})"]  # a broken worktree: force wins
    event = Nuke(force=force, landed=not problems, reason=reason)
    decision = transition(polecat.state, event)
    if isinstance(decision, Refusal):
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise Refused(f"not nuking {rig}/{name}: {decision.reason}{detail}; "
                      "use --force to discard it")
    nuke(town, store, polecat, event, forced=force, landed_tip=tip)
    return polecat


def nuke_merged(town: Town, store: Store, rig: str, name: str) -> str | None:
    """The witness's nuke after ``mr_merged``; returns why it kept the polecat, or None.

    Checks that nothing unlanded remains (uncommitted changes, or commits after the MR
    whose patches are not on the default branch): such a polecat is kept, with the
    reason recorded, for a human to look at. Otherwise the polecat's ``Merged``
    transition ends it and closes its bead.
    """
    polecat = store.polecat(rig, name)
    if not any(mr.submitted_by(polecat)
               for mr in store.merge_requests_of(rig, name, ["merged"],
                                                 incarnations=[polecat.incarnation])):
        return "its merge request has not landed"
    problems, tip = _check_work(town, polecat)
    if problems:
        reason = f"merged, but kept: {'; '.join(problems)}"
        store.note_polecat(rig, name, reason)
        return reason
    try:
        nuke(town, store, polecat, Merged(), landed_tip=tip)
    except WorkKept as exc:
        reason = f"merged, but {exc.message}"
        store.note_polecat(rig, name, reason)
        return reason
    return None


def nuke_stale(town: Town, store: Store, polecat: Polecat, *, reason: str,
               grace: float) -> None:
    """``doctor``'s nuke of a polecat whose worktree is gone: forced, with the MRs
    cancelled; the caller checked (under the repository lock) that its branch holds
    nothing unlanded."""
    nuke(town, store, polecat, Nuke(force=True, reason=reason), grace=grace, doctor=True)


def rollback_spawn(town: Town, store: Store, polecat: Polecat, reason: str, *,
                   requeue_sling: bool = False) -> str | None:
    """Undo a spawn completely: session, worktree, branch, files, then the row (and with
    ``requeue_sling``, its sling back in the queue in the row's transaction).

    Returns None when it did. Work is never deleted: if the agent already committed
    something that has not landed (or the state of the worktree cannot be read), the
    branch and worktree stay and the polecat is submitted as done with a merge request
    (clean tree, commits ahead) or escalated with the reason; a polecat that is no
    longer ``spawning`` (its agent ran ``done`` meanwhile) is left alone. Then it
    returns what it kept, one line.
    """
    current = _still_spawning(store, polecat)
    if isinstance(current, str):
        return current
    stop_polecat_session(town, current, grace=ROLLBACK_GRACE)
    current = _still_spawning(store, polecat)  # its agent may have run `done` meanwhile
    if isinstance(current, str):
        return current
    try:
        problems = unlanded_work(town, current)
    except GastownError as exc:
        problems = [f"its worktree could not be checked ({exc.message})"]
    if problems:
        return _keep_spawned_work(town, store, current, reason, problems)
    try:
        nuke(town, store, current, SpawnFailed(reason), grace=ROLLBACK_GRACE,
             requeue_sling=requeue_sling)
    except WorkKept as exc:
        return _keep_spawned_work(town, store, current, reason, [exc.message])
    except NotFound:
        return "already gone"
    return None


def _still_spawning(store: Store, polecat: Polecat) -> Polecat | str:
    """The polecat's row while this spawn still owns it, else why not (one phrase)."""
    try:
        current = store.polecat(polecat.rig, polecat.name)
    except NotFound:
        return "already gone"
    if current.incarnation != polecat.incarnation:
        return "already gone (its name was reused)"
    if current.state != "spawning":
        return f"already {current.state}"
    return current


def _keep_spawned_work(town: Town, store: Store, polecat: Polecat, reason: str,
                       problems: list[str]) -> str:
    """A spawn that cannot be undone without losing work: submit it, or escalate it."""
    what = "; ".join(problems)
    try:
        result = record_done(town, store, polecat.rig, polecat.name, "completed")
    except GastownError as exc:
        why = f"{reason}; kept, not rolled back: {what}"
        store.apply_polecat_event(polecat.rig, polecat.name, GaveUp(why),
                                  output_tail=session_output_tail(town, polecat))
        return f"escalated, work kept ({what}; not submitted: {exc.message})"
    mr = result.merge_request.id if result.merge_request else "-"
    return f"its committed work was kept and submitted as {mr} ({what})"
