"""The world of one chaos run: a bare remote, a town with one rig, a recording gate and a
recording post-commit hook; and how to find the town's processes in ``/proc``.

Everything is real: the ``gastown`` CLI (``tests.conftest.Cli``), git, processes. The
harness writes two files of its own beside the town, never inside a repository:

- ``gate.txt``: one line ``<tree> pass|fail`` per gate run that got to its verdict;
- ``commits.txt``: one line ``<commit> <bead> <polecat>`` per commit an agent
  made (a post-commit hook in the refinery clone, shared by every polecat worktree,
  recording only processes with ``GASTOWN_ROLE=polecat``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.chaos.plan import RIG, Plan
from tests.conftest import GIT_IDENTITY, Cli, git

#: Roles of a one-rig town.
ROLES = ("mayor", f"witness:{RIG}", f"refinery:{RIG}")

#: How long a fail point pauses; the harness kills the paused process long before.
PAUSE_SECONDS = 60

POLICY = """
[supervisor]
stop_timeout = "3s"
restart_delay = "0.05s"
restart_max_delay = "0.5s"
max_restarts = 1000
restart_period = "10s"
"""

HOOK = """#!/bin/sh
# chaos harness: record every commit an agent makes (first thing: the agent may be killed)
[ "$GASTOWN_ROLE" = polecat ] || exit 0
echo "$(git rev-parse HEAD) ${GASTOWN_BEAD:--} ${GASTOWN_POLECAT:--}" >> %(log)s
"""


def gate_command(record: Path, delay: float) -> str:
    """Record the tested tree, wait (a window for kills), then pass unless BROKEN exists."""
    out = shlex.quote(str(record))
    return (f't=$(git rev-parse "HEAD^{{tree}}"); sleep {delay}; '
            f'if [ -e BROKEN ]; then echo "$t fail" >> {out}; exit 1; fi; '
            f'echo "$t pass" >> {out}')


@dataclass
class World:
    """Paths and the CLI of one run. ``base`` holds everything and is deleted at the end
    (unless kept); the town is ``base/t`` (short: the bus socket path must fit 108 bytes)."""

    base: Path
    town: Path
    remote: Path
    gate_record: Path
    commit_record: Path
    fault_state: Path
    cli: Cli
    initial: str

    @property
    def clone(self) -> Path:
        return self.town / RIG / "refinery" / "rig"

    @property
    def polecats_dir(self) -> Path:
        return self.town / RIG / "polecats"

    @property
    def pool_dir(self) -> Path:
        """The rig's warm pool (runs with ``polecats.pool_size``): idle, detached trees."""
        return self.town / RIG / "pool"

    @property
    def speculative_checkout(self) -> Path:
        """The refinery's second checkout (runs with ``merge_queue.speculative``)."""
        return self.town / RIG / "refinery" / "speculative"


