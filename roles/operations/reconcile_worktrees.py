"""``gastown doctor``'s checks of polecat worktrees: git's worktree registry, the
polecat folders that have no row, the warm pool's leftovers (``<rig>/pool``), and a pool
whose setup stopped after failing.

Layer: roles operations, called by :mod:`.reconcile` (the driver). Stale registry entries
are pruned; an orphan folder is removed only when it holds nothing unlanded (a dirty
tree or unlanded commits keep it), a half-created one (no ``.git``) always.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..adapters import git, landed
from ..adapters.agent_homes import agent_home, remove_home
from ..core.errors import GastownError
from . import worktree_pool
from .polecat_sessions import done_marker_path, prompt_path
from .pool_setup import PoolSetup
from .reconcile_findings import (
    Ctx,
    Finding,
    RigView,
    kept,
    real_path,
    record,
    repair,
    row_exists,
)


def check_stale_git_worktrees(ctx: Ctx, rig: RigView) -> list[Finding]:
    """``git worktree list`` entries whose folder is gone: ``git worktree prune``.

    Only entries git itself calls prunable: a locked entry (a ``worktree add`` still
    running) is left alone. Pruning drops bookkeeping only; branches are untouched.
    """
    stale = [w for w in git.list_worktrees(rig.clone) if w.prunable and not w.path.exists()]
    if not stale:
        return []

    def prune() -> None:
        with git.repo_lock(rig.clone):
            git.prune_worktrees(rig.clone)

    findings = []
    for index, entry in enumerate(stale):
        detail = (f"git still lists a worktree{f' on {entry.branch}' if entry.branch else ''}"
                  " whose folder is gone")
        if index == 0:
            findings.append(repair(ctx, rig.name, "stale_git_worktree", str(entry.path),
                                   detail, todo="git worktree prune",
                                   done="pruned (git worktree prune)", do=prune))
        else:  # one prune repairs them all
            findings.append(record(ctx, Finding(rig.name, "stale_git_worktree",
                                                str(entry.path), detail,
                                                findings[0].action, findings[0].fixed)))
    return findings


def check_orphan_folders(ctx: Ctx, rig: RigView) -> list[Finding]:
    """Polecat folders without a row: removed when they hold nothing unlanded.

    A registered worktree with a dirty tree or unlanded commits is kept. A folder that is
    no git worktree at all (empty, or without ``.git``: a half-created spawn) is removed,
    since git run inside it would act on whatever repository lies above (upstream #698).
    A folder with a ``.git`` that is not a worktree of the refinery clone is kept.
    """
    if not rig.polecats_dir.is_dir():
        return []
    entries = sorted(p for p in rig.polecats_dir.iterdir() if not p.name.startswith("."))
    if not entries:
        return []
    registered = {real_path(w.path): w for w in git.list_worktrees(rig.clone)}
    rows = {p.name for p in ctx.store.polecats(rig.name)}
    findings = []
    for path in entries:
        if path.name in rows:
            continue
        worktree = registered.get(real_path(path))
        if worktree is not None:
            findings.append(_orphan_worktree(ctx, rig, path, worktree))
        elif path.is_symlink() or not path.is_dir():
            findings.append(kept(ctx, rig.name, "orphan_worktree", str(path),
                                 "not a folder, and no polecat has that name",
                                 "not a polecat folder; remove it by hand",
                                 polecat=path.name))
        elif (path / ".git").exists():
            findings.append(kept(ctx, rig.name, "orphan_worktree", str(path),
                                 f"has a .git but is not a worktree of {rig.clone}",
                                 "not ours to judge; inspect and remove it by hand",
                                 polecat=path.name))
        else:
            empty = not any(path.iterdir())
            findings.append(repair(
                ctx, rig.name, "half_created", str(path),
                f"{'empty folder' if empty else 'folder without .git'}, no polecat row "
                "(git run in it would act on the repository above)",
                todo="remove the folder", done="removed the folder",
                do=partial(_remove_orphan_folder, ctx, rig, path), polecat=path.name))
    return findings


def _remove_orphan_folder(ctx: Ctx, rig: RigView, path: Path,
                          branch: str | None = None) -> str | None:
    """Remove ``path`` (and ``branch``) under the repository lock, re-checking that it is
    still an orphan: a spawn may have claimed the name since the listing."""
    with git.repo_lock(rig.clone):
        if row_exists(ctx.store, rig.name, path.name):
            return "left alone: a polecat of that name appeared meanwhile"
        git.remove_worktree(rig.clone, path)
        if branch is not None:
            git.delete_branch(rig.clone, branch)
    for extra in (prompt_path(ctx.town, rig.name, path.name),
                  done_marker_path(ctx.town, rig.name, path.name)):
        extra.unlink(missing_ok=True)
    remove_home(agent_home(ctx.town, rig.name, path.name))
    return None


def _orphan_worktree(ctx: Ctx, rig: RigView, path: Path, worktree: git.Worktree) -> Finding:
    on = worktree.branch or f"detached {worktree.head[:10] if worktree.head else 'HEAD'}"
    detail = f"worktree on {on}, no polecat row"
    try:
        facts = landed.gather(rig.clone, rig.default_branch,
                              [worktree.branch or worktree.head], worktree=path)
    except GastownError as exc:
        return kept(ctx, rig.name, "orphan_worktree", str(path), detail,
                    f"its state cannot be read ({exc.message})", polecat=path.name)
    problems = landed.kept_problems(facts, on)
    if problems:
        return kept(ctx, rig.name, "orphan_worktree", str(path), detail,
                    f"has {' and '.join(problems)}", polecat=path.name)
    # Only a polecat branch goes with the folder; any other branch is someone else's.
    branch = worktree.branch if rig.polecat_of(worktree.branch) is not None else None
    what = f"worktree and branch {branch}" if branch else "worktree"
    return repair(ctx, rig.name, "orphan_worktree", str(path), detail,
                  todo=f"remove the {what}", done=f"removed the {what} (nothing unlanded)",
                  do=lambda: _remove_orphan_folder(ctx, rig, path, branch),
                  polecat=path.name)


def check_pool_leftovers(ctx: Ctx, rig: RigView) -> list[Finding]:
    """The warm pool's folder (``<rig>/pool``): trees a crashed process left half-made.

    A pool tree never holds anyone's work (a polecat's tree enters the pool only after
    the nuke that ended it, and a tree leaves it before it gets a branch), so a busy
    folder whose worker died (its lock is free) is removed. Busy folders whose lock is
    held are at work and left alone, whether the town is up or not; ready trees are the
    mayor's to tend, not orphans.
    """
    pool = ctx.town.pool_dir(rig.name)
    findings = []
    for busy in worktree_pool.leftovers(pool):
        findings.append(repair(
            ctx, rig.name, "pool_leftover", str(pool / busy),
            "a pool tree a crashed process left half-made (its lock is free)",
            todo="remove it", done="removed it",
            do=partial(_remove_pool_leftover, rig.clone, pool, busy)))
    return findings


def check_pool_setup(ctx: Ctx, rig: RigView) -> list[Finding]:
    """A pool that stopped preparing trees because its setup failed too often in a row
    with the settings in force: a person must fix ``[polecats.setup]`` (the pool fills
    again when the settings change); meanwhile slings run the setup themselves."""
    try:
        pool = PoolSetup(ctx.town, rig.name)
    except GastownError:
        return []  # a broken rig.toml: reported where the configuration is read
    if not pool.stopped():
        return []
    failures = pool.failures()
    reason = failures.reason if failures is not None else "unknown"
    count = failures.count if failures is not None else 0
    return [kept(ctx, rig.name, "pool_setup_stopped", str(pool.failures_path),
                 f"the pool's [polecats.setup] failed {count} times in a row ({reason}); "
                 "no tree is prepared until the settings change",
                 f"fix [polecats.setup] in {rig.name}/rig.toml, or set in_pool = false; "
                 f"its output is in {pool.log_path}")]


def _remove_pool_leftover(clone: Path, pool: Path, busy: str) -> str | None:
    if worktree_pool.remove_leftover(clone, pool, busy):
        return None
    return "left alone: a process took it up meanwhile"
