"""``gastown doctor``: compare what is on disk, in git and running with the store, and repair.

Per rig it compares the polecat folders (``<rig>/polecats/*``), the store's polecat rows,
``git worktree list`` of the refinery clone, the ``polecat/*`` branches, and the live
sessions (tmux sessions of the town's server, processes tagged with the polecat's
``GASTOWN_*`` environment); town-wide it looks at ``.runtime/staging`` leftovers.
Each check is one function returning :class:`Finding` values; with ``fix`` it also
repairs what it found, records a ``doctor_fixed`` domain event and logs it.

What it must never do: delete work that has not landed. A worktree with uncommitted
changes, a branch or merge request whose commits are not on the default branch (by patch
equivalence, ``git cherry``) is reported and kept ("kept: ..."), never removed. Nor does it
touch what a running town is in the middle of: ``spawning`` polecats belong to the mayor
and ``running`` merge requests to the refinery while the supervisor is up.

Order matters and is fixed: stale git worktree entries are pruned first (so the registry
is true), landed merge requests are settled before stale rows are nuked (a nuke cancels
open merge requests), and branches are looked at after folders and rows (whose repairs
delete branches). Every listing is taken *before* the rows it is compared with, because
the town creates a row before the folder, branch or session it stands for, and removes
them before the row: an object seen first whose row is then missing is really orphaned.

Layer: roles operations. This module is the driver: it runs the checks in that order,
one rig at a time, and holds the stale-registration check (rows whose folder is gone)
with its nuke. The other families of checks live beside it: worktrees and folders
(:mod:`.reconcile_worktrees`), landed merge requests and branches
(:mod:`.reconcile_branches`), sessions and processes (:mod:`.reconcile_sessions`),
staging leftovers (:mod:`.reconcile_staging`), and what a finding is and how it is
reported, repaired or kept (:mod:`.reconcile_findings`).

Synchronous and blocking (git, tmux, ``/proc``); trio callers use a worker thread.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Final

from ..adapters import git, landed
from ..adapters.store import Polecat, Store
from ..adapters.town import Town
from ..adapters.town_lock import read_supervisor
from ..core.errors import GastownError, NotFound
from .nuking import nuke_stale
from .polecat_sessions import stop_polecat_session
from .reconcile_branches import check_landed_mrs, check_orphan_branches
from .reconcile_findings import STOP_GRACE, Ctx, RigView, kept, repair
from .reconcile_findings import Finding as Finding
from .reconcile_findings import row_exists as _row_exists
from .reconcile_findings import unlanded as _unlanded
from .reconcile_sessions import check_orphan_sessions
from .reconcile_staging import check_staging_leftovers
from .reconcile_worktrees import (
    check_orphan_folders,
    check_pool_leftovers,
    check_pool_setup,
    check_stale_git_worktrees,
)

#: The finding kinds, in the order the checks run.
KINDS: Final = ("missing_clone", "stale_git_worktree", "landed_mr", "orphan_worktree",
                "half_created", "stale_registration", "orphan_branch", "pool_leftover",
                "pool_setup_stopped",
                "orphan_session", "staging_leftover")


def reconcile(town: Town, store: Store, *, rig: str | None = None, fix: bool = False,
              town_up: bool | None = None) -> list[Finding]:
    """Find (and with ``fix``, repair) orphans and stale registrations; returns the findings.

    ``rig`` limits the checks to one rig (town-wide staging leftovers of other rigs are
    skipped). ``town_up`` says whether a supervisor runs; by default it is asked
    (``read_supervisor``). A repair that fails is reported with ``fixed`` False and the
    error as its action; the other checks still run. Raises :class:`NotFound` for an
    unknown ``rig``. Nothing unlanded is ever deleted, whatever ``fix`` says.
    """
    if town_up is None:
        town_up = read_supervisor(town.runtime_dir) is not None
    ctx = Ctx(town=town, store=store, fix=fix, town_up=town_up)
    rig_names = [store.rig(rig).name] if rig is not None else [r.name for r in store.rigs()]
    findings: list[Finding] = []
    checked: list[str] = []
    for name in rig_names:
        view = _rig_view(ctx, name)
        if isinstance(view, Finding):
            findings.append(view)
            continue
        checked.append(name)
        findings += check_stale_git_worktrees(ctx, view)
        findings += check_landed_mrs(ctx, view)
        findings += check_orphan_folders(ctx, view)
        findings += check_stale_registrations(ctx, view)
        findings += check_orphan_branches(ctx, view)
        findings += check_pool_leftovers(ctx, view)
        findings += check_pool_setup(ctx, view)
    findings += check_orphan_sessions(ctx, checked, all_rigs=[r.name for r in store.rigs()])
    findings += check_staging_leftovers(ctx, rig)
    return findings


def _rig_view(ctx: Ctx, name: str) -> RigView | Finding:
    clone = ctx.town.refinery_clone(name)
    try:
        config = ctx.town.rig_config(name)
    except GastownError as exc:
        return Finding(name, "missing_clone", str(ctx.town.rig_config_path(name)),
                       f"the rig's configuration cannot be read: {exc.message}", None, False)
    if not (clone / ".git").exists():
        return Finding(name, "missing_clone", str(clone),
                       "the rig is registered but its refinery clone is missing; "
                       "nothing of it can be checked", None, False)
    return RigView(name=name, clone=clone, default_branch=config.default_branch,
                template=config.polecats.branch_template,
                polecats_dir=ctx.town.polecats_dir(name))


# -- polecat rows ----------------------------------------------------------------------


def check_stale_registrations(ctx: Ctx, rig: RigView) -> list[Finding]:
    """Polecat rows whose folder is gone: nuked (forced) when nothing unlanded remains.

    The work of such a polecat can still live in its branch, or in the head of an open
    merge request: then the row is kept and reported. ``spawning`` rows belong to the
    mayor while the town is up; when it is down they are reported (the mayor rolls them
    back at the next ``up``). A polecat whose merge request the refinery is running is
    left to the refinery while the town is up.
    """
    findings = []
    rows = ctx.store.polecats(rig.name)
    if not rows:
        return []
    open_mrs = ctx.store.merge_requests_in(rig.name, ["queued", "running"])
    for polecat in rows:
        if polecat.state == "spawning":
            if not ctx.town_up:
                findings.append(kept(ctx, rig.name, "half_created", polecat.name,
                                     "polecat is still 'spawning' while the town is down",
                                     "the mayor rolls it back at the next 'gastown up'",
                                     polecat=polecat.name))
            continue
        if Path(polecat.worktree).exists():
            continue
        mrs = [m for m in open_mrs if m.kind == "polecat" and m.polecat == polecat.name]
        if ctx.town_up and any(m.state == "running" for m in mrs):
            continue
        detail = f"{polecat.state} polecat's worktree {polecat.worktree} is gone"
        try:
            unmerged = _unlanded(rig, polecat.branch)
            mr_unmerged = [m for m in mrs if _unlanded(rig, m.head)]
        except GastownError as exc:
            findings.append(kept(ctx, rig.name, "stale_registration", polecat.name, detail,
                                 f"its branch cannot be read ({exc.message})",
                                 polecat=polecat.name))
            continue
        if unmerged or mr_unmerged:
            why = (f"branch {polecat.branch} has "
                   f"{landed.plural(len(unmerged), 'unmerged commit')}; the work lives there "
                   f"(recreate the worktree with 'git worktree add {polecat.worktree} "
                   f"{polecat.branch}', or nuke with --force)" if unmerged else
                   f"merge request {mr_unmerged[0].id} has not landed yet")
            findings.append(kept(ctx, rig.name, "stale_registration", polecat.name, detail,
                                 why, polecat=polecat.name))
            continue
        findings.append(repair(
            ctx, rig.name, "stale_registration", polecat.name, detail,
            todo=f"nuke the row (session, branch {polecat.branch}, name)",
            done=f"nuked (branch {polecat.branch} held nothing unlanded; name released)",
            do=partial(_nuke_stale, ctx, rig, polecat), polecat=polecat.name))
    return findings


def _nuke_stale(ctx: Ctx, rig: RigView, polecat: Polecat) -> str | None:
    """Nuke a polecat whose folder is gone, re-checking under the repository lock, then
    through the one nuke path (:func:`~gastown.roles.operations.nuking.nuke`)."""
    stop_polecat_session(ctx.town, polecat, grace=STOP_GRACE)
    with git.repo_lock(rig.clone):
        if Path(polecat.worktree).exists():
            return "left alone: its worktree reappeared meanwhile"
        if not _row_exists(ctx.store, rig.name, polecat.name):
            return "already gone (nuked meanwhile)"
        if _unlanded(rig, polecat.branch):
            return "left alone: its branch gained unmerged commits meanwhile"
    try:
        nuke_stale(ctx.town, ctx.store, polecat, grace=STOP_GRACE,
                   reason="doctor: the polecat's worktree was gone")
    except NotFound:
        return "already gone (nuked meanwhile)"
    return None
