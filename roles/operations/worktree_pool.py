"""The warm worktree pool of a rig: fill it, take a tree for a sling, recycle a nuked
polecat's tree, follow the default branch, drain it.

Layer: roles operations (git and the file system), used by the spawn
(:mod:`.polecats`: :func:`take`), the nuke (:mod:`.nuking`: :func:`recycle`), the mayor
(:func:`tend`, in the background after slings, nukes and merges), ``doctor``
(:func:`leftovers`, :func:`remove_leftover`) and ``down --all`` (:func:`drain`). The
decisions are :mod:`gastown.roles.core.pool`'s.

On disk. ``<rig>/pool/<name>`` is a *ready* tree: a linked worktree of the rig's clone
(``<rig>/refinery/rig``), on a detached HEAD at (or, until the mayor's next pass, behind)
the default branch's tip, verified clean (``git status --porcelain --ignored`` empty, no
operation in progress) before its setup (:mod:`.pool_setup`), if any, made files. A ready
tree never holds anyone's work and never has a branch checked out (a pool tree someone
checked a branch out in by hand is no longer the pool's: left alone).
``<rig>/pool/.dirty-<name>`` is a nuked polecat's tree waiting for the mayor to clean it.
``<rig>/pool/.busy-<name>`` is a tree a process is working on, guarded by an ``flock`` on
``.busy-<name>.lock`` held for as long as it works:
a busy folder whose lock is free is the leftover of a crash, removed by the next
:func:`tend` (the mayor's, at its start and after events) or ``doctor --fix``.

Taking (the spawn, under the repository lock): ``git worktree move`` of a ready tree to
the polecat's worktree path, then ``git checkout -b <branch> <default branch>`` in it,
which writes only the files that differ from the tree's commit. Moving first means the
pool never sees a tree with a branch; a crash between the two leaves a detached tree at the
polecat's path with no branch, which the spawn's recovery rolls back like a half-made
``worktree add`` (the nuke recycles or removes it). Without a fit tree the spawn adds its
worktree as it does without a pool.

Recycling (the nuke's ``RemoveWorktree``, when the pool has room): ``git checkout
--detach`` in place (frees the branch, touches no file: a crash here leaves the polecat's
tree exactly as it was, and the next nuke pass decides again), then ``git worktree move``
to ``<rig>/pool/.dirty-<name>``: the polecat's path is gone, as after a removal, at the
cost of two quick git calls (the nuke had already decided that the contents go). The
mayor's next pass cleans it: moved to a busy folder, ``reset --hard``, ``checkout --force
--detach <tip>``, ``clean -ffdx``, verified; a tree that passes gets a new ready name (the
newest: taken first), one that does not is removed. A tree with a rebase or merge in
progress, or a pool already full (ready and dirty trees), is removed at once, as without
a pool.

Filling: ``worktree add --no-checkout --detach`` to a busy folder under the repository lock
(quick), ``reset --hard`` outside it (the slow part: the slings' lock is free meanwhile),
verification, then a move to a ready name. With a ``[polecats.setup]`` a verified tree gets
it before it is ready (:mod:`.pool_setup`). Following: a ready tree not at the tip is moved
to a busy folder, ``checkout --force --detach <tip>``, verified, moved back.

``gastown status`` does not show the pool. ``rig remove`` deletes it with the rig's folder;
``down --all`` drains it (:func:`drain`). The pool is not in the store: its changes are
logged (``pool_*``), not domain events (a fill or a follow after every merge would
drown the feed); a polecat's own events are as without a pool.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from ..adapters import git, log
from ..adapters.faults import fault_point
from ..adapters.flocks import try_flock
from ..adapters.town import Town
from ..core.errors import GastownError, GitError
from ..core.pool import (
    BUSY_PREFIX,
    DIRTY_PREFIX,
    IN_PROGRESS_STATE,
    LOCK_SUFFIX,
    PoolTree,
    busy_name,
    choose_take,
    clean_problems,
    dirty_name,
    is_ready_name,
    lock_name,
    plan_pool,
    recycle_fits,
    tree_name,
)
from .pool_setup import FAILURES_FILE, PoolSetup, stop_setup

#: Checkouts in pool trees skip Git LFS downloads, as ``git.add_worktree`` does.
CHECKOUT_ENV: Final = {"GIT_LFS_SKIP_SMUDGE": "1"}

_log = log.get_logger()


def pool_size(town: Town, rig: str) -> int:
    """The rig's ``polecats.pool_size``; 0 (no pool) when its config cannot be read."""
    try:
        return town.rig_config(rig).polecats.pool_size
    except GastownError:
        return 0


