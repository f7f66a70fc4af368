"""Sandbox creation and removal: ``gastown sling``/``polecat nuke`` vs raw git, per repo size.

On a generated repository of 50 and of 5,000 files (~1 KiB each) behind a bare remote:
- sling: ``gastown sling`` of one bead (agent: ``sleep``) until the polecat is working,
  read from the feed (``polecat_working`` ts) - vs ``git worktree add -b`` in a clone;
- nuke: ``gastown polecat nuke`` (the CLI call's wall time; the worktree is gone when it
  returns) - vs ``git worktree remove`` + ``git branch -D``;
- ``git clone --local`` and ``--no-local`` of the remote, with the clone's disk use.
- the same sling and nuke in a second town whose rig keeps a warm pool of worktrees
  (``polecats.pool_size = 2``): before each pooled sling the bench waits (untimed) until a
  ready tree is in the pool, as the mayor refills it in the background between slings.
Rounds interleave the cases in shuffled order; figures are medians.
"""

from __future__ import annotations

import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._town import SCRIPT_TOWN, Feed, gastown, git, running_town

SLEEPER = '[agents.sleeper]\ncommand = ["sleep", "600"]\n'
POOL = "[polecats]\npool_size = 2\n"


def _timed(argv: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _du_kib(path: Path) -> int:
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def _pool_ready(town: Path) -> bool:
    """Whether the rig's pool holds a ready tree (hidden names are dirty or busy ones)."""
    pool = town / "web" / "pool"
    return pool.is_dir() and any(not p.name.startswith(".") for p in pool.iterdir())


def _wait(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.02)


def measure(files: int, rounds: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {k: [] for k in (
        "sling", "sling (pool)", "worktree add", "nuke", "nuke (pool)",
        "worktree remove + branch -D", "clone --local", "clone --no-local")}
    disk: dict[str, int] = {}
    with running_town(bare_remote=True, files=files, town_toml=SCRIPT_TOWN + SLEEPER) as (
            env, town), running_town(bare_remote=True, files=files, rig_toml=POOL,
                                     town_toml=SCRIPT_TOWN + SLEEPER) as (pool_env, pool_town):
        remote = town.parent / "web.git"
        work = town.parent / "raw"
        git("clone", "-q", str(remote), str(work / "clone"))
        feed, pool_feed = Feed(env), Feed(pool_env)
        try:
            def slinger(env: dict[str, str], feed: Feed, suffix: str,
                        before: Callable[[], None]) -> Callable[[int], None]:
                def sling(i: int) -> None:
                    before()
                    bead = gastown(env, "bead", "create", f"s{i}", "--rig", "web").strip()
                    start = time.time()
                    gastown(env, "sling", bead, "web", "--agent", "sleeper")
                    feed.wait(lambda es: any(e.get("kind") == "polecat_working"
                                             and e.get("bead") == bead for e in es),
                              what=f"{bead} working")
                    ev = next(e for e in feed.events if e.get("kind") == "polecat_working"
                              and e.get("bead") == bead)
                    samples["sling" + suffix].append(float(ev["ts"]) - start)
                    start = time.perf_counter()
                    gastown(env, "polecat", "nuke", f"web/{ev['polecat']}")
                    samples["nuke" + suffix].append(time.perf_counter() - start)
                return sling

            sling = slinger(env, feed, "", lambda: None)
            pooled = slinger(pool_env, pool_feed, " (pool)",
                             lambda: _wait(lambda: _pool_ready(pool_town), "a ready pool tree"))

            def raw(i: int) -> None:
                clone = work / "clone"
                samples["worktree add"].append(_timed(
                    ["git", "worktree", "add", "-q", "-b", f"b{i}", str(work / f"w{i}"),
                     "main"], clone))
                start = time.perf_counter()
                subprocess.run(["git", "worktree", "remove", str(work / f"w{i}")], cwd=clone,
                               check=True)
                subprocess.run(["git", "branch", "-q", "-D", f"b{i}"], cwd=clone, check=True)
                samples["worktree remove + branch -D"].append(time.perf_counter() - start)

            def clone(mode: str) -> Callable[[int], None]:
                def run(i: int) -> None:
                    dest = work / f"c{mode}{i}"
                    samples[f"clone {mode}"].append(_timed(
                        ["git", "clone", "-q", mode, str(remote), str(dest)]))
                    disk[f"clone {mode}"] = _du_kib(dest)
                    shutil.rmtree(dest)
                return run

            cases = [sling, pooled, raw, clone("--local"), clone("--no-local")]
            for i in range(rounds):
                random.shuffle(cases)
                for case in cases:
                    case(i)
        finally:
            feed.close()
            pool_feed.close()
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    remove = med["worktree remove + branch -D"]
    return {"median_ms": med, "disk_kib": disk,
            "ratios": {"sling / worktree add": med["sling"] / med["worktree add"],
                       "sling (pool) / worktree add": med["sling (pool)"]
                       / med["worktree add"],
                       "nuke / worktree remove": med["nuke"] / remove,
                       "nuke (pool) / worktree remove": med["nuke (pool)"] / remove}}


def main(sizes: tuple[int, ...] = (50, 5000), rounds: int = 5) -> dict[str, Any]:
    results: dict[str, Any] = {}
    print(f"{'files':>6} {'case':30} {'median ms':>10} {'x raw git':>10} {'disk KiB':>9}")
    for files in sizes:
        r = results[str(files)] = measure(files, rounds)
        m = r["median_ms"]
        add, remove = m["worktree add"], m["worktree remove + branch -D"]
        base = {"sling": add, "sling (pool)": add, "nuke": remove, "nuke (pool)": remove}
        for name, ms in m.items():
            ratio = f"{ms / base[name]:10.2f}" if name in base else f"{'':10}"
            kib = f"{r['disk_kib'].get(name, ''):>9}"
            print(f"{files:6} {name:30} {ms:10.1f} {ratio} {kib}")
    print(f"({rounds} interleaved rounds; medians; sling: the CLI call until the feed's "
          "polecat_working; (pool): a town whose rig keeps polecats.pool_size = 2)")
    return results


if __name__ == "__main__":
    main(rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 5)