def base_env() -> dict[str, str]:
    """The environment of the run's CLI calls: no inherited town, a git identity, no
    user git config, an empty HOME (set by the caller)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GASTOWN_", "GIT_", "TMUX"))}
    env.update(GIT_IDENTITY)
    return env


def build_world(plan: Plan) -> World:
    """A fresh remote and town for ``plan``, rig added, town not started."""
    base = Path(tempfile.mkdtemp(prefix="gtc", dir="/tmp"))
    home = base / "home"
    home.mkdir()
    env = base_env()
    env["HOME"] = str(home)
    src = base / "src"
    src.mkdir()
    git("init", "-q", "-b", "main", cwd=src)
    (src / "README.md").write_text("chaos\n")
    (src / "shared.txt").write_text("line 1\nline 2\nline 3\n")
    subprocess.run(["git", "add", "-A"], cwd=src, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "initial commit"], cwd=src, env=env,
                   check=True)
    remote = base / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(remote)], env=env,
                   check=True)
    git("config", "core.logAllRefUpdates", "always", cwd=remote)
    initial = git("rev-parse", "main", cwd=remote).strip()
    town = base / "t"
    cli = Cli(cwd=base, env=env)
    cli.ok("install", str(town))
    cli.env["GASTOWN_TOWN"] = str(town)
    fault_state = base / "faults"
    fault_state.mkdir()
    cli.env["GASTOWN_FAULT_STATE"] = str(fault_state)
    if plan.faults:
        cli.env["GASTOWN_FAULTS"] = ";".join(
            f"{f.process}@{f.point}=pause:{PAUSE_SECONDS}:once" for f in plan.faults)
    (town / "town.toml").write_text(
        (town / "town.toml").read_text()
        + f'default_agent = "script"\nmax_polecats = 40\n[sessions]\nbackend = "{plan.backend}"\n'
        + POLICY)
    cli.ok("rig", "add", RIG, str(remote))
    gate_record = base / "gate.txt"
    rig_toml = town / RIG / "rig.toml"
    batch = '"auto"' if plan.batch_size == "auto" else "1"
    rig_toml.write_text(
        rig_toml.read_text()
        + f"[polecats]\npool_size = {plan.pool_size}\n"
        + f'[merge_queue]\non_conflict = "{plan.on_conflict}"\n'
        + f"batch_size = {batch}\nspeculative = {'true' if plan.speculative else 'false'}\n"
        + '[[merge_queue.gates]]\nname = "test"\n'
        + f"command = {json.dumps(gate_command(gate_record, plan.gate_delay))}\n"
        + 'timeout = "120s"\n')
    commit_record = base / "commits.txt"
    world = World(base=base, town=town, remote=remote, gate_record=gate_record,
                  commit_record=commit_record, fault_state=fault_state, cli=cli,
                  initial=initial)
    hook = world.clone / ".git" / "hooks" / "post-commit"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(HOOK % {"log": shlex.quote(str(commit_record))})
    hook.chmod(0o755)
    return world


def remove_world(world: World) -> None:
    shutil.rmtree(world.base, ignore_errors=True)


# -- processes -------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid``, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return fields[0], int(fields[1])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    # A role forked from the fork server has its command as one title (setproctitle):
    # split on blanks too (the test towns' paths have none).
    return raw.replace(b"\0", b" ").decode(errors="replace").split()


def _environ(pid: int) -> set[bytes]:
    try:
        return set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    except OSError:
        return set()


def _live_stats() -> dict[int, tuple[str, int]]:
    """(state, ppid) of every live process but kernel threads (kthreadd, pid 2, and its
    children): the chaos loop takes a census several times a second."""
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or entry == "2":
            continue
        stat = _stat(int(entry))
        if stat is not None and stat[0] not in ("Z", "X") and stat[1] != 2:
            stats[int(entry)] = stat
    return stats


@dataclass
class Census:
    """The town's live processes, by what they are."""

    supervisors: list[int]
    roles: dict[str, list[int]]  # role name -> pids (more than one is a bug)
    agents: list[int]  # processes carrying a polecat's identity (sessions, their children)
    gates: list[int]  # gate processes of the rig's refinery
    others: dict[int, str]  # anything else of the town that is not a child of the above

    def role_pid(self, role: str) -> int | None:
        pids = self.roles.get(role, [])
        return pids[0] if len(pids) == 1 else None


