# ruff: noqa: F811  (the town fixture is imported, then named as a parameter)
"""The warm pool's setup against a real clone, real git and real setup commands: trees set
up when filled and again when they follow the tip, the record a sling reads, stale trees
replaced, a setup that changes a tracked file refused, and the back-off after failures."""

from __future__ import annotations

import json
from pathlib import Path

from gastown.roles.adapters.git import repo_lock
from gastown.roles.adapters.town import Town
from gastown.roles.operations import worktree_pool
from gastown.roles.operations.pool_setup import FAILURES_FILE, prepared_for_sling
from tests.conftest import git
from tests.integration.test_reconcile import (  # the town builder
    clone,
    commit,
    town,  # noqa: F401  (fixture)
)


def configure(town: Town, command: str, size: int = 1) -> None:
    path = town.rig_config_path("web")
    base = path.read_text().split("\n[polecats]\n", 1)[0]
    path.write_text(f"{base}\n[polecats]\npool_size = {size}\n[polecats.setup]\n"
                    f"command = {json.dumps(command)}\n")


def ready(town: Town) -> list[Path]:
    return worktree_pool.ready_trees(town.pool_dir("web"))


def record(tree: Path) -> list[str]:
    gitdir = worktree_pool.worktree_gitdir(tree)
    assert gitdir is not None
    path = gitdir / "gastown-setup"
    return path.read_text().splitlines() if path.exists() else []


def tip(town: Town) -> str:
    return git("rev-parse", "HEAD", cwd=clone(town)).strip()


def test_trees_are_set_up_when_filled_and_again_when_they_follow_the_tip(
        town: Town, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    configure(town, f'echo "$PWD ${{GASTOWN_SLOT:--}}" >> {runs}; echo built > built.txt')
    assert worktree_pool.tend(town, "web") == ["filled one"]
    (tree,) = ready(town)
    first = runs.read_text().splitlines()
    assert len(first) == 1 and "/pool/.busy-" in first[0] and first[0].endswith(" -")
    assert record(tree)[0] == tip(town) and (tree / "built.txt").exists()
    assert git("status", "--porcelain", cwd=tree).strip() == "?? built.txt"
    commit(clone(town), "later.txt")  # main moves
    assert worktree_pool.tend(town, "web") == [f"moved {tree.name} to {tip(town)[:10]}"]
    assert len(runs.read_text().splitlines()) == 2  # the setup ran again at the new tip
    assert record(tree)[0] == tip(town) and (tree / "later.txt").exists()
    # A sling taking it skips the setup; with other settings it would not.
    dest = town.polecats_dir("web") / "toast"
    with repo_lock(clone(town)):
        assert worktree_pool.take(clone(town), town.pool_dir("web"), dest, "polecat/toast",
                                  "main")
    gitdir = worktree_pool.worktree_gitdir(dest)
    assert prepared_for_sling(town, "web", dest, gitdir)
    configure(town, f'echo "$PWD v2" >> {runs}')
    assert not prepared_for_sling(town, "web", dest, gitdir)


def test_a_tree_set_up_with_other_settings_is_replaced(town: Town, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    configure(town, f"echo one >> {runs}")
    worktree_pool.tend(town, "web")
    (old,) = ready(town)
    configure(town, f"echo two >> {runs}")
    done = worktree_pool.tend(town, "web")
    assert done == [f"removed {old.name} (set up otherwise)", "filled one"]
    (new,) = ready(town)
    assert new != old and runs.read_text().split() == ["one", "two"]


def test_a_setup_that_changes_a_tracked_file_is_refused_and_failures_stop_the_pool(
        town: Town, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    configure(town, f"echo run >> {runs}; echo changed >> app.py")
    pool = town.pool_dir("web")
    for count in (1, 2, 3):
        assert worktree_pool.tend(town, "web") == []
        assert ready(town) == [] and not list(pool.glob(".busy-*"))
        failures = json.loads((pool / FAILURES_FILE).read_text())
        assert failures["count"] == count and "app.py" in failures["reason"]
    # Three in a row: the pool prepares no tree and runs no setup until the settings change.
    assert worktree_pool.tend(town, "web") == ["not filled: pool setup stopped after failures"]
    assert len(runs.read_text().splitlines()) == 3
    configure(town, f"echo fixed >> {runs}")
    assert worktree_pool.tend(town, "web") == ["filled one"]
    assert not (pool / FAILURES_FILE).exists()
    assert worktree_pool.drain(town, "web") == 1 and not pool.exists()
