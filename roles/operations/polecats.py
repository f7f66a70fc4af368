"""Polecat sandboxes: spawn (worktree + agent session), respawn, and spawn recovery.

Layer: operations, used by the mayor (spawns), the witness (respawns) and the CLI.
Synchronous: trio callers run these in a worker thread. ``done`` is
:mod:`.polecat_done`'s, the nuke and the spawn rollback :mod:`.nuking`'s, the session and
its files :mod:`.polecat_sessions`'.

Crash safety, step by step. A spawn first *reserves* the polecat in the store (one
transaction: name, row in ``spawning``, bead ``hooked``, sling dispatched), then creates
the worktree and branch under the repository lock, then starts the session, then marks
the polecat ``working``. A failure at any step rolls all of it back; a process killed at
any step leaves a ``spawning`` row, which :func:`recover_spawning` rolls back (or
completes, if the session did start) when the mayor starts again. Git and the session
are always undone *before* the store forgets the polecat, so nothing on disk is ever
left without a row pointing at it. A rollback never deletes work: a branch with
commits that have not landed is kept and submitted (or escalated), not removed.

A failure before the polecat is reserved (an unknown agent, a bad rig) fails the sling:
a sling is either queued or failed, never both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..adapters import git
from ..adapters.agents import (
    load_presets,
    resolve_agent,
)
from ..adapters.faults import fault_point
from ..adapters.store import Polecat, Sling, Store
from ..adapters.town import Town
from ..core.errors import GastownError, NotFound
from ..core.lifecycle import (
    SessionStarted,
)
from ..core.names import DEFAULT_POLECAT_NAMES
from .nuking import rollback_spawn
from .polecat_sessions import (
    adopt_unrecorded_session,
    session_alive,
    session_log_path,
    start_agent_session,
    stop_polecat_session,
)
from .pool_setup import prepared_for_sling
from .setup import SetupFailed, discard_setup, polecat_setup
from .worktree_pool import take, worktree_gitdir

if TYPE_CHECKING:
    from ..adapters.sessions import SessionInfo


def spawn_polecat(town: Town, store: Store, sling: Sling, *, process: str = "mayor",
                  ) -> Polecat | None:
    """Dispatch a queued sling: a new polecat with its worktree and a running session.

    Returns None (and changes nothing) when the rig or the town has no free slot.
    Raises on failure after rolling everything back: no folder, no branch, no row,
    the bead ``open`` again with the reason, the sling ``failed``. The two halves,
    :func:`reserve_spawn` and :func:`build_spawn`, let the mayor reserve in queue order
    and build several polecats at once.
    """
    polecat = reserve_spawn(town, store, sling)
    if polecat is None:
        return None
    return build_spawn(town, store, sling, polecat, process=process)


def reserve_spawn(town: Town, store: Store, sling: Sling,
                  full: list[str] | None = None) -> Polecat | None:
    """The spawn's first step, quick and in queue order: a name and a ``spawning`` row.

    Returns None (and changes nothing) when the rig or the town has no free slot (``full``
    gets which, see :meth:`Store.reserve_polecat`); a
    failure here (an unknown agent, a broken rig) fails the sling, once, and raises.
    """
    try:
        rig_config = town.rig_config(sling.rig)
        town_config = town.config
        agent_name, _ = resolve_agent(sling.agent, town_config, load_presets())
        polecats_dir = town.polecats_dir(sling.rig)
        # A name is also held while its folder or its branch exists (an orphan, or work a
        # failed nuke left): a rollback may then delete the branch it made, and only that.
        on_disk = {p.name for p in polecats_dir.iterdir() if not p.name.startswith(".")}
        on_disk |= names_with_branches(town.refinery_clone(sling.rig),
                                       rig_config.polecats.branch_template)
        return store.reserve_polecat(
            sling.id, pool=rig_config.polecats.names or DEFAULT_POLECAT_NAMES,
            branch_template=rig_config.polecats.branch_template,
            polecats_dir=str(polecats_dir), agent=agent_name, rig_cap=rig_config.polecats.max,
            town_cap=town_config.max_polecats, also_held=on_disk, full=full)
    except Exception as exc:  # nothing was made yet: the sling fails, once, and leaves the queue
        store.fail_sling(sling.id, exc.message if isinstance(exc, GastownError) else
                         f"{type(exc).__name__}: {exc}")
        raise


def build_spawn(town: Town, store: Store, sling: Sling, polecat: Polecat, *,
                process: str = "mayor") -> Polecat:
    """The rest of a reserved spawn: worktree, session, ``working``; rolled back on failure.

    Polecats of one rig add their worktrees one at a time (the repository lock); their
    sessions, and polecats of other rigs, start side by side. With a warm pool
    (``polecats.pool_size``) the worktree is a pooled tree moved into place
    (:func:`.worktree_pool.take`); without a ready one it is added as usual.
    """
    fault_point(process, "sling.after_reserve")
    try:
        rig_config = town.rig_config(sling.rig)
        clone = town.refinery_clone(sling.rig)
        tree = Path(polecat.worktree)
        with git.repo_lock(clone):
            taken = rig_config.polecats.pool_size > 0 and take(
                clone, town.pool_dir(sling.rig), tree, polecat.branch,
                rig_config.default_branch, process=process)
            if not taken:
                git.add_worktree(clone, tree, polecat.branch, rig_config.default_branch)
        fault_point(process, "sling.after_worktree")
        # Port, files, setup command (README, "Worktree setup"): before the agent starts;
        # a pool tree set up when it was prepared gets only its port.
        polecat = polecat_setup(town, store, polecat, session_log_path(town, polecat),
                                prepared=taken and prepared_for_sling(
                                    town, sling.rig, tree, worktree_gitdir(tree)))
        fault_point(process, "sling.after_setup")
        start_agent_session(town, store, polecat, note=sling.note, process=process)
        fault_point(process, "sling.after_session")
        _mark_working(store, polecat)
    except BaseException as exc:
        reason = f"sling failed: {exc}"
        if isinstance(exc, SetupFailed) and exc.tail:
            reason += f"\n{exc.tail}"  # the bead keeps the setup's output tail
        if rollback_spawn(town, store, polecat, reason) is None:
            store.fail_sling(sling.id, str(exc))
        raise
    try:
        return store.polecat(polecat.rig, polecat.name)
    except NotFound:  # its agent was done, merged and nuked before we looked again
        return polecat


def _mark_working(store: Store, polecat: Polecat) -> None:
    """The spawn's last step; a no-op when the agent was faster (``done`` already ran)."""
    try:
        store.apply_polecat_event(polecat.rig, polecat.name, SessionStarted())
    except NotFound:
        pass  # done, merged and nuked already: nothing left to mark