def ready_trees(pool: Path) -> list[Path]:
    """The ready trees of a pool folder, by name (oldest first). A tree with a branch
    checked out is not one: never the pool's doing (its trees are detached), so someone
    works there by hand; nothing here counts, takes or removes it."""
    try:
        return sorted(p for p in pool.iterdir()
                      if is_ready_name(p.name) and p.is_dir() and not on_branch(p))
    except FileNotFoundError:
        return []


def tree_state(path: Path) -> PoolTree:
    """A ready tree as its git files say (no git process: the spawn's lock is held)."""
    gitdir = worktree_gitdir(path)
    head = None
    if gitdir is not None:
        try:
            text = (gitdir / "HEAD").read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        if len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text):
            head = text
    return PoolTree(path.name, head)


def worktree_gitdir(path: Path) -> Path | None:
    """The worktree's own git directory (``gitdir:`` of its ``.git`` file), or None."""
    try:
        text = (path / ".git").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    gitdir = (path / text.removeprefix("gitdir:").strip()).resolve()
    return gitdir if gitdir.is_dir() else None


def on_branch(path: Path) -> bool:
    """Whether the worktree at ``path`` has a branch checked out."""
    gitdir = worktree_gitdir(path)
    try:
        return gitdir is not None and \
            (gitdir / "HEAD").read_text(encoding="utf-8").startswith("ref:")
    except OSError:
        return False


def _new_name() -> str:
    return tree_name(time.time_ns(), secrets.token_hex(3))


@contextmanager
def _busy(pool: Path, name: str) -> Iterator[Path]:
    """Hold the lock of the busy folder for ``name`` (the folder itself is the caller's)."""
    pool.mkdir(exist_ok=True)
    busy = busy_name(name)
    lock_path = pool / lock_name(busy)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield pool / busy
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def _remove(clone: Path, path: Path) -> None:
    with git.repo_lock(clone):
        git.remove_worktree(clone, path)


def _check_clean(tree: Path, expected: str, *, strict: bool = True) -> list[str]:
    """Why ``tree`` is not clean at ``expected``; not ``strict`` (a set-up tree): only
    tracked changes count, not the setup's ignored and untracked files."""
    files = ["--ignored", "--untracked-files=all"] if strict else ["--untracked-files=no"]
    status = git.run_git(["status", "--porcelain", *files], cwd=tree, op="status").splitlines()
    gitdir = worktree_gitdir(tree)
    if gitdir is None:
        return ["no git directory"]
    in_progress = [f for f in IN_PROGRESS_STATE if (gitdir / f).exists()]
    return clean_problems(status, tree_state(tree).head, expected, in_progress)


def _set_up(prep: PoolSetup, busy: Path, tip: str, problems: list[str]) -> list[str]:
    """The rig's setup in a verified tree (:mod:`.pool_setup`), then the light check."""
    return problems or prep.apply(busy, worktree_gitdir(busy), tip,
                                  lambda: _check_clean(busy, tip, strict=False))


def _settle(clone: Path, pool: Path, busy: Path, name: str, size: int,
            problems: list[str]) -> bool:
    """Put a cleaned busy tree into the pool as ``name`` (True), or remove it."""
    with git.repo_lock(clone):
        if not problems and recycle_fits(size, len(ready_trees(pool))):
            git.run_git(["worktree", "move", str(busy), str(pool / name)], cwd=clone,
                        op="worktree move")
            return True
        if problems:
            _log.warning("pool_tree_not_clean", tree=str(busy), problems=problems)
        git.remove_worktree(clone, busy)
        return False


# -- the spawn's side ----------------------------------------------------------------------


def take(clone: Path, pool: Path, dest: Path, branch: str, start: str, *,
         process: str = "mayor") -> bool:
    """Make ``dest`` the polecat's worktree on a new ``branch`` at ``start`` from a ready
    tree; False (nothing done) when the pool has none. Callers hold the repository lock.

    Raises :class:`GitError` when the tree was moved but the branch could not be made:
    ``dest`` then exists, detached, for the caller's rollback to remove.
    """
    trees = [tree_state(p) for p in ready_trees(pool)]
    if not trees:
        return False
    name = choose_take(trees, git.rev(clone, f"refs/heads/{start}"))
    if name is None:
        return False
    try:
        git.run_git(["worktree", "move", str(pool / name), str(dest)], cwd=clone,
                    op="worktree move")
    except GitError as exc:
        if dest.exists():
            raise
        _log.warning("pool_take_failed", tree=name, error=exc.message)
        return False
    fault_point(process, "sling.after_pool_take")
    git.run_git(["checkout", "--quiet", "-b", branch, start], cwd=dest, op="checkout -b",
                env=CHECKOUT_ENV)
    _log.info("pool_tree_taken", tree=name, worktree=str(dest), branch=branch)
    return True


