"""Who a pid is, and how to stop a process group, from outside its parent (Linux ``/proc``).

The supervisor, the CLI and ``gastown doctor`` keep pids in files (``supervisor.pid``,
session pid files) that outlive the processes they name. A pid alone is not an
identity: once its process is reaped the kernel hands the number out again, so a
stale pid file would make us signal a stranger. A pid together with the process's
start time (field 22 of ``/proc/<pid>/stat``, in clock ticks since boot) is unique
for the life of the machine, which is what :func:`is_same_process` checks.

Layer: a roles adapter, the one module that reads ``/proc`` and stops process trees
from outside: a pid's identity and environment, who has a path open, stopping a
process group (:func:`terminate_process_group`), a kernel session's whole tree
(:func:`stop_process_tree`, an agent's session) or a stray process
(:func:`stop_process`). Synchronous and standard library only, for the CLI, ``doctor``
and the role loops' worker threads; the supervisor stops its *own* children through
trio (``gastown.roles.adapters.children``), never through this module.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final, NamedTuple

#: How often :func:`terminate_process_group` looks for survivors. A CLI waiting a
#: few seconds for a group to die can afford a ``/proc`` scan every 20 ms.
_POLL_INTERVAL: Final = 0.02

#: How long to wait for a SIGKILLed group to disappear from ``/proc``; SIGKILL cannot
#: be ignored, so only a process stuck in the kernel (state D) takes longer.
_KILL_WAIT: Final = 5.0


class _Stat(NamedTuple):
    state: str
    pgrp: int
    session: int
    start_time: int

    @property
    def live(self) -> bool:
        """Not a zombie (nor dead): it still runs, or can."""
        return self.state not in ("Z", "X")


def _read_stat(pid: int) -> _Stat | None:
    """``state``, ``pgrp``, ``session`` and ``starttime`` of ``pid`` from ``/proc/<pid>/stat``.

    ``None`` when there is no such process. The second field, ``comm``, is the
    executable's name in parentheses and may itself contain spaces and parentheses
    (``python (x) y``), so the fields are counted from the *last* ``)``, which the kernel
    writes right after ``comm``.
    """
    if pid <= 0:
        return None
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:  # gone, or never existed; EACCES cannot happen for stat
        return None
    _, sep, rest = data.rpartition(b")")
    fields = rest.split()
    # fields[0] is field 3 (state), so field N is fields[N - 3].
    if not sep or len(fields) < 20:
        return None
    try:
        return _Stat(fields[0].decode("ascii"), int(fields[5 - 3]), int(fields[6 - 3]),
                     int(fields[22 - 3]))
    except (UnicodeDecodeError, ValueError):
        return None


def _pids() -> list[int]:
    """Every pid in ``/proc`` now (empty when ``/proc`` cannot be read)."""
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or ``None`` if there is no such pid.

    A zombie still has its start time; use :func:`is_same_process` to ask whether a
    process is alive.
    """
    stat = _read_stat(pid)
    return None if stat is None else stat.start_time


