"""How fast ``gastown --version`` and ``--help`` start, against a bare interpreter.

Printed as ratios measured side by side in one run, so that a noisy machine moves both
columns together. Lazy imports in the CLI keep the ratio close to 1.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def _time(argv: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(runs: int = 20) -> None:
    bare = _time([sys.executable, "-c", "pass"], runs)
    cases = {
        "gastown --version": [sys.executable, "-m", "gastown.supervisor", "--version"],
        "gastown --help": [sys.executable, "-m", "gastown.supervisor", "--help"],
        "import trio (for scale)": [sys.executable, "-c", "import trio"],
    }
    print(f"{'command':28} {'median ms':>10} {'vs python -c pass':>18}")
    print(f"{'python -c pass':28} {bare * 1000:10.1f} {1.0:18.2f}")
    for name, argv in cases.items():
        t = _time(argv, runs)
        print(f"{name:28} {t * 1000:10.1f} {t / bare:18.2f}")


if __name__ == "__main__":
    main()