# -- the nuke's side -----------------------------------------------------------------------


def recycle(town: Town, rig: str, worktree: Path) -> bool:
    """The nuke's worktree removal with a pool: the tree is moved into the pool as a dirty
    tree, for the mayor to clean (True), or removed (False). Either way ``worktree`` is
    gone when it returns; raises :class:`GitError` (as ``git.remove_worktree``) only when
    it could not be removed."""
    clone = town.refinery_clone(rig)
    size = pool_size(town, rig)
    pool = town.pool_dir(rig)
    gitdir = worktree_gitdir(worktree) if worktree.is_dir() else None
    if size <= 0 or gitdir is None or any((gitdir / f).exists() for f in IN_PROGRESS_STATE) \
            or not recycle_fits(size, _pooled(pool)):
        _remove(clone, worktree)
        return False
    try:
        # Frees the branch for the nuke's DeleteBranch; no file changes, so a crash here
        # leaves the polecat's tree as it was and the next nuke pass decides again.
        git.run_git(["checkout", "--quiet", "--detach"], cwd=worktree, op="checkout --detach")
        with git.repo_lock(clone):
            pool.mkdir(exist_ok=True)
            git.run_git(["worktree", "move", str(worktree), str(pool / dirty_name(_new_name()))],
                        cwd=clone, op="worktree move")
    except GitError as exc:
        _log.warning("pool_recycle_refused", worktree=str(worktree), error=exc.message)
        _remove(clone, worktree)
        return False
    _log.info("pool_tree_recycled", worktree=str(worktree))
    return True


def _pooled(pool: Path) -> int:
    return len(ready_trees(pool)) + len(dirty_trees(pool))


def dirty_trees(pool: Path) -> list[Path]:
    """Recycled trees waiting to be cleaned, oldest first."""
    try:
        return sorted(p for p in pool.iterdir() if p.name.startswith(DIRTY_PREFIX))
    except FileNotFoundError:
        return []


def _clean_dirty(clone: Path, pool: Path, dirty: Path, tip: str, size: int,
                 process: str, prep: PoolSetup) -> bool:
    """Clean a recycled tree fully and verify it: into the pool (True), or removed."""
    name = dirty.name.removeprefix(DIRTY_PREFIX)
    with _busy(pool, name) as busy:
        with git.repo_lock(clone):
            if not dirty.is_dir():
                return False
            git.run_git(["worktree", "move", str(dirty), str(busy)], cwd=clone,
                        op="worktree move")
        fault_point(process, "pool.after_clean_move")
        try:
            git.run_git(["reset", "--quiet", "--hard"], cwd=busy, op="reset")
            git.run_git(["checkout", "--quiet", "--force", "--detach", tip], cwd=busy,
                        op="checkout", env=CHECKOUT_ENV)
            git.run_git(["clean", "-ffdxq"], cwd=busy, op="clean")
            problems = _set_up(prep, busy, tip, _check_clean(busy, tip))
        except GitError as exc:
            problems = [exc.message]
        return _settle(clone, pool, busy, name, size, problems)


def _tip(clone: Path, default_branch: str) -> str:
    tip = git.rev(clone, f"refs/heads/{default_branch}")
    if tip is None:
        raise GitError("rev-parse", str(clone), f"no local branch {default_branch}")
    return tip


# -- the mayor's side ----------------------------------------------------------------------


def tend(town: Town, rig: str, *, process: str = "mayor") -> list[str]:
    """Bring the rig's pool to ``pool_size`` trees detached at the default branch's tip:
    remove leftovers, clean recycled trees, remove surplus, move old trees to the tip,
    fill. Returns what it did, one line each. Errors stop the pass (logged by the
    caller); the next pass retries."""
    size = pool_size(town, rig)
    pool = town.pool_dir(rig)
    if size <= 0 and not pool.exists():
        return []
    clone = town.refinery_clone(rig)
    done = [f"removed leftover {name}" for name in leftovers(pool)
            if remove_leftover(clone, pool, name)]
    tip = _tip(clone, town.rig_config(rig).default_branch)
    prep = PoolSetup(town, rig)
    done += [f"removed {p.name} (set up otherwise)" for p in ready_trees(pool)
             if prep.stale(worktree_gitdir(p)) and _remove_ready(clone, p)]
    for dirty in dirty_trees(pool):
        kept = _clean_dirty(clone, pool, dirty, tip, size, process, prep)
        done.append(f"{'cleaned' if kept else 'dropped'} recycled {dirty.name}")
    plan = plan_pool(size, [tree_state(p) for p in ready_trees(pool)], tip)
    for name in plan.remove:
        _remove(clone, pool / name)
        done.append(f"removed {name}")
    for name in plan.follow:
        if _follow(clone, pool, name, tip, size, prep):
            done.append(f"moved {name} to {tip[:10]}")
    for _ in range(plan.fill):
        if prep.stopped():  # slings run the setup themselves (README, "Worktree setup")
            done.append("not filled: pool setup stopped after failures")
            break
        if _fill_one(clone, pool, tip, size, process, prep):
            done.append("filled one")
    if size <= 0:
        _rmdir_if_empty(pool)
    return done


