"""CLI start-up: ``gastown`` commands against a bare interpreter, in one run.

Every case runs once per round and the rounds are interleaved (case order shuffled per
round), so a noisy machine moves every column together; the figures are medians over the
rounds, and the ratios are to ``python -c pass`` measured in the same rounds.

Two costs per command: the wall time the caller waits, and the CPU time of the process
the caller started (user + system, from ``wait4``). Through the town's CLI server
(``gastown up``), the command's own work runs in a child of the server, whose CPU is not
the caller's: its wall time includes it, the client CPU does not. The same command with
``GASTOWN_CLI_SERVER=0`` runs alone, as it does when the town is down.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._town import gastown, make_town, tear_down


def _once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def main(rounds: int = 21, json_path: Path | None = None) -> dict[str, dict[str, float]]:
    env, town = make_town(bare_remote=True)
    gastown(env, "up")
    gastown(env, "bead", "create", "a bead", "--rig", "web")
    alone = dict(env, GASTOWN_CLI_SERVER="0")
    script = Path(sys.executable).with_name("gastown")  # what users run
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "gastown.supervisor"]
    cases: dict[str, tuple[list[str], dict[str, str]]] = {
        "python -c pass": ([sys.executable, "-c", "pass"], env),
        "gastown --version": ([*exe, "--version"], env),
        "gastown status (server)": ([*exe, "status"], env),
        "gastown status (alone)": ([*exe, "status"], alone),
        "gastown bead list --json (server)": ([*exe, "bead", "list", "--json"], env),
        "gastown bead list --json (alone)": ([*exe, "bead", "list", "--json"], alone),
        "import trio (for scale)": ([sys.executable, "-c", "import trio"], env),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    try:
        for _ in range(rounds):
            order = list(cases)
            random.shuffle(order)
            for name in order:
                samples[name].append(_once(*cases[name]))
    finally:
        tear_down(env, town)
    results: dict[str, dict[str, float]] = {}
    for name, runs in samples.items():
        results[name] = {"wall_ms": statistics.median(w for w, _ in runs) * 1000,
                         "cpu_ms": statistics.median(c for _, c in runs) * 1000}
    base = results["python -c pass"]
    print(f"{'command':36} {'wall ms':>8} {'x pass':>7} {'cpu ms':>8} {'x pass':>7}")
    for name, r in results.items():
        r["wall_ratio"] = r["wall_ms"] / base["wall_ms"]
        r["cpu_ratio"] = r["cpu_ms"] / base["cpu_ms"]
        print(f"{name:36} {r['wall_ms']:8.1f} {r['wall_ratio']:7.2f} {r['cpu_ms']:8.1f} "
              f"{r['cpu_ratio']:7.2f}")
    print(f"({rounds} interleaved rounds; medians; cpu = the started process's user+sys)")
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
