# ruff: noqa: F811  (the town and store fixtures are imported, then named as parameters)
"""The warm pool's operations against a real clone and real git: tend (fill, follow,
shrink), take, recycle or drop, and the leftovers of a crash found by their free lock."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from gastown.roles.adapters.git import repo_lock
from gastown.roles.adapters.store import Store
from gastown.roles.adapters.town import Town
from gastown.roles.core.errors import GitError
from gastown.roles.operations import worktree_pool
from gastown.roles.operations.reconcile import reconcile
from tests.conftest import git
from tests.integration.test_reconcile import (  # the town and polecat builders
    add_worktree,
    clone,
    commit,
    store,  # noqa: F401  (fixture)
    town,  # noqa: F401  (fixture)
)


def set_pool(town: Town, size: int) -> None:
    path = town.rig_config_path("web")
    text = path.read_text()
    if "pool_size" in text:
        text = "\n".join(line for line in text.splitlines() if "pool_size" not in line) + "\n"
        text = text.replace("[polecats]\n", f"[polecats]\npool_size = {size}\n")
    else:
        text += f"[polecats]\npool_size = {size}\n"
    path.write_text(text)


def ready(town: Town) -> list[Path]:
    return worktree_pool.ready_trees(town.pool_dir("web"))


def head(tree: Path) -> str:
    return git("rev-parse", "HEAD", cwd=tree).strip()


def tip(town: Town) -> str:
    return head(clone(town))


def test_tend_fills_follows_main_and_drains(town: Town) -> None:
    set_pool(town, 2)
    done = worktree_pool.tend(town, "web")
    assert done == ["filled one", "filled one"]
    trees = ready(town)
    assert len(trees) == 2 and all(head(t) == tip(town) for t in trees)
    assert all(worktree_pool.tree_state(t).head == tip(town) for t in trees)
    commit(clone(town), "later.txt")  # main moves (as the refinery's fast-forward does)
    done = worktree_pool.tend(town, "web")
    assert sorted(done) == sorted(f"moved {t.name} to {tip(town)[:10]}" for t in trees)
    assert ready(town) == trees and all((t / "later.txt").exists() for t in trees)
    assert worktree_pool.tend(town, "web") == []  # nothing to do
    set_pool(town, 0)
    assert sorted(worktree_pool.tend(town, "web")) == sorted(f"removed {t.name}" for t in trees)
    assert not town.pool_dir("web").exists()
    listed = git("worktree", "list", "--porcelain", cwd=clone(town))
    assert listed.count("worktree ") == 1


def test_take_moves_a_tree_and_makes_the_branch(town: Town) -> None:
    set_pool(town, 1)
    dest = town.polecats_dir("web") / "toast"
    with repo_lock(clone(town)):
        assert not worktree_pool.take(clone(town), town.pool_dir("web"), dest,
                                      "polecat/toast", "main")  # empty pool: nothing done
    assert not dest.exists()
    worktree_pool.tend(town, "web")
    (tree,) = ready(town)
    with repo_lock(clone(town)):
        assert worktree_pool.take(clone(town), town.pool_dir("web"), dest, "polecat/toast",
                                  "main")
    assert not tree.exists() and ready(town) == []
    assert git("symbolic-ref", "--short", "HEAD", cwd=dest).strip() == "polecat/toast"
    assert head(dest) == tip(town)


def test_take_with_a_taken_branch_fails_with_the_tree_left_for_the_rollback(town: Town
                                                                            ) -> None:
    set_pool(town, 1)
    worktree_pool.tend(town, "web")
    git("branch", "polecat/toast", "main", cwd=clone(town))
    dest = town.polecats_dir("web") / "toast"
    with repo_lock(clone(town)), pytest.raises(GitError):
        worktree_pool.take(clone(town), town.pool_dir("web"), dest, "polecat/toast", "main")
    assert dest.exists() and worktree_pool.tree_state(dest).head == tip(town)
    assert worktree_pool.recycle(town, "web", dest)  # the rollback's nuke puts it back
    assert not dest.exists() and ready(town) == []
    (dirty,) = worktree_pool.dirty_trees(town.pool_dir("web"))
    assert worktree_pool.tend(town, "web") == [f"cleaned recycled {dirty.name}"]
    assert len(ready(town)) == 1 and not dirty.exists()


def test_recycle_drops_a_tree_when_the_pool_is_full_or_an_operation_is_half_done(
        town: Town, store: Store) -> None:
    set_pool(town, 1)
    full = add_worktree(town, "toast")
    worktree_pool.tend(town, "web")
    assert not worktree_pool.recycle(town, "web", full)  # full: removed as without a pool
    assert not full.exists() and len(ready(town)) == 1
    set_pool(town, 2)
    rebasing = add_worktree(town, "alpha")
    commit(rebasing, "app.py", "x = 2\n")
    commit(clone(town), "app.py", "x = 3\n")
    assert os.system(f"cd {rebasing} && git rebase -q main >/dev/null 2>&1") != 0
    assert not worktree_pool.recycle(town, "web", rebasing)
    assert not rebasing.exists() and len(ready(town)) == 1
    assert "polecat/alpha" in git("branch", cwd=clone(town))  # commits are the nuke's call


def test_a_busy_tree_is_left_alone_while_locked_and_removed_once_its_worker_died(
        town: Town, store: Store) -> None:
    set_pool(town, 1)
    pool = town.pool_dir("web")
    pool.mkdir()
    busy = pool / ".busy-0000000000000001-abcdef"
    git("worktree", "add", "-q", "--detach", str(busy), "main", cwd=clone(town))
    fd = os.open(pool / ".busy-0000000000000001-abcdef.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a worker at work
    try:
        assert worktree_pool.leftovers(pool) == []
        assert [f.kind for f in reconcile(town, store, fix=True, town_up=False)] == []
        worktree_pool.tend(town, "web")
        assert busy.exists()
    finally:
        os.close(fd)  # ... the worker died
    assert worktree_pool.leftovers(pool) == [busy.name]
    found = reconcile(town, store, fix=True, town_up=False)
    assert [(f.kind, f.fixed) for f in found] == [("pool_leftover", True)]
    assert not busy.exists() and not (pool / f"{busy.name}.lock").exists()
    assert reconcile(town, store, town_up=False) == []


def test_a_pool_tree_someone_checked_a_branch_out_in_is_left_alone(town: Town) -> None:
    set_pool(town, 1)
    worktree_pool.tend(town, "web")
    (tree,) = ready(town)
    git("switch", "-q", "-c", "by-hand", cwd=tree)
    (tree / "draft.txt").write_text("mine\n")
    assert worktree_pool.tend(town, "web") == ["filled one"]  # the pool grows around it
    assert (tree / "draft.txt").exists()
    with repo_lock(clone(town)):
        assert worktree_pool.take(clone(town), town.pool_dir("web"),
                                  town.polecats_dir("web") / "toast", "polecat/toast", "main")
    assert (tree / "draft.txt").exists()  # the other tree was taken
    assert worktree_pool.drain(town, "web") == 0 and (tree / "draft.txt").exists()
