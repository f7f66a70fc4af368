"""Running one git command: what is retried (another git process's work in progress)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gastown.roles.adapters.git_command import run_git


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
