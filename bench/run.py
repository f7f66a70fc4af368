"""Run every benchmark in ``bench/`` as one suite: ``make bench`` (``python -m bench.run``).

Each module prints its own table (figures next to their baselines from the same run);
at the end one summary table gathers the headline ratios, and everything is written to
``bench/results.json`` with the date, the commit and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import bus, idle, inotify, lifecycle, restart, sandbox, startup

RESULTS = Path(__file__).with_name("results.json")


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent).stdout.strip()


def summary(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, baseline, ratio) rows from the modules' results."""
    rows: list[tuple[str, str, str, str]] = []

    def add(name: str, value: str, base: str, ratio: float) -> None:
        rows.append((name, value, base, f"{ratio:.2f}x"))

    for key, label in (("lifecycle", ""), ("lifecycle_auto", ", batch auto")):
        for n, lc in r.get(key, {}).items():
            add(f"lifecycle N={n}{label} ({'OK' if lc['ok'] else 'PROBLEM'})",
                f"{lc['town_s']:.1f} s", f"shell loop {lc['loop_s']:.1f} s", lc["ratio"])
            gone = lc["phases"].get("merged->nuked")
            if gone:
                rows.append((f"  merged -> nuked p90, N={n}{label}", f"{gone['p90_ms']:.0f} ms",
                             "", ""))
    for files, sb in r.get("sandbox", {}).items():
        m = sb["median_ms"]
        add(f"sling, {files} files", f"{m['sling']:.0f} ms",
            f"worktree add {m['worktree add']:.0f} ms", sb["ratios"]["sling / worktree add"])
        add(f"sling with pool, {files} files", f"{m['sling (pool)']:.0f} ms",
            f"worktree add {m['worktree add']:.0f} ms",
            sb["ratios"]["sling (pool) / worktree add"])
        add(f"polecat nuke, {files} files", f"{m['nuke']:.0f} ms",
            f"remove+branch -D {m['worktree remove + branch -D']:.0f} ms",
            sb["ratios"]["nuke / worktree remove"])
        add(f"polecat nuke with pool, {files} files", f"{m['nuke (pool)']:.0f} ms",
            f"remove+branch -D {m['worktree remove + branch -D']:.0f} ms",
            sb["ratios"]["nuke (pool) / worktree remove"])
    st = r.get("startup", {})
    for case in ("gastown status (server)", "gastown status (alone)"):
        if case in st:
            add(case, f"{st[case]['wall_ms']:.0f} ms",
                f"python -c pass {st['python -c pass']['wall_ms']:.0f} ms",
                st[case]["wall_ratio"])
    rs = r.get("restart", {})
    for case in ("gastown (default)", "gastown (tightest)"):
        if case in rs and "supervisord (default)" in rs:
            add(f"kill -> ready, {case}", f"{rs[case]['median_ms']:.0f} ms",
                f"supervisord {rs['supervisord (default)']['median_ms']:.0f} ms",
                rs[case]["ratio_supervisord"])
    tot = r.get("idle", {}).get("totals", {})
    if "town" in tot:
        t = tot["town"]
        b = tot.get("supervisord + 5", {"cpu_s_per_min": 0.0, "rss_mib": float("nan")})
        rows.append(("idle town, 2 rigs: CPU", f"{t['cpu_s_per_min']:.3f} s/min",
                     f"supervisord+5 {b['cpu_s_per_min']:.3f} s/min", ""))
        add(f"idle town, 2 rigs: RSS ({t['processes']} procs)", f"{t['rss_mib']:.0f} MiB",
            f"supervisord+5 {b['rss_mib']:.0f} MiB", t["rss_mib"] / b["rss_mib"])
    ino = r.get("inotify")
    if ino:
        rows.append((f"inotify watches per polecat, N={ino['n']}", f"{ino['per_polecat']:.2f}",
                     f"idle town {ino['idle_watches']} watch(es)", ""))
    bs = r.get("bus", {})
    if "bus -> peer" in bs:
        d = bs["direct socket"]
        for case in ("bus -> peer", "bus itself"):
            add(f"bus request p50, {case}", f"{bs[case]['p50_us']:.0f} us",
                f"direct {d['p50_us']:.0f} us", bs[case]["ratio_direct"])
            add(f"bus requests/s, {case}", f"{bs[case]['requests_per_s']:.0f}/s",
                f"direct {d['requests_per_s']:.0f}/s",
                bs[case]["requests_per_s"] / d["requests_per_s"])
        rows.append(("bus publications", f"{bs['publications']['per_s']:.0f}/s", "", ""))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="lifecycle of N = 10 and 50 only (N = 200 takes ~2.5 min)")
    ap.add_argument("--only", nargs="+", metavar="MODULE",
                    help="startup restart idle bus inotify sandbox lifecycle lifecycle_auto")
    args = ap.parse_args()
    sizes = (10, 50) if args.quick else (10, 50, 200)
    modules: dict[str, Callable[[], Any]] = {
        "startup": startup.main,
        "restart": restart.main,
        "idle": idle.main,
        "bus": bus.main,
        "inotify": inotify.main,
        "sandbox": sandbox.main,
        "lifecycle": lambda: lifecycle.main(sizes, rounds=3),
        # The same largest N with the adaptive merge batch (merge_queue.batch_size =
        # "auto"; the shipped default is 1), in as many rounds: what batching is worth.
        "lifecycle_auto": lambda: lifecycle.main(sizes[-1:], rounds=3, batch='"auto"'),
    }
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "commit": _commit(), "python": platform.python_version(),
                               "cpus": os.cpu_count(), "load": os.getloadavg()}
    began = time.monotonic()
    for name, run in modules.items():
        if args.only and name not in args.only:
            continue
        doc = (sys.modules[f"bench.{name.removesuffix('_auto')}"].__doc__ or "").split("\n")[0]
        print(f"\n== {name}: {doc}", flush=True)
        t = time.monotonic()
        results[name] = run()
        results.setdefault("seconds", {})[name] = time.monotonic() - t
    results["seconds"]["total"] = time.monotonic() - began
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    rows = summary(results)
    print(f"\n== summary (gastown {results['commit']}, {results['date']}, "
          f"{results['cpus']} CPUs, load {results['load'][0]:.1f}) ==")
    print(f"{'figure':42} {'value':>14}  {'baseline (same run)':30} {'ratio':>7}")
    for fig, value, base, ratio in rows:
        print(f"{fig:42} {value:>14}  {base:30} {ratio:>7}")
    print(f"(suite: {results['seconds']['total'] / 60:.1f} min)")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
