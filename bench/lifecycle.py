"""Lifecycle of N polecats (sling -> agent commit -> merge -> push -> nuke) vs a shell loop.

The town: one rig on a bare remote, ``script`` agents (each bead's script writes one file;
the agent commits it and runs ``gastown done``), a ``true`` gate, default caps. The bench
slings N beads and waits, on the feed, until every polecat is nuked; then checks that
every bead is closed, N merge requests merged, and no worktree is left. The baseline is a
shell loop doing the same git work serially on the same kind of repository (worktree add
-b, commit, rebase, ff-merge, push, worktree remove, branch -D). Rounds interleave the two.

Phases come from the feed's event times: sling (``sling_queued``) -> spawned
(``polecat_working``) -> done -> merge start (``mr_started``) -> merged -> nuked.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._town import SCRIPT_TOWN, Event, Feed, gastown, git, make_repo, running_town

GATE = '[[merge_queue.gates]]\nname = "true"\ncommand = "true"\n'
PHASES = [("sling->spawned", "sling_queued", "polecat_working"),
          ("spawned->done", "polecat_working", "polecat_done"),
          ("done->merge start", "polecat_done", "mr_started"),
          ("merge->merged", "mr_started", "mr_merged"),
          ("merged->nuked", "mr_merged", "polecat_nuked")]
BAD = {"polecat_escalated", "polecat_rejected", "polecat_stalled", "sling_failed",
       "mr_rejected", "role_failed"}

LOOP = r"""
set -e
cd "$1"; n=$2
for i in $(seq 1 "$n"); do
  git worktree add -q -b "p$i" "../wt$i" main
  (cd "../wt$i" && echo "$i" > "f$i.txt" && git add "f$i.txt" && git commit -q -m "b$i" \
     && git rebase -q main)
  git merge -q --ff-only "p$i"
  git push -q origin main
  git worktree remove "../wt$i"
  git branch -q -D "p$i"
done
"""


def shell_loop(n: int) -> float:
    """Seconds for the serial git work of ``n`` polecats on a fresh clone of a bare remote."""
    base = Path(tempfile.mkdtemp(prefix="gtbl", dir="/tmp"))
    try:
        make_repo(base / "src")
        git("clone", "-q", "--bare", str(base / "src"), str(base / "remote.git"))
        git("clone", "-q", str(base / "remote.git"), str(base / "clone"))
        start = time.perf_counter()
        subprocess.run(["bash", "-c", LOOP, "loop", str(base / "clone"), str(n)], check=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(base),
                            "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
                            "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"})
        return time.perf_counter() - start
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _first(events: list[Event], kind: str, key: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in events:
        if e.get("kind") == kind and e.get(key) is not None:
            out.setdefault(str(e[key]), float(e["ts"]))
    return out


def town_run(n: int, batch: str | None = None) -> dict[str, Any]:
    """One town lifecycle of ``n`` beads: total seconds, phases, and what went wrong;
    ``batch`` is the rig's ``merge_queue.batch_size`` (the shipped default when None)."""
    rig_toml = (f"[merge_queue]\nbatch_size = {batch}\n" if batch else "") + GATE
    with running_town(bare_remote=True, town_toml=SCRIPT_TOWN, rig_toml=rig_toml) as (
            env, town):
        beads = [gastown(env, "bead", "create", f"b{i}", "--rig", "web", "-d",
                         f"echo {i} > f{i}.txt").strip() for i in range(n)]
        feed = Feed(env)
        try:
            start = time.time()
            # One `gastown sling` per bead, as the published figures were measured; one
            # command for all N (`sling B1 ... BN web`) measured no faster (51.8 s against
            # 47.1 s at N = 200, in two runs of one session): the merge queue and the
            # nukes, not the slings, bound the town.
            for bead in beads:
                gastown(env, "sling", bead, "web")

            def settled(events: list[Event]) -> bool:
                ends = sum(e.get("kind") == "polecat_nuked" for e in events)
                return ends >= n or any(e.get("kind") in BAD for e in events)

            feed.wait(settled, timeout=120 + 5 * n, what=f"{n} polecats nuked")
            events = list(feed.events)
        finally:
            feed.close()
        nuked = [e for e in events if e.get("kind") == "polecat_nuked"]
        total = max(e["_seen"] for e in nuked) - start if nuked else float("nan")
        bad = sorted({str(e["kind"]) for e in events if e.get("kind") in BAD})
        for e in [e for e in events if e.get("kind") in BAD][:3]:
            print(f"    bad event: {e.get('kind')} {e.get('bead')} {e.get('reason')}")
        listed = json.loads(gastown(env, "bead", "list", "--json"))
        rows = listed if isinstance(listed, list) else listed.get("beads", [])
        open_beads = [b["id"] for b in rows if b.get("status") != "closed"]
        merged = {e.get("mr") for e in events if e.get("kind") == "mr_merged"}
        listing = subprocess.run(["git", "-C", str(town / "web" / "refinery" / "rig"),
                                  "worktree", "list", "--porcelain"],
                                 capture_output=True, text=True, check=True).stdout
        pdir = town / "web" / "polecats"
        left = listing.count("worktree ") - 1 + (len(list(pdir.iterdir())) if pdir.is_dir() else 0)
        pol = {k: _first(events, k, "bead") for k in
               ("sling_queued", "polecat_working", "polecat_done", "mr_started", "mr_merged",
                "polecat_nuked")}
        phases: dict[str, dict[str, float]] = {}
        for name, a, b in PHASES:
            gaps = sorted(pol[b][p] - pol[a][p] for p in pol[a] if p in pol[b])
            if gaps:
                phases[name] = {"median_ms": statistics.median(gaps) * 1000,
                                "p90_ms": gaps[int(0.9 * (len(gaps) - 1))] * 1000,
                                "max_ms": gaps[-1] * 1000}
        return {"total_s": total, "phases": phases, "bad_events": bad,
                "open_beads": open_beads, "merged": len(merged), "nuked": len(nuked),
                "worktrees_left": left}


