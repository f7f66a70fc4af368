"""What the demo's outcomes must be: each bead as expected, the remote and the clean-up."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from demo.sample import DemoBead, git, test_command
from demo.town import Outcome, Town

# -- checks ----------------------------------------------------------------------------

def expected_differences(beads: dict[str, DemoBead], got: dict[str, Outcome]) -> list[str]:
    wrong = []
    pair = [b for b, d in beads.items() if d.expect == "pair"]
    for bead_id, demo in beads.items():
        outcome = got[bead_id]
        if demo.expect == "merged" and outcome.kind != "merged":
            wrong.append(f"{bead_id} ({demo.title}) should have merged, but {outcome}")
        if demo.expect == "gate" and not (outcome.kind == "rejected"
                                          and outcome.detail.startswith("gate test")):
            wrong.append(f"{bead_id} ({demo.title}) should have been rejected by the test "
                         f"gate, but {outcome}")
    kinds = sorted(got[b].kind for b in pair)
    if kinds != ["merged", "rejected"] or not any(
            got[b].kind == "rejected" and got[b].detail.startswith("conflict: calc/version.py")
            for b in pair):
        wrong.append("of the conflicting pair one should have merged and the other been "
                     "rejected as a conflict on calc/version.py, but: "
                     + "; ".join(f"{b} {got[b]}" for b in pair))
    return wrong


def check_repositories(town: Town, remote: Path, base: Path,
                       got: dict[str, Outcome]) -> list[str]:
    """The remote's main, the refinery clone's worktrees and branches; returns problems."""
    wrong = []
    clone = town.root / "calc" / "refinery" / "rig"
    git("log", "--oneline", "main", cwd=remote, echo=True)
    landed = git("log", "--format=%H", "main", cwd=remote).split()
    for bead_id, outcome in got.items():
        if outcome.kind == "merged" and outcome.detail not in landed:
            wrong.append(f"{bead_id}'s commit {outcome.detail[:10]} is not on the remote")
    if git("log", "--merges", "--format=%H", "main", cwd=remote).strip():
        wrong.append("the remote's main has merge commits (the queue only fast-forwards)")

    git("worktree", "list", cwd=clone, echo=True)
    listed = {Path(line.split(" ", 1)[1]).resolve() for line in
              git("worktree", "list", "--porcelain", cwd=clone).splitlines()
              if line.startswith("worktree ")}
    kept = {Path(o.worktree).resolve() for o in got.values()
            if o.kind != "merged" and o.worktree}
    if listed != {clone.resolve()} | kept:
        wrong.append(f"worktrees {sorted(map(str, listed))}, expected the clone and "
                     f"{sorted(map(str, kept))}")

    git("branch", "--list", "polecat/*", cwd=clone, echo=True)
    branches = {line.strip(" *+") for line in
                git("branch", "--list", "polecat/*", cwd=clone).splitlines()}
    unmerged = {o.branch for o in got.values() if o.kind != "merged"}
    if branches != unmerged:  # a name (so a branch) may serve a merged bead, then a rejected one
        wrong.append(f"polecat branches {sorted(branches)}, expected only the unmerged "
                     f"{sorted(unmerged)}")

    print("\n# the remote's main passes the project's tests:", flush=True)
    check = base / "check"
    git("clone", "-q", str(remote), str(check), cwd=base)
    print(f"$ {test_command()}    (in a fresh clone of the remote)", flush=True)
    tests = subprocess.run(shlex.split(test_command()), cwd=check, capture_output=True,
                           text=True, check=False)
    sys.stdout.write(tests.stderr)
    if tests.returncode != 0:
        wrong.append("the remote's main fails its tests")
    return wrong


def town_processes(root: Path) -> dict[int, str]:
    """Live processes (not zombies) whose command line names the town: pid -> argv.

    Linux ``/proc`` only (elsewhere: none). The tests' process checks filter this list.
    """
    found: dict[int, str] = {}
    needle = str(root).encode()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if needle in cmdline and stat.rpartition(")")[2].split()[0] != "Z":
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found
