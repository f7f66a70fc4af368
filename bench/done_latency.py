"""``gastown done`` -> the refinery starting on the MR: event-driven, so no polling interval.

Slings N ``script`` beads into a throw-away town (no gates) and reads, from the town's own
feed, the time between each ``mr_created`` and the matching ``mr_started``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def gastown(env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "gastown.supervisor", *args], env=env,
                          check=True, capture_output=True, text=True).stdout


def main(beads: int = 10) -> None:
    base = Path(tempfile.mkdtemp(prefix="gtb", dir="/tmp"))
    src = base / "src"
    subprocess.run(["git", "init", "-q", "-b", "main", str(src)], check=True)
    subprocess.run(["git", "-C", str(src), "-c", "user.name=b", "-c", "user.email=b@b",
                    "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(base / "remote.git")],
                   check=True)
    town = base / "town"
    env = dict(os.environ, GASTOWN_TOWN=str(town))
    gastown(env, "install", str(town))
    with open(town / "town.toml", "a") as f:
        f.write('default_agent = "script"\n[sessions]\nbackend = "process"\n')
    gastown(env, "rig", "add", "web", str(base / "remote.git"))
    gastown(env, "up")
    try:
        for i in range(beads):
            bead = gastown(env, "bead", "create", f"b{i}", "--rig", "web", "-d",
                           f"echo {i} > f{i}.txt").strip()
            gastown(env, "sling", bead, "web")
            deadline = time.monotonic() + 60
            while json.loads(gastown(env, "bead", "show", bead, "--json"))["status"] != "closed":
                if time.monotonic() > deadline:
                    raise SystemExit(f"{bead} did not merge")
                time.sleep(0.05)
        events = [json.loads(line) for line in gastown(env, "feed", "--json").splitlines()]
    finally:
        gastown(env, "down", "--all")
    created = {e["mr"]: e["ts"] for e in events if e["kind"] == "mr_created"}
    started = {e["mr"]: e["ts"] for e in events if e["kind"] == "mr_started"}
    gaps = [started[m] - created[m] for m in created if m in started]
    print(f"MRs: {len(gaps)} (one at a time, no gates)")
    print(f"mr_created -> mr_started: median {statistics.median(gaps) * 1000:.1f} ms, "
          f"max {max(gaps) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
