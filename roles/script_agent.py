"""The ``script`` agent: runs the bead's description as a shell script, commits, done.

Layer: entry point, at the top of ``roles``: run as a program in a polecat's session (the
``script`` preset), imported by nothing.

It is the embedded agent of the demo and the tests: deterministic, fast, and a real
client of the contract every agent follows (work in the worktree, commit, then run
``gastown done``). It reads its bead through ``GASTOWN_TOWN`` and ``GASTOWN_BEAD``. A
script that fails, or changes nothing, escalates instead, unless an earlier session of
the same polecat already committed the bead's work: a session killed (or whose ``done``
was lost with the town) after its commit is respawned into a clean worktree, where the
script's second run changes nothing, and the work is there to hand in.

It imports only the standard library, and reads the bead's row with one read-only SQLite
query instead of through the store: importing the store (its dataclasses and events are
built at import time) and the git adapter (structlog) cost ~100 ms of CPU per agent, the
largest single share of a polecat's life in the lifecycle benchmark and a large one of
the test suite, which starts thousands of these. The query reads two columns of the
``beads`` table; ``gastown done`` (the real CLI) does everything that writes.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path


def _done(status: str, reason: str | None = None) -> int:
    argv = [sys.executable, "-m", "gastown.supervisor", "done", "--status", status]
    if reason is not None:
        argv += ["--reason", reason]
    return subprocess.run(argv, check=False).returncode


def _bead(town: Path, bead_id: str) -> tuple[str, str, str | None]:
    """The bead's title and description, and its rig's default branch (the store's
    schema, ``beads`` and ``rigs`` tables); a plain connection (``mode=ro`` cannot open a
    WAL database whose ``-shm`` file is missing)."""
    conn = sqlite3.connect(town / "state.db", timeout=30)
    try:
        row = conn.execute("SELECT b.title, b.description, r.default_branch FROM beads b"
                           " LEFT JOIN rigs r ON r.name = b.rig WHERE b.id = ?",
                           (bead_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise SystemExit(f"[script agent] no bead {bead_id} in {town}")
    return str(row[0]), str(row[1] or ""), (str(row[2]) if row[2] else None)


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False,
                          env=dict(os.environ, LC_ALL="C", GIT_TERMINAL_PROMPT="0"))


def _commit_all(message: str) -> bool | str:
    """Stage everything and commit: True, False when nothing changed, or git's error."""
    for args in (("add", "-A"), ("status", "--porcelain"), ("commit", "--quiet", "-m", message)):
        result = _git(*args)
        if result.returncode != 0:
            tail = " ".join(result.stderr.strip().splitlines()[-2:]) or "no error output"
            return f"git {args[0]} failed for {Path.cwd()}: {tail}"
        if args[0] == "status" and not result.stdout.strip():
            return False
    return True


def _committed_earlier(bead_id: str, default_branch: str | None) -> bool:
    """Whether the branch already holds a commit of this bead's script (its subject starts
    with the bead's id) that the default branch does not: an earlier session's work."""
    if default_branch is None:
        return False
    log = _git("log", "--format=%s", f"{default_branch}..HEAD")
    return log.returncode == 0 and any(subject.startswith(f"{bead_id}:")
                                       for subject in log.stdout.splitlines())


def main() -> int:
    town = Path(os.environ["GASTOWN_TOWN"])
    bead_id = os.environ["GASTOWN_BEAD"]
    title, description, default_branch = _bead(town, bead_id)
    print(f"[script agent] {bead_id}: {title}", flush=True)
    result = subprocess.run(["sh", "-ec", description or "true"], check=False)
    if result.returncode != 0:
        print(f"[script agent] script failed with exit {result.returncode}; escalating",
              flush=True)
        return _done("escalated", f"the script failed with exit {result.returncode}")
    committed = _commit_all(f"{bead_id}: {title}")
    if isinstance(committed, str):
        print(f"[script agent] commit failed: {committed}; escalating", flush=True)
        return _done("escalated", f"commit failed: {committed}")
    if not committed and _committed_earlier(bead_id, default_branch):
        print("[script agent] the work was committed by an earlier session; done", flush=True)
        return _done("completed")
    if not committed:
        print("[script agent] the script changed nothing; escalating", flush=True)
        return _done("escalated", "the script changed nothing")
    return _done("completed")


if __name__ == "__main__":
    raise SystemExit(main())
