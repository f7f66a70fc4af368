"""``landed.gather`` against real git repositories: a remote, a clone and a worktree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gastown.roles.adapters import git, landed
from gastown.roles.adapters.store import Polecat, open_store
from gastown.roles.adapters.town import install_town
from gastown.roles.operations.nuking import unlanded_work
from gastown.roles.operations.rigs import add_rig
from tests.conftest import make_repo


def run(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def commit(repo: Path, name: str, text: str) -> str:
    (repo / name).write_text(text)
    run(repo, "add", name)
    run(repo, "commit", "-q", "-m", f"add {name}")
    return run(repo, "rev-parse", "HEAD")


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clone of a bare remote on ``main``, one commit in, with a branch ``work``."""
    for key, value in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}.items():
        monkeypatch.setenv(key, value)
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    seed = tmp_path / "seed"
    subprocess.run(["git", "clone", "-q", str(remote), str(seed)], check=True,
                   capture_output=True)
    run(seed, "checkout", "-q", "-b", "main")
    commit(seed, "README", "hello\n")
    run(seed, "push", "-q", "origin", "main")
    repo = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(remote), str(repo)], check=True)
    run(repo, "branch", "work", "main")
    return repo


def test_a_commit_cherry_picked_onto_main_has_landed(clone: Path, tmp_path: Path) -> None:
    """The refinery rebases: the branch's own commit is no ancestor of main, its patch is."""
    tree = tmp_path / "tree"
    run(clone, "worktree", "add", "-q", str(tree), "work")
    mine = commit(tree, "feature", "one\n")
    facts = landed.gather(clone, "main", ["work"], worktree=tree)
    assert facts.unlanded == {mine} and not facts.landed
    assert landed.nuke_problems(facts, "work", "main") == ["1 commit(s) on work not on main"]
    run(clone, "commit", "-q", "--allow-empty", "-m", "someone else's")  # main moves on
    run(clone, "cherry-pick", mine)
    assert not git.is_ancestor(clone, mine, "main")
    facts = landed.gather(clone, "main", ["work"], worktree=tree)
    assert facts.landed and facts.landed_on == "local"


def test_a_commit_only_on_the_remote_has_landed(clone: Path, tmp_path: Path) -> None:
    """Pushed to the remote directly: the clone's main lags, origin/main holds the patch."""
    mine = commit(clone, "feature", "one\n")  # on the clone's main
    run(clone, "branch", "-f", "work", mine)
    run(clone, "reset", "-q", "--hard", "HEAD~1")
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(tmp_path / "remote.git"), str(other)], check=True)
    run(other, "fetch", "-q", str(clone), "work")
    run(other, "commit", "-q", "--allow-empty", "-m", "someone else's")
    run(other, "cherry-pick", mine)
    run(other, "push", "-q", "origin", "main")
    assert landed.gather(clone, "main", ["work"]).unlanded == {mine}  # not fetched yet
    run(clone, "fetch", "-q", "origin")
    facts = landed.gather(clone, "main", ["work"])
    assert facts.not_on_local == {mine} and facts.not_on_remote == frozenset()
    assert facts.landed and facts.landed_on == "remote"


def test_a_dirty_tree_has_not_landed(clone: Path, tmp_path: Path) -> None:
    """An edited file and an untracked one: two uncommitted files, no commit missing."""
    tree = tmp_path / "tree"
    run(clone, "worktree", "add", "-q", str(tree), "work")
    (tree / "README").write_text("changed\n")
    (tree / "notes").write_text("new\n")
    facts = landed.gather(clone, "main", ["work"], worktree=tree)
    assert (facts.dirty, facts.unlanded, facts.landed) == (2, frozenset(), False)
    assert landed.removal_problems(facts, "main") == ["2 uncommitted files"]


def test_a_detached_heads_commits_are_counted(clone: Path, tmp_path: Path) -> None:
    """Commits made on a detached HEAD die with the worktree: they count as unlanded."""
    tree = tmp_path / "tree"
    run(clone, "worktree", "add", "-q", "--detach", str(tree), "main")
    mine = commit(tree, "feature", "one\n")
    facts = landed.gather(clone, "main", ["work"], worktree=tree)
    assert facts.detached and facts.unlanded == {mine}
    assert landed.kept_problems(facts, "detached") == ["1 unmerged commit on detached"]


def test_a_folder_without_git_and_a_missing_branch(clone: Path, tmp_path: Path) -> None:
    """Stray files are not landed; a branch that is gone loses nothing but proves nothing."""
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "file").write_text("x\n")
    facts = landed.gather(clone, "main", ["gone"], worktree=stray)
    assert facts.stray and not facts.landed and facts.missing == ("gone",)
    facts = landed.gather(clone, "main", ["gone", None])
    assert facts.landed and facts.landed_on is None


def test_a_polecat_nuke_sees_its_detached_head_and_the_remote(tmp_path: Path) -> None:
    """``polecats.unlanded_work``, the nuke's check, is this module's verdict: a commit on
    a detached HEAD refuses the nuke; once its patch is on origin's default, it has landed."""
    town = install_town(tmp_path / "town")[0]
    source = make_repo(tmp_path / "src")
    with open_store(town.db_path) as store:
        add_rig(town, store, "web", str(source), cwd=tmp_path, push_to_checkout=True)
    clone = town.refinery_clone("web")
    tree = tmp_path / "toast"
    run(clone, "worktree", "add", "-q", "-b", "polecat/toast", str(tree), "main")
    polecat = Polecat(rig="web", name="toast", bead=None, branch="polecat/toast",
                      worktree=str(tree), state="working", agent="script", session=None,
                      respawns=0, reason=None, sling=None, created_at=0.0, updated_at=0.0)
    assert unlanded_work(town, polecat) == []
    run(tree, "checkout", "-q", "--detach")
    mine = commit(tree, "feature", "one\n")
    assert unlanded_work(town, polecat) == ["1 commit(s) on polecat/toast not on main"]
    run(source, "fetch", "-q", str(tree), mine)
    run(source, "cherry-pick", mine)
    run(clone, "fetch", "-q", "origin")
    assert unlanded_work(town, polecat) == []
