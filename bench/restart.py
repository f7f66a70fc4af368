"""Role restart latency: SIGKILL of a role -> its replacement reports ready.

Builds a throw-away town with one rig, kills ``witness:<rig>`` N times and reads the
times from the town's own feed (``role_exited`` -> ``role_ready``), plus the wall-clock
time from the kill to the replacement being ``running`` in ``gastown status``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time

from bench._town import gastown, make_town


def main(kills: int = 10) -> None:
    # Room for N kills in one period, and each kill counted as after a stable run.
    env, _ = make_town(bare_remote=False, town_toml=(
        f"[supervisor]\nmax_restarts = {kills * 2}\nstable_after = \"0.3s\"\n"))
    gastown(env, "up")
    wall: list[float] = []
    try:
        for _ in range(kills):
            roles = {r["name"]: r for r in json.loads(gastown(env, "status", "--json"))["roles"]}
            old = roles["witness:web"]["pid"]
            start = time.perf_counter()
            os.kill(old, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while True:
                role = {r["name"]: r for r in json.loads(
                    gastown(env, "status", "--json"))["roles"]}["witness:web"]
                if role["state"] == "running" and role["pid"] != old:
                    break
                if time.monotonic() > deadline or role["state"] == "failed":
                    raise SystemExit(f"witness:web did not come back: {role}")
                time.sleep(0.01)
            wall.append(time.perf_counter() - start)
            time.sleep(0.5)
        events = [json.loads(line) for line in gastown(env, "feed", "--json").splitlines()]
    finally:
        gastown(env, "down")
    exited = [e["ts"] for e in events if e["kind"] == "role_exited"]
    ready = [e["ts"] for e in events if e["kind"] == "role_ready" and e.get("restarts")]
    feed = [r - x for x, r in zip(exited, ready, strict=False)]
    print(f"kills: {kills}")
    print(f"feed role_exited -> role_ready: median {statistics.median(feed) * 1000:.0f} ms, "
          f"max {max(feed) * 1000:.0f} ms")
    print(f"kill -> running in status (incl. CLI polling): median "
          f"{statistics.median(wall) * 1000:.0f} ms, max {max(wall) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