def _remove_ready(clone: Path, path: Path) -> bool:
    with git.repo_lock(clone):
        if not path.is_dir():
            return False  # taken meanwhile
        git.remove_worktree(clone, path)
        return True


def _follow(clone: Path, pool: Path, name: str, tip: str, size: int, prep: PoolSetup) -> bool:
    with _busy(pool, name) as busy:
        with git.repo_lock(clone):
            if not (pool / name).is_dir():
                return False  # taken meanwhile
            git.run_git(["worktree", "move", str(pool / name), str(busy)], cwd=clone,
                        op="worktree move")
        try:
            git.run_git(["checkout", "--quiet", "--force", "--detach", tip], cwd=busy,
                        op="checkout", env=CHECKOUT_ENV)
            # A set-up tree keeps its ignored files: the setup runs again (a new lockfile).
            strict = not prep.has_record(worktree_gitdir(busy))
            problems = _set_up(prep, busy, tip, _check_clean(busy, tip, strict=strict))
        except GitError as exc:
            problems = [exc.message]
        return _settle(clone, pool, busy, name, size, problems)


def _fill_one(clone: Path, pool: Path, tip: str, size: int, process: str,
              prep: PoolSetup) -> bool:
    name = _new_name()
    with _busy(pool, name) as busy:
        with git.repo_lock(clone):
            git.run_git(["worktree", "add", "--quiet", "--no-checkout", "--detach", str(busy),
                         tip], cwd=clone, op="worktree add")
        fault_point(process, "pool.after_fill_add")
        try:
            git.run_git(["reset", "--quiet", "--hard"], cwd=busy, op="reset", env=CHECKOUT_ENV)
            problems = _set_up(prep, busy, tip, _check_clean(busy, tip))
        except GitError as exc:
            problems = [exc.message]
        return _settle(clone, pool, busy, name, size, problems)


# -- leftovers, doctor, down --all ---------------------------------------------------------


def leftovers(pool: Path) -> list[str]:
    """Busy folder names (``.busy-<name>``) whose lock nobody holds: a crash's leftovers."""
    try:
        entries = [p.name for p in pool.iterdir() if p.name.startswith(BUSY_PREFIX)]
    except FileNotFoundError:
        return []
    found = []
    for busy in sorted({e.removesuffix(LOCK_SUFFIX) for e in entries}):
        try:
            fd = os.open(pool / lock_name(busy), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # its worker made the lock first and drops it last
            found.append(busy)
            continue
        try:
            if try_flock(fd, fcntl.LOCK_EX):
                found.append(busy)
        finally:
            os.close(fd)
    return found


def remove_leftover(clone: Path, pool: Path, busy: str) -> bool:
    """Remove a busy folder (and its lock file) if its lock is still free; True if it did."""
    lock_path = pool / lock_name(busy)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not try_flock(fd, fcntl.LOCK_EX):
            return False
        stop_setup(pool / busy)  # a pool setup its dead worker left running
        _remove(clone, pool / busy)
        lock_path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def drain(town: Town, rig: str) -> int:
    """Remove every tree of the rig's pool that nobody is working on; returns how many."""
    pool = town.pool_dir(rig)
    if not pool.exists():
        return 0
    clone = town.refinery_clone(rig)
    removed = sum(remove_leftover(clone, pool, name) for name in leftovers(pool))
    for path in [*ready_trees(pool), *dirty_trees(pool)]:
        _remove(clone, path)
        removed += 1
    (pool / FAILURES_FILE).unlink(missing_ok=True)  # a new start tries the setup again
    _rmdir_if_empty(pool)
    return removed


def _rmdir_if_empty(pool: Path) -> None:
    try:
        pool.rmdir()
    except OSError:
        pass  # not empty (a tree in flight) or gone