def names_with_branches(clone: Path, template: str) -> set[str]:
    """Polecat names whose branch (per ``template``) exists in ``clone``."""
    head, _, tail = template.partition("{name}")
    found = set()
    for branch in git.local_branches(clone):
        if branch.startswith(head) and branch.endswith(tail) and len(branch) > len(head + tail):
            found.add(branch[len(head):len(branch) - len(tail)])
    return found


def recover_spawning(town: Town, store: Store) -> list[str]:
    """Finish or undo spawns interrupted by a crash; returns what was done, one line each.

    A ``spawning`` polecat whose session is alive only missed its last step: it becomes
    ``working``. Any other is rolled back and its sling queued again, so the user's
    request still happens, unless its agent already committed work: that is kept and
    submitted (see :func:`rollback_spawn`), and the sling stays dispatched.
    """
    done: list[str] = []
    for polecat in store.polecats(states={"spawning"}):
        if session_alive(polecat):
            _mark_working(store, polecat)
            done.append(f"{polecat.rig}/{polecat.name}: session alive, now working")
            continue
        adopted = adopt_unrecorded_session(town, store, polecat)
        if adopted is not None:
            _mark_working(store, adopted)
            done.append(f"{polecat.rig}/{polecat.name}: session alive (pid "
                        f"{adopted.session['pid'] if adopted.session else '?'}) but never "
                        "recorded: adopted, now working")
            continue
        # A setup the crash interrupted: its processes stopped, its files discarded.
        interrupted = discard_setup(town, polecat)
        why = "interrupted during its setup" if interrupted else "interrupted while spawning"
        kept = rollback_spawn(town, store, polecat, why, requeue_sling=True)
        if kept is not None:
            done.append(f"{polecat.rig}/{polecat.name}: not rolled back: {kept}")
            continue
        done.append(f"{polecat.rig}/{polecat.name}: half-created, rolled back")
    return done


def respawn_session(town: Town, store: Store, rig: str, name: str) -> SessionInfo:
    """Start a stalled polecat's agent again in the same worktree, told what happened."""
    from ..core.lifecycle import Respawned

    polecat = store.polecat(rig, name)
    stop_polecat_session(town, polecat, grace=2.0)  # leftovers of the dead session
    note = ("Your previous session ended without `gastown done`. Your worktree and any "
            "commits you made are still here: check `git status` and `git log`, finish the "
            "work, commit, then run `gastown done`.")
    info = start_agent_session(town, store, polecat, note=note, respawn=True, resume=True)
    store.apply_polecat_event(rig, name, Respawned(), respawns=polecat.respawns + 1)
    return info
