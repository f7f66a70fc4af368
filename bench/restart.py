"""Role restart: SIGKILL of a supervised process -> its replacement ready, vs supervisord, circus.

gastown: a town with one rig; ``witness:web`` is killed and the replacement's
``role_ready`` is read from the feed (``gastown feed -f --json``; its ``ts`` is the
supervisor's clock, the same machine's). supervisord and circus are installed by the bench
into their own venv under ``~/.cache/gastown-bench`` (pip); each supervises a Python
process that imports trio, then writes its pid into a FIFO the bench reads (no polling).
Each system runs with its default settings and with its tightest ones; all six run at the
same time and the kills interleave (shuffled per round). Figures: median and max.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from bench._town import Event, Feed, gastown, make_town, tear_down

VENV = Path.home() / ".cache" / "gastown-bench" / "venv"
CHILD = ("import trio, os, sys\nfd = os.open(sys.argv[1], os.O_WRONLY)\n"
         "os.write(fd, b'%d\\n' % os.getpid())\ntrio.run(trio.sleep_forever)\n")


class Subject(Protocol):
    name: str

    def kill(self) -> float: ...

    def stop(self) -> None: ...


def ensure_venv() -> str | None:
    """Install supervisor and circus into the bench's venv; the reason on failure."""
    if (VENV / "bin" / "circusd").exists() and (VENV / "bin" / "supervisord").exists():
        return None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True,
                       capture_output=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "supervisor", "circus"],
                       check=True, capture_output=True, text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        err = getattr(exc, "stderr", "") or str(exc)
        return f"pip install supervisor circus failed: {str(err).strip()[-200:]}"
    return None


class Fifo:
    """A process manager supervising one trio child that reports its pid through a FIFO."""

    def __init__(self, name: str, argv_for: Any) -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix="gtbr", dir="/tmp"))
        fifo = self.dir / "ready"
        os.mkfifo(fifo)
        self.fd = os.open(fifo, os.O_RDWR)
        (self.dir / "child.py").write_text(CHILD)
        child = f"{sys.executable} {self.dir / 'child.py'} {fifo}"
        argv = argv_for(self.dir, child)
        self.proc = subprocess.Popen(argv, cwd=self.dir, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.pid = self._read(60)

    def _read(self, timeout: float) -> int:
        if not select.select([self.fd], [], [], timeout)[0]:
            raise SystemExit(f"{self.name}: no ready line within {timeout}s")
        return int(os.read(self.fd, 64).split()[-1])

    def kill(self) -> float:
        start = time.perf_counter()
        os.kill(self.pid, signal.SIGKILL)
        self.pid = self._read(60)
        return time.perf_counter() - start

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        os.close(self.fd)
        shutil.rmtree(self.dir, ignore_errors=True)


def supervisord(tight: bool) -> Fifo:
    def argv(d: Path, child: str) -> list[str]:
        extra = "startsecs = 0\n" if tight else ""
        (d / "s.conf").write_text(
            f"[supervisord]\nnodaemon = true\nlogfile = {d}/s.log\npidfile = {d}/s.pid\n"
            f"[program:p]\ncommand = {child}\nautorestart = true\n{extra}")
        return [str(VENV / "bin" / "supervisord"), "-c", str(d / "s.conf")]
    return Fifo(f"supervisord ({'tightest' if tight else 'default'})", argv)


def circus(tight: bool) -> Fifo:
    def argv(d: Path, child: str) -> list[str]:
        extra = "check_delay = 0.01\n" if tight else ""
        (d / "c.ini").write_text(
            f"[circus]\nendpoint = ipc://{d}/e\npubsub_endpoint = ipc://{d}/p\n"
            f"stats_endpoint = ipc://{d}/s\n{extra}"
            f"[watcher:p]\ncmd = {child}\nnumprocesses = 1\n")
        return [str(VENV / "bin" / "circusd"), str(d / "c.ini")]
    return Fifo(f"circus ({'tightest' if tight else 'default'})", argv)


class Town:
    """``witness:web`` of a throw-away town, its restarts read from the feed."""

    def __init__(self, tight: bool, kills: int) -> None:
        self.name = f"gastown ({'tightest' if tight else 'default'})"
        delay = "0s" if tight else "0.1s"
        # Room for every kill in one period, each counted as after a stable run.
        self.env, self.town = make_town(bare_remote=False, town_toml=(
            f"[supervisor]\nmax_restarts = {kills * 2 + 5}\nstable_after = \"0.2s\"\n"
            f"restart_delay = \"{delay}\"\n"))
        self.feed: Feed | None = None
        try:
            gastown(self.env, "up")
            self.feed = Feed(self.env)
            self.feed.wait(lambda es: bool(self._ready(es)), what="witness:web ready")
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _ready(events: list[Event]) -> list[Event]:
        return [e for e in events if e.get("kind") == "role_ready"
                and e.get("role") == "witness:web"]

    def kill(self) -> float:
        assert self.feed is not None
        seen = self._ready(self.feed.events)
        old = seen[-1]["pid"]
        start = time.time()
        os.kill(old, signal.SIGKILL)
        self.feed.wait(lambda es: len(self._ready(es)) > len(seen), what="witness:web back")
        return float(self._ready(self.feed.events)[len(seen)]["ts"]) - start

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.close()
        tear_down(self.env, self.town)


def main(kills: int = 9) -> dict[str, Any]:
    reason = ensure_venv()
    subjects: list[Subject] = []
    samples: dict[str, list[float]] = {}
    try:
        for tight in (False, True):
            subjects.append(Town(tight, kills))
        if reason is None:
            for tight in (False, True):
                subjects += [supervisord(tight), circus(tight)]
        for s in subjects:
            samples[s.name] = []
        for _ in range(kills):
            random.shuffle(subjects)
            for s in subjects:
                samples[s.name].append(s.kill())
                time.sleep(0.3)  # past gastown's stable_after: no back-off carried over
    finally:
        for s in subjects:
            s.stop()
    results: dict[str, Any] = {}
    base = statistics.median(samples.get("supervisord (default)", [float("nan")]))
    print(f"{'kill -> replacement ready':28} {'median ms':>10} {'max ms':>8} {'x supervisord':>14}")
    for name in sorted(samples):
        med = statistics.median(samples[name])
        results[name] = {"median_ms": med * 1000, "max_ms": max(samples[name]) * 1000,
                         "ratio_supervisord": med / base}
        print(f"{name:28} {med * 1000:10.0f} {max(samples[name]) * 1000:8.0f} "
              f"{med / base:14.2f}")
    if reason is not None:
        print(f"supervisord, circus: not measured: {reason}")
        results["not_measured"] = reason
    print(f"({kills} kills each, interleaved; gastown: kill -> role_ready ts from the feed; "
          "others: kill -> the new child's line in a FIFO; the child imports trio)")
    return results


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
