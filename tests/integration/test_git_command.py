"""Running one git command: what is retried (another git process's work in progress)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gastown.roles.adapters.git_command import run_git
from gastown.roles.core.errors import GitError


def test_a_worktree_another_process_is_still_making_is_waited_for(tmp_path: Path) -> None:
    """`git worktree add` writes ``.git/worktrees/<name>/commondir`` after the folder and
    ``gitdir``: a checkout in the main tree meanwhile dies with "failed to read
    .git/worktrees/<name>/commondir" (seen as a rejected MR with 200 polecats spawning
    while the refinery merged). It is retried until the worktree is whole."""
    import threading

    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=a", "-c", "user.email=a@a",
                    "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    subprocess.run(["git", "-C", str(repo), "branch", "other"], check=True)
    half = repo / ".git" / "worktrees" / "half"
    half.mkdir(parents=True)
    (half / "HEAD").write_text("ref: refs/heads/nowhere\n")
    (half / "gitdir").write_text(str(tmp_path / "half" / ".git") + "\n")
    (half / "commondir").write_text("")  # being written
    finished = threading.Timer(0.2, (half / "commondir").write_text, args=("../..\n",))
    finished.start()
    try:
        run_git(["checkout", "-q", "other"], cwd=repo, op="checkout")
    finally:
        finished.cancel()
    head = subprocess.run(["git", "-C", str(repo), "branch", "--show-current"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert head == "other"


_ROLE = """
import signal, sys
from pathlib import Path
import pytest

from gastown.roles.adapters.git_command import run_git
from gastown.roles.core.errors import GitError
from gastown.roles.core.errors import GitError
signal.signal(signal.SIGTERM, lambda *_: print("stopping", flush=True))
try:
    print(run_git(["slow"], cwd=Path(sys.argv[1]), op="slow").strip(), flush=True)
except GitError as exc:
    print(exc.message, flush=True)
"""


def test_the_stop_signal_of_a_roles_group_does_not_kill_its_git(tmp_path: Path) -> None:
    """The supervisor stops a role with a signal to its process group. A git the role is
    running must finish: killed, it fails without a word and the role takes that for a
    fact about the repository. A "role" (own session, SIGTERM handled) runs a git alias
    that waits for a file; its group gets SIGTERM while git waits; git still answers."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "config", "alias.slow",
                    "!touch started; while [ ! -e go ]; do sleep 0.02; done; echo finished"],
                   check=True)
    role = subprocess.Popen([sys.executable, "-c", _ROLE, str(repo)], text=True,
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        started = repo / "started"
        for _ in range(3000):
            if started.exists():
                break
            assert role.poll() is None, role.communicate()
            time.sleep(0.01)
        assert started.exists(), "the git alias never started"
        os.killpg(role.pid, signal.SIGTERM)
        out = role.stdout.readline() if role.stdout else ""
        assert out == "stopping\n"
        (repo / "go").touch()
        out, _ = role.communicate(timeout=60)
    finally:
        if role.poll() is None:
            role.kill()
            role.wait()
    assert out == "finished\n", out


def test_a_read_only_git_killed_by_another_process_is_run_once_more(tmp_path: Path) -> None:
    """A read-only git (status, cherry) that something else killed is asked again: its
    death says nothing about the repository (seen: a recovering mayor's `git status`
    killed by a SIGTERM, and the polecat escalated for it). Any other git reports it."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    # The alias's shell kills its git (its parent) the first time, then answers.
    subprocess.run(["git", "-C", str(repo), "config", "alias.once",
                    "!if [ ! -e killed ]; then touch killed; kill -TERM $PPID; sleep 1; fi; "
                    "echo answered"], check=True)
    assert run_git(["once"], cwd=repo, op="once", read_only=True) == "answered\n"
    (repo / "killed").unlink()
    with pytest.raises(GitError, match="killed by SIGTERM, no error output"):
        run_git(["once"], cwd=repo, op="once")


def _logging_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``git`` first on ``PATH`` that logs each call's arguments, then runs git."""
    real = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True,
                          check=True).stdout.strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_a_ref_found_elsewhere_is_an_answer_not_contention(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compare-and-set on a ref that is at another commit, or gone, fails with "cannot
    lock ref" like a lock another git holds; it is asked once, not retried for seconds.
    ``delete_branch_at`` turns both into False and deletes nothing."""
    from gastown.roles.adapters.git import delete_branch_at

    repo = tmp_path / "repo"
    for args in (["init", "-q", "-b", "main", str(repo)],
                 ["-C", str(repo), "-c", "user.name=a", "-c", "user.email=a@a", "commit",
                  "-q", "--allow-empty", "-m", "one"],
                 ["-C", str(repo), "branch", "work"],
                 ["-C", str(repo), "-c", "user.name=a", "-c", "user.email=a@a", "commit",
                  "-q", "--allow-empty", "-m", "two"]):
        subprocess.run(["git", *args], check=True)
    main = subprocess.run(["git", "-C", str(repo), "rev-parse", "main"], capture_output=True,
                          text=True, check=True).stdout.strip()
    log = _logging_git(tmp_path, monkeypatch)
    with pytest.raises(GitError, match="but expected"):
        run_git(["update-ref", "-d", "refs/heads/work", main], cwd=repo, op="update-ref")
    assert len(log.read_text().splitlines()) == 1
    assert delete_branch_at(repo, "work", main) is False  # elsewhere: kept
    assert delete_branch_at(repo, "gone", main) is False  # no such branch
    assert len(log.read_text().splitlines()) == 3
    branches = subprocess.run(["git", "-C", str(repo), "branch", "--format=%(refname:short)"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert branches == ["main", "work"]
    assert delete_branch_at(repo, "main", main) is True
