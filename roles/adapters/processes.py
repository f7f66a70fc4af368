"""Who a pid is, and how to stop a process group, from outside its parent (Linux ``/proc``).

The supervisor, the CLI and ``gastown doctor`` keep pids in files (``supervisor.pid``,
session pid files) that outlive the processes they name. A pid alone is not an
identity: once its process is reaped the kernel hands the number out again, so a
stale pid file would make us signal a stranger. A pid together with the process's
start time (field 22 of ``/proc/<pid>/stat``, in clock ticks since boot) is unique
for the life of the machine, which is what :func:`is_same_process` checks.

Synchronous and standard library only, for the CLI; the supervisor stops its *own*
children through trio (``gastown.roles.adapters.children``), never through this module.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Final

#: How often :func:`terminate_process_group` looks for survivors. A CLI waiting a
#: few seconds for a group to die can afford a ``/proc`` scan every 20 ms.
_POLL_INTERVAL: Final = 0.02

#: How long to wait for a SIGKILLed group to disappear from ``/proc``; SIGKILL cannot
#: be ignored, so only a process stuck in the kernel (state D) takes longer.
_KILL_WAIT: Final = 5.0


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, pgrp, starttime)`` of ``pid`` from ``/proc/<pid>/stat``, or ``None``.

    The second field, ``comm``, is the executable's name in parentheses and may itself
    contain spaces and parentheses (``python (x) y``), so the fields are counted from
    the *last* ``)``, which the kernel writes right after ``comm``.
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
        return fields[0].decode("ascii"), int(fields[5 - 3]), int(fields[22 - 3])
    except (UnicodeDecodeError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or ``None`` if there is no such pid.

    A zombie still has its start time; use :func:`is_same_process` to ask whether a
    process is alive.
    """
    stat = _read_stat(pid)
    return None if stat is None else stat[2]


def is_same_process(pid: int, start_time: int) -> bool:
    """Whether ``pid`` is alive and is the very process that started at ``start_time``.

    False when the pid is gone, has been reused by another process (a different
    start time), or is a zombie: a zombie has finished running and only waits for
    its parent to collect its status, so it holds nothing and can do nothing.
    """
    stat = _read_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[2] == start_time


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process has process group ``pgid``.

    ``killpg(pgid, 0)`` is not enough: it succeeds while a zombie member waits for a
    parent (or an init that never reaps) to collect it.
    """
    try:
        names = os.listdir("/proc")
    except OSError:
        return False
    for name in names:
        if not name.isdigit():
            continue
        stat = _read_stat(int(name))
        if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
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
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = set(f.read().split(b"\0"))
        except OSError:
            continue
        stat = _read_stat(int(entry)) if wanted <= environ else None
        if stat is not None and stat[0] != "Z":
            found.append(int(entry))
    return found
