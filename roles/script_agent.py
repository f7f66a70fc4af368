"""The ``script`` agent: runs the bead's description as a shell script, commits, done.

Layer: entry point, at the top of ``roles``: run as a program in a polecat's session (the
``script`` preset), imported by nothing.

It is the embedded agent of the demo and the tests: deterministic, fast, and a real
client of the contract every agent follows (work in the worktree, commit, then run
``gastown done``). It reads its bead from the store through ``GASTOWN_TOWN`` and
``GASTOWN_BEAD``. A script that fails, or changes nothing, escalates instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _done(status: str, reason: str | None = None) -> int:
    argv = [sys.executable, "-m", "gastown.supervisor", "done", "--status", status]
    if reason is not None:
        argv += ["--reason", reason]
    return subprocess.run(argv, check=False).returncode


def main() -> int:
    from .adapters import git
    from .adapters.store import open_store
    from .core.errors import GastownError

    town = Path(os.environ["GASTOWN_TOWN"])
    bead_id = os.environ["GASTOWN_BEAD"]
    with open_store(town / "state.db") as store:
        bead = store.bead(bead_id)
    print(f"[script agent] {bead.id}: {bead.title}", flush=True)
    result = subprocess.run(["sh", "-ec", bead.description or "true"], check=False)
    if result.returncode != 0:
        print(f"[script agent] script failed with exit {result.returncode}; escalating",
              flush=True)
        return _done("escalated", f"the script failed with exit {result.returncode}")
    try:
        committed = git.commit_all(Path.cwd(), f"{bead.id}: {bead.title}")
    except GastownError as exc:
        print(f"[script agent] commit failed: {exc}; escalating", flush=True)
        return _done("escalated", f"commit failed: {exc}")
    if not committed:
        print("[script agent] the script changed nothing; escalating", flush=True)
        return _done("escalated", "the script changed nothing")
    return _done("completed")


if __name__ == "__main__":
    raise SystemExit(main())
