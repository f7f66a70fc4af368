"""An idle town with 2 rigs: CPU-seconds per minute and RSS per process, vs supervisord.

The town (supervisor, CLI server, mayor, a witness and a refinery per rig; pids from
``gastown status --json`` and the supervisor's children) is started, its roles' ``role_ready``
awaited on the feed, then left alone for the window. Alongside, in the same window,
supervisord (the bench's venv, see :mod:`bench.restart`) supervises five idle Python
processes that import trio and sleep in ``trio.run``. CPU = user + system from
``/proc/<pid>/stat``, including reaped children (git), over the window; RSS at its end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._town import Feed, gastown, running_town
from bench.restart import VENV, ensure_venv

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_s(pid: int) -> float:
    """User + system seconds of ``pid`` and its reaped children (0 if it is gone)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in f[11:15]) / TICK


def rss_mib(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except OSError:
        return 0.0


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(entry))
    return out


def start_supervisord(d: Path) -> subprocess.Popen[bytes]:
    progs = "".join(
        f"[program:p{i}]\ncommand = {sys.executable} -c \"import trio; "
        f"trio.run(trio.sleep_forever)\"\n" for i in range(5))
    (d / "s.conf").write_text(f"[supervisord]\nnodaemon = true\nlogfile = {d}/s.log\n"
                              f"pidfile = {d}/s.pid\n{progs}")
    return subprocess.Popen([str(VENV / "bin" / "supervisord"), "-c", str(d / "s.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def main(window: float = 60.0) -> dict[str, Any]:
    reason = ensure_venv()
    d = Path(tempfile.mkdtemp(prefix="gtbi", dir="/tmp"))
    sup = None if reason else start_supervisord(d)
    results: dict[str, Any] = {}
    try:
        with running_town(bare_remote=True, rigs=("web", "api")) as (env, _town):
            feed = Feed(env)
            try:
                feed.wait(lambda es: len({e.get("role") for e in es
                                          if e.get("kind") == "role_ready"}) >= 5,
                          what="5 roles ready")
            finally:
                feed.close()
            status = json.loads(gastown(env, "status", "--json"))
            spid = int(status["supervisor"]["pid"])
            pids = {"supervisor": spid} | {r["name"]: int(r["pid"]) for r in status["roles"]}
            for pid in children(spid):
                if pid not in pids.values():
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    name = "cli server" if b"gastown.supervisor.cli_server" in argv else (
                        argv[0].decode(errors="replace")[-30:])
                    pids[f"{name} ({pid})"] = pid
            if sup is not None:
                pids["supervisord"] = sup.pid
                for i, pid in enumerate(children(sup.pid)):
                    pids[f"supervisord child {i}"] = pid
            time.sleep(5)  # settle: start-up work of the roles is not idle time
            before = {n: cpu_s(p) for n, p in pids.items()}
            time.sleep(window)  # the measurement: the town left alone
            for name, pid in pids.items():
                results[name] = {"cpu_s_per_min": (cpu_s(pid) - before[name]) * 60 / window,
                                 "rss_mib": rss_mib(pid)}
    finally:
        if sup is not None:
            os.killpg(sup.pid, signal.SIGTERM)
            sup.wait(timeout=30)
        shutil.rmtree(d, ignore_errors=True)
    town = {n: r for n, r in results.items() if not n.startswith("supervisord")}
    base = {n: r for n, r in results.items() if n.startswith("supervisord")}
    print(f"{'process':40} {'cpu s/min':>10} {'RSS MiB':>8}")
    for name, r in results.items():
        print(f"{name:40} {r['cpu_s_per_min']:10.3f} {r['rss_mib']:8.1f}")
    summary = {k: {"cpu_s_per_min": sum(r["cpu_s_per_min"] for r in v.values()),
                   "rss_mib": sum(r["rss_mib"] for r in v.values()), "processes": len(v)}
               for k, v in (("town", town), ("supervisord + 5", base)) if v}
    for k, s in summary.items():
        print(f"{'total ' + k + ' (' + str(s['processes']) + ' processes)':40} "
              f"{s['cpu_s_per_min']:10.3f} {s['rss_mib']:8.1f}")
    if len(summary) == 2:
        t, b = summary["town"], summary["supervisord + 5"]
        summary["ratio"] = {"rss": t["rss_mib"] / b["rss_mib"],
                            "cpu": t["cpu_s_per_min"] / b["cpu_s_per_min"]
                            if b["cpu_s_per_min"] else float("inf")}
        print(f"{'town / supervisord + 5':40} {summary['ratio']['cpu']:9.2f}x "
              f"{summary['ratio']['rss']:7.2f}x")
    if reason:
        print(f"supervisord: not measured: {reason}")
    print(f"(one {window:.0f} s window, both idle at the same time; cpu includes reaped "
          "children)")
    return {"processes": results, "totals": summary}


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0)
