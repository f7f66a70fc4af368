"""The refinery's checkout operations on real repositories: the two-command clean after a
batch, and moving the default branch by ``update-ref`` to a candidate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gastown.roles.adapters import git
from gastown.roles.core.errors import GitError


def _git(repo: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=a", "-c",
                           "user.email=a@a", *args], check=check, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "a.txt").write_text("a\n")
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "one")
    (path / "dir").mkdir()
    (path / "dir" / "f.txt").write_text("f\n")
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "two")
    return path


def _pristine_on_main(repo: Path) -> None:
    assert _git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all") == ""
    assert _git(repo, "symbolic-ref", "--short", "HEAD") == "main"
    assert (repo / "a.txt").read_text() == "a\n"
    assert (repo / "dir" / "f.txt").read_text() == "f\n"


def test_the_light_clean_undoes_what_a_gate_leaves(repo: Path) -> None:
    """Detached elsewhere, tracked files changed, a file staged, untracked and ignored
    files, a folder where a tracked file belongs: a forced checkout and a clean."""
    _git(repo, "checkout", "-q", "--detach", "HEAD~1")
    (repo / "a.txt").write_text("changed\n")
    (repo / "staged.txt").write_text("s\n")
    _git(repo, "add", "staged.txt")
    (repo / ".gitignore").write_text("build/\n")
    (repo / "build").mkdir()
    (repo / "build" / "out.o").write_text("o\n")
    (repo / "dir").mkdir()
    (repo / "dir" / "f.txt").mkdir()  # a folder in the way of a tracked file
    (repo / "dir" / "f.txt" / "junk").write_text("j\n")
    git.clean_checkout(repo, "main")
    _pristine_on_main(repo)


def test_the_light_clean_leaves_an_unmerged_index(repo: Path) -> None:
    _git(repo, "checkout", "-q", "-b", "side", "HEAD~1")
    (repo / "a.txt").write_text("side\n")
    _git(repo, "commit", "-q", "-am", "side")
    _git(repo, "checkout", "-q", "--detach", "main")
    (repo / "a.txt").write_text("main\n")
    _git(repo, "commit", "-q", "-am", "main side")
    _git(repo, "merge", "-q", "side", check=False)
    assert "UU a.txt" in _git(repo, "status", "--porcelain")
    _git(repo, "update-ref", "refs/heads/main", "HEAD")  # main is the conflicted tip
    git.clean_checkout(repo, "main")
    assert _git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (repo / ".git" / "MERGE_HEAD").exists()


def test_advance_branch_moves_only_from_the_expected_commit(repo: Path) -> None:
    base = _git(repo, "rev-parse", "main")
    _git(repo, "checkout", "-q", "--detach")
    (repo / "c.txt").write_text("c\n")
    _git(repo, "add", "c.txt")
    _git(repo, "commit", "-q", "-m", "candidate")
    candidate = _git(repo, "rev-parse", "HEAD")
    git.advance_branch(repo, "main", candidate, base)
    assert _git(repo, "rev-parse", "main") == candidate
    # main is not where the caller thinks any more: nothing moves.
    with pytest.raises(GitError):
        git.advance_branch(repo, "main", base, base)
    assert _git(repo, "rev-parse", "main") == candidate


def test_revs_reads_several_refs_and_names_the_missing_one(repo: Path) -> None:
    """The refinery's branch and the remote's in one call; a ref that names no commit is
    None, the others still read."""
    head = _git(repo, "rev-parse", "HEAD").strip()
    _git(repo, "branch", "other")
    assert git.revs(repo, ["HEAD", "other"]) == [head, head]
    assert git.revs(repo, ["HEAD", "origin/nope"]) == [head, None]
    assert git.revs(repo, ["nope"]) == [None]
