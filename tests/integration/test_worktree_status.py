"""``git.worktree_status``: one ``git status`` for what a nuke and ``done`` ask of a
worktree (its changes, its branch, its HEAD), read against git's own answers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gastown.roles.adapters import git


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=a", "-c",
                           "user.email=a@a", *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "a.txt").write_text("a\n")
    (path / "b.txt").write_text("b\n")
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "one")
    return path


def test_a_clean_tree_on_its_branch(repo: Path) -> None:
    status = git.worktree_status(repo)
    assert status.dirty == []
    assert status.branch == "main"
    assert status.head == _git(repo, "rev-parse", "HEAD").strip()


def test_changes_read_as_porcelain_v1_prints_them(repo: Path) -> None:
    (repo / "a.txt").write_text("changed\n")
    (repo / "new.txt").write_text("n\n")
    _git(repo, "add", "new.txt")
    (repo / "sub").mkdir()
    (repo / "sub" / "untracked file.txt").write_text("u\n")
    _git(repo, "mv", "b.txt", "c.txt")
    status = git.worktree_status(repo)
    v1 = _git(repo, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert len(status.dirty) == len(v1) == 4
    assert sorted(status.dirty) == sorted([" M a.txt", "A  new.txt", "R  c.txt",
                                           "?? sub/untracked file.txt"])


def test_a_detached_head_and_a_conflict(repo: Path) -> None:
    _git(repo, "checkout", "-q", "-b", "side")
    (repo / "a.txt").write_text("side\n")
    _git(repo, "commit", "-q", "-am", "side")
    _git(repo, "checkout", "-q", "main")
    (repo / "a.txt").write_text("main\n")
    _git(repo, "commit", "-q", "-am", "main")
    _git(repo, "checkout", "-q", "--detach")
    subprocess.run(["git", "-C", str(repo), "merge", "-q", "side"], capture_output=True)
    status = git.worktree_status(repo)
    assert status.branch is None
    assert status.head == _git(repo, "rev-parse", "HEAD").strip()
    assert status.dirty == ["UU a.txt"]


def test_a_repository_without_commits(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "x").write_text("x\n")
    status = git.worktree_status(path)
    assert (status.branch, status.head, status.dirty) == ("main", None, ["?? x"])