def run(n: int, rounds: int, batch: str | None = None) -> dict[str, Any]:
    """``rounds`` interleaved pairs (shell loop, town) for ``n`` beads; medians and ratio."""
    loops: list[float] = []
    towns: list[dict[str, Any]] = []
    for r in range(rounds):
        pair = ["loop", "town"] if r % 2 == 0 else ["town", "loop"]
        for which in pair:
            if which == "loop":
                loops.append(shell_loop(n))
            else:
                towns.append(town_run(n, batch))
    town_s = statistics.median(t["total_s"] for t in towns)
    loop_s = statistics.median(loops)
    last = towns[-1]
    result = {"n": n, "rounds": rounds, "town_s": town_s, "loop_s": loop_s,
              "ratio": town_s / loop_s, "phases": last["phases"],
              "checks": {k: last[k] for k in ("bad_events", "open_beads", "merged", "nuked",
                                               "worktrees_left")}}
    print(f"N={n:<4} town {town_s:7.2f} s  shell loop {loop_s:6.2f} s  ratio "
          f"{town_s / loop_s:5.2f}x  ({rounds} interleaved round(s), medians)")
    for name, p in last["phases"].items():
        print(f"    {name:18} median {p['median_ms']:8.0f} ms  p90 {p['p90_ms']:8.0f} ms  "
              f"max {p['max_ms']:8.0f} ms")
    c = result["checks"]
    ok = (not c["bad_events"] and not c["open_beads"] and c["merged"] == n
          and c["nuked"] == n and c["worktrees_left"] == 0)
    print(f"    check: merged {c['merged']}/{n}, nuked {c['nuked']}/{n}, open beads "
          f"{len(c['open_beads'])}, bad events {c['bad_events'] or 'none'}, worktrees left "
          f"{c['worktrees_left']} -> {'OK: none blocked or lost' if ok else 'PROBLEM'}")
    result["ok"] = ok
    return result


def main(sizes: tuple[int, ...] = (10, 50), rounds: int = 1,
         batch: str | None = None) -> dict[str, Any]:
    return {str(n): run(n, rounds, batch) for n in sizes}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batch", default=None,
                    help="the rig's merge_queue.batch_size as TOML, e.g. '\"auto\"' or 4 "
                         "(default: the shipped one, 1)")
    a = ap.parse_args()
    main(tuple(a.n), a.rounds, a.batch)
