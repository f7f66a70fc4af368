"""The ``script`` agent: runs the bead's description as a shell script, commits, done.

Layer: entry point, at the top of ``roles``: run as a program in a polecat's session (the
``script`` preset), imported by nothing.

It is the embedded agent of the demo and the tests: deterministic, fast, and a real
client of the contract every agent follows (work in the worktree, commit, then run
``gastown done``). It reads its bead through ``GASTOWN_TOWN`` and ``GASTOWN_BEAD``. A
script that fails, or changes nothing, escalates instead.

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


def _bead(town: Path, bead_id: str) -> tuple[str, str]:
    """The bead's title and description (the store's schema, ``beads`` table); a plain
    connection (``mode=ro`` cannot open a WAL database whose ``-shm`` file is missing)."""
    conn = sqlite3.connect(town / "state.db", timeout=30)
    try:
        row = conn.execute("SELECT title, description FROM beads WHERE id = ?",
                           (bead_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise SystemExit(f"[script agent] no bead {bead_id} in {town}")
    return str(row[0]), str(row[1] or "")


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


def main() -> int:
    town = Path(os.environ["GASTOWN_TOWN"])
    bead_id = os.environ["GASTOWN_BEAD"]
    title, description = _bead(town, bead_id)
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
    if not committed:
        print("[script agent] the script changed nothing; escalating", flush=True)
        return _done("escalated", "the script changed nothing")
    return _done("completed")


if __name__ == "__main__":
    raise SystemExit(main())
