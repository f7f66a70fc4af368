"""inotify watches per polecat: every watch held by a town's processes, idle and with N live.

The town (one rig on a bare remote, ``script`` agents on the process backend) is started and
its roles awaited; the watches of every process of the town (``demo.checks.town_processes``:
the supervisor, its roles, the CLI server and every agent and its children) are counted from
``/proc/<pid>/fdinfo`` (one ``inotify wd:`` line per watch). Then N beads are slung whose
scripts wait for a release file, the count is taken again once all N polecats are
``working``, and the beads are released and awaited until nuked (so the town leaves clean).
Baseline: the same town's count with no polecat; the figure is (live - idle) / N.

Why it matters: a watcher that watched each worktree recursively would hold one watch per
directory of every checkout, and on a big repository at 200 polecats exhaust
``fs.inotify.max_user_watches``. The witness watches ``<rig>/polecats/`` itself only.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench._town import SCRIPT_TOWN, Feed, gastown, running_town
from demo.checks import town_processes


def watches(pid: int) -> int:
    """How many inotify watches the process ``pid`` holds (0 if it is gone)."""
    count = 0
    try:
        fds = list(Path(f"/proc/{pid}/fdinfo").iterdir())
    except OSError:
        return 0
    for fd in fds:
        try:
            count += fd.read_text().count("inotify wd:")
        except OSError:
            continue
    return count


def town_pids(town: Path) -> set[int]:
    """Every process of the town: its command line names the town (supervisor, roles,
    CLI server), or its environment does (agents and what they start); not the bench's
    own ``feed -f`` follower."""
    pids = set(town_processes(town))
    needle = f"GASTOWN_TOWN={town}\0".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                continue
    return {pid for pid in pids if _parent(pid) != os.getpid()}


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except OSError:
        return None


def town_watches(town: Path) -> tuple[int, int, list[str]]:
    """(watches, processes, the holders' titles) over every process of the town."""
    pids = town_pids(town)
    held = {pid: watches(pid) for pid in pids}
    holders = [f"{_title(pid)} ({count})" for pid, count in held.items() if count]
    return sum(held.values()), len(pids), holders


def _title(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    return " ".join(a.decode(errors="replace") for a in argv if a)[:60]


def main(n: int = 20) -> dict[str, Any]:
    release = Path(tempfile.mkdtemp(prefix="gtbn", dir="/tmp")) / "release"
    script = (f"while [ ! -e {release} ]; do sleep 0.1; done; "
              "echo \"$GASTOWN_BEAD\" > \"$GASTOWN_BEAD.txt\"")
    with running_town(bare_remote=True, town_toml=SCRIPT_TOWN,
                      rig_toml=f"\n[polecats]\nmax = {n}\n") as (env, town):
        feed = Feed(env)
        try:
            feed.wait(lambda es: len({e.get("role") for e in es
                                      if e.get("kind") == "role_ready"}) >= 3,
                      what="3 roles ready")
            idle, idle_procs, idle_holders = town_watches(town)
            beads = [gastown(env, "bead", "create", f"wait {i}", "--rig", "web", "-d",
                             script).strip() for i in range(n)]
            gastown(env, "sling", *beads, "web")
            feed.wait(lambda es: len({e.get("polecat") for e in es
                                      if e.get("kind") == "polecat_working"}) >= n,
                      what=f"{n} polecats working")
            live, live_procs, live_holders = town_watches(town)
            release.touch()
            feed.wait(lambda es: len([e for e in es if e.get("kind") == "polecat_nuked"]) >= n,
                      timeout=300, what=f"{n} polecats nuked")
        finally:
            feed.close()
    per = (live - idle) / n
    print(f"{'town':34} {'watches':>8} {'processes':>10}")
    print(f"{'idle (no polecat)':34} {idle:8d} {idle_procs:10d}")
    print(f"{f'{n} polecats working':34} {live:8d} {live_procs:10d}")
    print(f"held by: {', '.join(live_holders) or 'none'}")
    print(f"watches per polecat: {per:.2f} (a witness holds one watch, on "
          "<rig>/polecats/; nothing per worktree)")
    return {"n": n, "idle_watches": idle, "live_watches": live, "idle_processes": idle_procs,
            "live_processes": live_procs, "per_polecat": per,
            "holders": {"idle": idle_holders, "live": live_holders}}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
