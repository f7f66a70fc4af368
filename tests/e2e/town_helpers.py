"""Helpers for tests that run a whole town: short paths, process scans, waiting on status."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from demo.checks import town_processes as demo_town_processes
from tests.conftest import Cli
from tests.waiting import wait_until as wait_until  # re-exported for the e2e tests


def town_processes(town: Path) -> dict[int, str]:
    """Every live gastown process (not a zombie) whose command line names this town."""
    return {pid: argv for pid, argv in demo_town_processes(town).items() if "gastown" in argv}


def role_processes(town: Path) -> dict[str, int]:
    """Role name -> pid for the town's live role processes.

    A role that forks (git through ``sh``) has, for an instant, a child with the same
    command line; a process whose parent has its command line is that child, not a role.
    """
    found = town_processes(town)
    out: dict[str, int] = {}
    for pid, cmd in found.items():
        parts = cmd.split()
        if "gastown.roles" not in parts:
            continue
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if found.get(ppid) == cmd:
            continue
        out[parts[parts.index("gastown.roles") + 1]] = pid
    return out


def status(cli: Cli) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cli.ok("status", "--json"))
    return result


def roles_by_name(cli: Cli) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in status(cli)["roles"]}


def feed_kinds(cli: Cli, role: str | None = None) -> list[str]:
    events = [json.loads(line) for line in cli.ok("feed", "--json").splitlines()]
    return [e["kind"] for e in events if role is None or e.get("role") == role]


def role_crashes(town: Path) -> list[str]:
    """Tracebacks that role processes wrote to their ``logs/*.out``: each one is a bug."""
    found = []
    for out in sorted((town / "logs").glob("*.out")):
        text = out.read_text(errors="replace")
        if "Traceback (most recent call last)" in text:
            found.append(f"{out.name}:\n{text[text.index('Traceback'):][:3000]}")
    return found


def new_town_root() -> Path:
    """A fresh town path short enough for the bus socket (``sun_path`` is 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="gt", dir="/tmp")) / "t"


def bare_remote_town(cli: Cli, tmp_path: Path, town_toml: str) -> Path:
    """A town (not started) in a short path whose ``town.toml`` is ``town_toml``, with rig
    ``web`` on a bare clone of a fresh repository; ``cli`` is pointed at it. Tear it down
    with :func:`tear_down_town`."""
    from tests.conftest import git, make_repo

    root = new_town_root()
    cli.ok("install", str(root))
    (root / "town.toml").write_text(town_toml)
    cli.env["GASTOWN_TOWN"] = str(root)
    src = make_repo(tmp_path / "web")
    git("clone", "-q", "--bare", str(src), str(tmp_path / "web.git"), cwd=tmp_path)
    cli.ok("rig", "add", "web", str(tmp_path / "web.git"))
    return root


def script_town(cli: Cli, remote: Path, *, town_toml: str = "", rig_toml: str = "") -> Path:
    """A town (not started) whose ``script`` agents run detached (process backend), with
    rig ``web`` on ``remote``; ``cli`` is pointed at it. ``town_toml`` and ``rig_toml``
    are appended to the two files (caps, agents, gates). Tear it down with
    :func:`tear_down_town`."""
    root = new_town_root()
    cli.ok("install", str(root))
    (root / "town.toml").write_text(
        'default_agent = "script"\n' + town_toml + '[sessions]\nbackend = "process"\n'
        '[supervisor]\nstop_timeout = "3s"\nrestart_delay = "0.05s"\n')
    cli.env["GASTOWN_TOWN"] = str(root)
    cli.ok("rig", "add", "web", str(remote))
    rig_file = root / "web" / "rig.toml"
    rig_file.write_text(rig_file.read_text() + rig_toml)
    return root


def tear_down_town(cli: Cli, root: Path) -> None:
    """Stop the town and its agents, kill whatever is left, delete it; then fail the test
    if any role process wrote a traceback while it ran, or a rig broke an invariant of
    its default branch (``tests/invariants.py``)."""
    cli("down", "--all")
    for pid in town_processes(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    from gastown.roles.adapters.sessions import tmux_socket_name

    subprocess.run(["tmux", "-L", tmux_socket_name(root), "kill-server"],
                   capture_output=True, check=False)
    crashes = role_crashes(root)
    from tests.invariants import check_town_invariants

    # Main never moved backwards; every merged MR's patch is on it, once (tests/invariants.py).
    broken = check_town_invariants(root)
    shutil.rmtree(root.parent, ignore_errors=True)
    assert not crashes, "\n".join(crashes)
    assert not broken, "\n".join(broken)


def role_history(cli: Cli, role: str) -> str:
    """The feed's events about ``role``, for assertion messages."""
    return "\n".join(line for line in cli.ok("feed").splitlines() if role in line)


# -- what the e2e tests read back (the real CLI's JSON) ----------------------------------


def beads(cli: Cli) -> dict[str, dict[str, object]]:
    return {b["id"]: b for b in json.loads(cli.ok("bead", "list", "--json"))}


def polecats(cli: Cli) -> dict[str, dict[str, object]]:
    return {p["name"]: p for p in json.loads(cli.ok("polecat", "list", "--json"))}


def events(cli: Cli) -> list[dict[str, object]]:
    return [json.loads(line) for line in cli.ok("feed", "--json").splitlines()]


def clone(town: Path, rig: str = "web") -> Path:
    """The rig's canonical clone (where the refinery merges)."""
    return town / rig / "refinery" / "rig"


def configure(town: Path, text: str, rig: str = "web") -> None:
    """Append ``text`` to the rig's rig.toml."""
    path = town / rig / "rig.toml"
    path.write_text(path.read_text() + text)


def gate(name: str, command: str, timeout: str = "60s") -> str:
    """A ``[[merge_queue.gates]]`` entry for :func:`configure`."""
    return (f'[[merge_queue.gates]]\nname = "{name}"\ncommand = {json.dumps(command)}\n'
            f'timeout = "{timeout}"\n')
