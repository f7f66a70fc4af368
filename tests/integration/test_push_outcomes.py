"""Pushing a tested commit, recognising a working copy, and the invariant checker itself,
on real repositories."""

from __future__ import annotations

from pathlib import Path

import pytest

from gastown.roles.adapters import git as g
from gastown.roles.core.errors import GitError
from gastown.roles.operations.rigs import working_copy_branch
from tests.conftest import git, make_remote, make_repo
from tests.invariants import main_never_moved_backwards


def clone_with_commit(remote: Path, dest: Path, name: str = "new.txt") -> str:
    git("clone", "-q", str(remote), str(dest), cwd=dest.parent)
    (dest / name).write_text("new\n")
    git("add", "-A", cwd=dest)
    git("commit", "-q", "-m", f"add {name}", cwd=dest)
    return git("rev-parse", "HEAD", cwd=dest).strip()


def test_pushed_then_moved(tmp_path: Path) -> None:
    """A fast-forward is pushed; a commit built on a stale base is 'moved', nothing else."""
    remote = make_remote(tmp_path / "remote.git")
    mine = clone_with_commit(remote, tmp_path / "mine")
    theirs = clone_with_commit(remote, tmp_path / "theirs", "theirs.txt")
    assert g.push_commit(tmp_path / "theirs", theirs, "main") == g.PushOutcome("pushed")
    assert git("rev-parse", "main", cwd=remote).strip() == theirs
    assert g.push_commit(tmp_path / "mine", mine, "main") == g.PushOutcome("moved")
    assert git("rev-parse", "main", cwd=remote).strip() == theirs
    # The local branch never moved: the caller fast-forwards only after a push.
    assert git("rev-parse", "origin/main", cwd=tmp_path / "mine").strip() != theirs


def test_a_push_is_confirmed_by_the_remotes_own_report(tmp_path: Path) -> None:
    """The remote's report (``push --porcelain``) names the branch at the commit, for a
    fast-forward and for a commit it already has: no second look at the remote needed."""
    remote = make_remote(tmp_path / "remote.git")
    commit = clone_with_commit(remote, tmp_path / "clone")
    first = g.push_commit(tmp_path / "clone", commit, "main")
    assert (first.result, first.confirmed) == ("pushed", True)
    again = g.push_commit(tmp_path / "clone", commit, "main")
    assert (again.result, again.confirmed) == ("pushed", True)
    assert git("rev-parse", "main", cwd=remote).strip() == commit
    # A new branch on the remote ("*" in the report) is confirmed too.
    other = g.push_commit(tmp_path / "clone", commit, "release")
    assert (other.result, other.confirmed) == ("pushed", True)


def test_working_copy_refusals(tmp_path: Path) -> None:
    """A checked-out branch, and updateInstead on a dirty tree, are 'refused' with git's
    reason; once the tree is clean the same push updates branch and files."""
    wc = make_repo(tmp_path / "wc", files={"README.md": "hi\n", "notes.txt": "n\n"})
    commit = clone_with_commit(wc, tmp_path / "clone")
    clone = tmp_path / "clone"
    assert g.push_commit(clone, commit, "main") == \
        g.PushOutcome("refused", "branch is currently checked out")
    git("config", "receive.denyCurrentBranch", "updateInstead", cwd=wc)
    (wc / "notes.txt").write_text("dirty\n")
    assert g.push_commit(clone, commit, "main") == \
        g.PushOutcome("refused", "Working directory has unstaged changes")
    git("checkout", "--", "notes.txt", cwd=wc)
    assert g.push_commit(clone, commit, "main").result == "pushed"
    assert (wc / "new.txt").read_text() == "new\n"


def test_unreachable_remote_raises(tmp_path: Path) -> None:
    remote = make_remote(tmp_path / "remote.git")
    commit = clone_with_commit(remote, tmp_path / "clone")
    git("remote", "set-url", "origin", str(tmp_path / "gone.git"), cwd=tmp_path / "clone")
    with pytest.raises(GitError) as info:
        g.push_commit(tmp_path / "clone", commit, "main")
    assert info.value.op == "push"


def test_working_copy_branch(tmp_path: Path) -> None:
    """Which local repositories git would refuse pushes to the rig's branch of."""
    bare = make_remote(tmp_path / "bare.git")
    assert working_copy_branch(str(bare), None) is None
    assert working_copy_branch("https://example.org/x.git", None) is None
    wc = make_repo(tmp_path / "wc")
    assert working_copy_branch(str(wc), None) == "main"
    assert working_copy_branch(str(wc), "main") == "main"
    git("switch", "-q", "-c", "dev", cwd=wc)
    assert working_copy_branch(str(wc), "main") is None
    # main checked out in a linked worktree of that repository counts too.
    git("worktree", "add", "-q", str(tmp_path / "linked"), "main", cwd=wc)
    assert working_copy_branch(str(wc), "main") == "main"


def test_the_checker_sees_a_reset(tmp_path: Path) -> None:
    """The reflog check passes forward moves and catches a reset that dropped a commit."""
    repo = make_repo(tmp_path / "repo")
    for name in ("a", "b"):
        (repo / name).write_text(name)
        git("add", "-A", cwd=repo)
        git("commit", "-q", "-m", name, cwd=repo)
    main_never_moved_backwards(repo, "main")
    git("reset", "-q", "--hard", "HEAD~1", cwd=repo)
    with pytest.raises(AssertionError, match="does not descend"):
        main_never_moved_backwards(repo, "main")