def is_same_process(pid: int, start_time: int) -> bool:
    """Whether ``pid`` is alive and is the very process that started at ``start_time``.

    False when the pid is gone, has been reused by another process (a different
    start time), or is a zombie: a zombie has finished running and only waits for
    its parent to collect its status, so it holds nothing and can do nothing.
    """
    stat = _read_stat(pid)
    return stat is not None and stat.live and stat.start_time == start_time


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process has process group ``pgid``.

    ``killpg(pgid, 0)`` is not enough: it succeeds while a zombie member waits for a
    parent (or an init that never reaps) to collect it.
    """
    for pid in _pids():
        stat = _read_stat(pid)
        if stat is not None and stat.pgrp == pgid and stat.live:
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the group; False when no process in it could be found."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def terminate_process_group(pgid: int, grace: float, *, start_time: int | None = None) -> bool:
    """Stop every process in group ``pgid``: SIGTERM, wait up to ``grace`` s, then SIGKILL.

    Args:
        pgid: the group's id, which is the pid of the process that created it
            (``start_new_session=True``).
        grace: seconds the group gets to exit after SIGTERM.
        start_time: when given, the leader's start time as recorded with the pid. If a
            process with pid ``pgid`` exists with another start time, the pid was
            reused and nothing is signalled. (A leader that is simply gone is fine:
            while any member of its group lives the kernel does not reuse the id.)

    Returns:
        True when no live member of the group remains (including when there was none
        to begin with, or the pid was reused); False when a member survived SIGKILL
        for a few seconds, which means it is stuck in the kernel.

    Raises:
        PermissionError: the group belongs to another user.

    Blocks the calling thread for up to ``grace`` plus a few seconds. Tolerates every
    member exiting at any moment.
    """
    if pgid <= 1:
        raise ValueError(f"refusing to signal process group {pgid}")
    if start_time is not None:
        current = process_start_time(pgid)
        if current is not None and current != start_time:
            return True  # the pid now belongs to a stranger; our group is long gone
    if not _signal_group(pgid, signal.SIGTERM):
        return True
    if _wait_group_gone(pgid, grace):
        return True
    if not _signal_group(pgid, signal.SIGKILL):
        return True
    return _wait_group_gone(pgid, _KILL_WAIT)


def processes_with_env(match: dict[str, str]) -> list[int]:
    """Pids of live processes (ours) whose environment has every ``match`` pair.

    Agents carry ``GASTOWN_TOWN``/``GASTOWN_RIG``/``GASTOWN_POLECAT`` in their environment,
    and so do their children; this finds them even when the session that started them
    was never recorded (a mayor killed between starting a session and saving it).
    """
    wanted = {f"{k}={v}".encode() for k, v in match.items()}
    found: list[int] = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        raw = _read_environ(pid)
        stat = _read_stat(pid) if raw is not None and wanted <= set(raw.split(b"\0")) else None
        if stat is not None and stat.state != "Z":
            found.append(pid)
    return found


def _read_environ(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return None


def process_environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with (``/proc/<pid>/environ``); {} if unreadable."""
    out = {}
    for item in (_read_environ(pid) or b"").split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def paths_in_use(entries: Iterable[Path]) -> set[Path]:
    """Which of ``entries`` some live process has its cwd or an open file in."""
    roots = {str(e): e for e in entries}
    busy: set[Path] = set()
    for pid in _pids():
        links = [f"/proc/{pid}/cwd"]
        try:
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            pass
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            for root, entry in roots.items():
                if target == root or target.startswith(root + "/"):
                    busy.add(entry)
    return busy


def stop_process(pid: int, grace: float) -> None:
    """Stop a stray process: its whole group when it leads one (SIGTERM, up to ``grace`` s,
    then SIGKILL: :func:`terminate_process_group`), else SIGKILL it alone. Idempotent."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid == pid:
        terminate_process_group(pgid, grace)
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_process_tree(leader: int, start_time: int, grace: float) -> None:
    """SIGTERM the kernel session led by ``leader``, wait ``grace`` s, SIGKILL what is left.

    The tree is every process in ``leader``'s kernel session or process group, not just
    its group: a shell with job control gives each pipeline a group of its own inside
    the same session. Only a descendant that calls ``setsid`` itself escapes.

    Nothing is signalled when a process ``leader`` exists with another start time: the
    pid was reused, so the agent and its session are long gone. A leader that is simply
    gone is fine: while any process uses its pid as a session or group id, the kernel
    does not hand the pid out again, so those processes are the agent's.
    """
    current = process_start_time(leader)
    if leader <= 1 or (current is not None and current != start_time):
        return
    _signal_all(_session_members(leader), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _session_members(leader):
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL)
    else:
        return
    # Re-sent each round: a process forked between the scan and the signal is caught
    # by the next one.
    deadline = time.monotonic() + _KILL_WAIT
    while members := _session_members(leader):
        if time.monotonic() >= deadline:
            return  # stuck in the kernel; nothing more a signal can do
        _signal_all(members, signal.SIGKILL)
        time.sleep(_POLL_INTERVAL)


def _session_members(leader: int) -> list[tuple[int, int]]:
    """``(pid, pgrp)`` of each live (non-zombie) process in ``leader``'s session or group."""
    members = []
    for pid in _pids():
        stat = _read_stat(pid)
        if stat is not None and stat.live and leader in (stat.pgrp, stat.session):
            members.append((pid, stat.pgrp))
    return members


def _signal_all(members: list[tuple[int, int]], sig: signal.Signals) -> None:
    """Send ``sig`` to each member's group and to each member, tolerating exits."""
    for pgrp in {pgrp for _, pgrp in members}:
        try:
            os.killpg(pgrp, sig)
        except OSError:  # gone, or (a setuid child such as sudo) not ours to signal
            pass
    for pid, _ in members:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
