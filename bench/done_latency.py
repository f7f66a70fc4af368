"""``gastown done`` -> the refinery starting on the MR: event-driven, so no polling interval.

Slings N ``script`` beads into a throw-away town (no gates) and reads, from the town's own
feed, the time between each ``mr_created`` and the matching ``mr_started``.
"""

from __future__ import annotations

import json
import statistics
import time

from bench._town import gastown, make_town


def main(beads: int = 10) -> None:
    env, _ = make_town(bare_remote=True, town_toml=(
        'default_agent = "script"\n[sessions]\nbackend = "process"\n'))
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
