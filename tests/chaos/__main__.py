"""``python -m tests.chaos --runs N --seed S [--keep]``: the long mode of the chaos test.

Run ``i`` (0-based) uses seed ``S + i``; one failing run is reproduced with
``--runs 1 --seed <its seed>``. Prints one line per run, the violations of failing runs,
and the final figures; exits 1 when any run found a violation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from tests.chaos.harness import as_dict, from_dict, run_once, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="number of runs (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first run")
    parser.add_argument("--keep", action="store_true",
                        help="keep the town (and remote) of each failing run")
    parser.add_argument("--tmux", type=float, default=0.2, metavar="FRACTION",
                        help="fraction of runs on the tmux backend (default 0.2)")
    parser.add_argument("--kills", type=int, default=6, help="most random kills per run")
    parser.add_argument("--faults", type=int, default=2,
                        help="most armed fail points per run")
    parser.add_argument("--timeout", type=float, default=150.0,
                        help="seconds a run may take to settle after its last fault")
    parser.add_argument("--json", type=Path, help="also write the records to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each kill")
    parser.add_argument("--summarize", type=Path, metavar="FILE",
                        help="only print the figures of the records in FILE (from --json)")
    args = parser.parse_args(argv)
    if args.summarize:
        loaded = [from_dict(r) for r in json.loads(args.summarize.read_text())]
        print(summary(loaded))
        return 0 if all(r.ok for r in loaded) else 1
    # Like the test suite: an empty HOME, so no user git or gastown config leaks in.
    with tempfile.TemporaryDirectory(prefix="gtc-home") as home:
        os.environ["HOME"] = home
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    records = []
    for i in range(args.runs):
        record = run_once(args.seed + i, keep=args.keep, tmux_fraction=args.tmux,
                          max_kills=args.kills, max_faults=args.faults,
                          converge_timeout=args.timeout,
                          log=print if args.verbose else lambda line: None)
        records.append(record)
        print(record.report() if not record.ok else record.line(), flush=True)
        if args.json:
            args.json.write_text(json.dumps([as_dict(r) for r in records], indent=1))
    print()
    print(summary(records))
    return 0 if all(r.ok for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
