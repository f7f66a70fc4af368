"""Throw-away towns for benchmarks, driven through the real CLI like a user would.

:func:`running_town` builds a town, starts it and always tears it down (``gastown down
--all``, then SIGKILL of any process whose command line still names the town, then the
files), so that a benchmark that fails leaves nothing running. :class:`Feed` follows the
town's domain events (``gastown feed -f --json``) so that benchmarks wait on events, and
read their times from them, instead of polling the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from demo.checks import town_processes

Event = dict[str, Any]
GIT_ID = ["-c", "user.name=b", "-c", "user.email=b@b"]


#: The ``gastown`` console script a user runs (no ``runpy``), else the module form.
_GASTOWN = ([str(Path(sys.executable).parent / "gastown")]
            if (Path(sys.executable).parent / "gastown").is_file()
            else [sys.executable, "-m", "gastown.supervisor"])


def gastown(env: dict[str, str], *args: str) -> str:
    """Run ``gastown ARGS`` as a user does and return its stdout (fails loudly, with its
    stderr)."""
    proc = subprocess.run([*_GASTOWN, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"gastown {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *GIT_ID, *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def make_repo(path: Path, files: int = 0) -> None:
    """A repository at ``path`` on ``main`` (detached, so it accepts pushes) with ``files``
    generated files of ~1 KiB under 100-file folders, in one commit."""
    git("init", "-q", "-b", "main", str(path))
    for i in range(files):
        f = path / f"d{i // 100:03}" / f"f{i:05}.txt"
        f.parent.mkdir(exist_ok=True)
        f.write_text(f"file {i}\n" + "x" * 1000 + "\n")
    git("add", "-A", cwd=path)
    git("commit", "-q", "--allow-empty", "-m", "init", cwd=path)
    git("checkout", "-q", "--detach", cwd=path)


def make_town(*, bare_remote: bool, town_toml: str = "", rig_toml: str = "",
              rigs: tuple[str, ...] = ("web",), files: int = 0) -> tuple[dict[str, str], Path]:
    """A town in a short /tmp path with rigs (``web``) on a repository of ``files`` files
    (through a bare remote if asked). Returns the CLI's environment and the town's root."""
    base = Path(tempfile.mkdtemp(prefix="gtb", dir="/tmp"))
    src = base / "src"
    make_repo(src, files)
    town = base / "town"
    env = dict(os.environ, GASTOWN_TOWN=str(town))
    gastown(env, "install", str(town))
    with open(town / "town.toml", "a") as f:
        f.write(town_toml)
    for rig in rigs:
        repo = src
        if bare_remote:
            repo = base / f"{rig}.git"
            git("clone", "-q", "--bare", str(src), str(repo))
        gastown(env, "rig", "add", rig, str(repo))
        with open(town / rig / "rig.toml", "a") as f:
            f.write(rig_toml)
    return env, town


def tear_down(env: dict[str, str], town: Path) -> None:
    """Stop the town and its agents, kill whatever still names it, delete its folder."""
    subprocess.run([sys.executable, "-m", "gastown.supervisor", "down", "--all"], env=env,
                   capture_output=True, timeout=120)
    for pid in town_processes(town):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(town.parent, ignore_errors=True)


SCRIPT_TOWN = ('default_agent = "script"\n[sessions]\nbackend = "process"\n')


@contextmanager
def running_town(**kwargs: Any) -> Iterator[tuple[dict[str, str], Path]]:
    """:func:`make_town`, ``gastown up``; torn down on the way out, error or not."""
    env, town = make_town(**kwargs)
    try:
        gastown(env, "up")
        yield env, town
    finally:
        tear_down(env, town)


class Feed:
    """One ``gastown feed -f --json`` follower; each event gets ``_seen``, the local
    ``time.time()`` at which the bench read it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "gastown.supervisor", "feed", "-f", "--json"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with suppress(ValueError), self._cond:
                event = json.loads(line)
                event["_seen"] = time.time()
                self.events.append(event)
                self._cond.notify_all()

    def wait(self, done: Callable[[list[Event]], bool], timeout: float = 120.0,
             what: str = "") -> None:
        """Block until ``done(events)`` holds (checked at each new event)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = [e.get("kind") for e in self.events[-15:]]
                    raise SystemExit(f"timed out waiting for {what}; last events {tail}")
                self._cond.wait(min(left, 1.0))

    def kinds(self, kind: str) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e.get("kind") == kind]

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._thread.join(timeout=5)
