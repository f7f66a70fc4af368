"""Throw-away towns for benchmarks, driven through the real CLI like a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def gastown(env: dict[str, str], *args: str) -> str:
    """Run ``gastown ARGS`` and return its stdout (fails loudly)."""
    return subprocess.run([sys.executable, "-m", "gastown.supervisor", *args], env=env,
                          check=True, capture_output=True, text=True).stdout


def make_town(*, bare_remote: bool, town_toml: str = "") -> tuple[dict[str, str], Path]:
    """A town in a short /tmp path with one rig ``web`` (from a bare remote if asked).

    Returns the environment that points the CLI at it, and the town's root.
    """
    base = Path(tempfile.mkdtemp(prefix="gtb", dir="/tmp"))
    src = base / "src"
    subprocess.run(["git", "init", "-q", "-b", "main", str(src)], check=True)
    subprocess.run(["git", "-C", str(src), "-c", "user.name=b", "-c", "user.email=b@b",
                    "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    repo = src
    # A working copy with main checked out refuses pushes (and rig add refuses it): detach.
    subprocess.run(["git", "-C", str(src), "checkout", "-q", "--detach"], check=True)
    if bare_remote:
        repo = base / "remote.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(src), str(repo)], check=True)
    town = base / "town"
    env = dict(os.environ, GASTOWN_TOWN=str(town))
    gastown(env, "install", str(town))
    with open(town / "town.toml", "a") as f:
        f.write(town_toml)
    gastown(env, "rig", "add", "web", str(repo))
    return env, town