def census(world: World) -> Census:
    """Every live process of the town, classified.

    Supervisor and roles are found by command line (``gastown.supervisor ... up`` and
    ``gastown.roles ROLE --town TOWN``); a role's short-lived fork that still has the
    role's command line is not a second role. Agents are found by environment
    (``GASTOWN_TOWN`` and ``GASTOWN_ROLE=polecat``), gates by ``GASTOWN_GATE_OF``.
    ``others`` are the town's processes (``GASTOWN_TOWN`` in the environment or the town
    in the command line) that descend from none of these: nothing should be there.
    """
    town = str(world.town)
    town_env = f"GASTOWN_TOWN={town}".encode()
    gate_env = f"GASTOWN_GATE_OF={town}:{RIG}".encode()
    polecat_env = b"GASTOWN_ROLE=polecat"
    supervisors: list[int] = []
    roles: dict[str, list[int]] = defaultdict(list)
    agents: list[int] = []
    gates: list[int] = []
    candidates: dict[int, str] = {}
    cmdlines: dict[int, list[str]] = {}
    parents: dict[int, int] = {}
    me = os.getpid()
    for pid, stat in _live_stats().items():
        if pid == me:
            continue
        parents[pid] = stat[1]
        cmd = _cmdline(pid)
        cmdlines[pid] = cmd
        environ = _environ(pid)
        if gate_env in environ:
            gates.append(pid)
        elif polecat_env in environ and town_env in environ:
            agents.append(pid)
        elif town in cmd and "gastown.supervisor" in cmd and "up" in cmd:
            supervisors.append(pid)
        elif "gastown.roles" in cmd and town in cmd:
            roles[cmd[cmd.index("gastown.roles") + 1]].append(pid)
        elif town_env in environ or any(town in part for part in cmd):
            candidates[pid] = " ".join(cmd)
    # A role's fork (git via sh) has the role's command line for an instant.
    for name, pids in list(roles.items()):
        roles[name] = [p for p in pids if cmdlines.get(parents.get(p, 0)) != cmdlines[p]]
    owners = set(supervisors) | {p for pids in roles.values() for p in pids} | set(gates) \
        | set(agents)

    def descends(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid in owners:
                return True
            pid = parents.get(pid, 0)
            seen += 1
        return False

    others = {pid: cmd for pid, cmd in candidates.items() if not descends(parents.get(pid, 0))}
    return Census(supervisors, dict(roles), agents, gates, others)


def lock_holders(path: Path) -> set[int] | None:
    """Pids holding a lock on ``path`` (``/proc/locks``; waiters excluded), or None when
    the file does not exist."""
    try:
        inode = path.stat().st_ino
    except OSError:
        return None
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":
            continue
        if fields[5].rpartition(":")[2] == str(inode) and fields[4].isdigit():
            holders.add(int(fields[4]))
    return holders


def acting_role_processes(world: World, seen: Census) -> dict[str, list[int]]:
    """The processes acting as each role: with role locks (``.runtime/roles/*.lock``)
    those holding it, a second instance waiting for the lock is not acting yet; without
    them, every process of the role."""
    out = {}
    for role, pids in seen.roles.items():
        lock = world.town / ".runtime" / "roles" / (role.replace(":", "-") + ".lock")
        holders = lock_holders(lock)
        out[role] = pids if holders is None else [p for p in pids if p in holders]
    return out


def kill(pids: list[int]) -> int:
    """SIGKILL each pid; returns how many were still there to kill."""
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, 9)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def tmux_sessions(world: World) -> list[str]:
    from gastown.roles.adapters.sessions import tmux_socket_name

    if shutil.which("tmux") is None:
        return []
    result = subprocess.run(["tmux", "-L", tmux_socket_name(world.town), "list-sessions",
                             "-F", "#{session_name}"], capture_output=True, text=True,
                            check=False)
    return result.stdout.split() if result.returncode == 0 else []


def kill_tmux_server(world: World) -> None:
    from gastown.roles.adapters.sessions import tmux_socket_name

    if shutil.which("tmux") is not None:
        subprocess.run(["tmux", "-L", tmux_socket_name(world.town), "kill-server"],
                       capture_output=True, check=False)


# -- the store, read-only --------------------------------------------------------------


def store_rows(world: World, sql: str) -> list[dict[str, Any]]:
    """Rows of a read-only query on the town's store (cheap enough to poll)."""
    db = world.town / "state.db"
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute(sql).fetchall()]
    finally:
        connection.close()
