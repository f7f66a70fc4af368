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
(:func:`stop_process_tree`, an agent's session: one pass over ``/proc/*/stat``, deaths
awaited on pidfds) or a stray process
(:func:`stop_process`). Synchronous and standard library only, for the CLI, ``doctor``
and the role loops' worker threads; the supervisor stops its *own* children through
trio (``gastown.roles.adapters.children``), never through this module.
"""

from __future__ import annotations

import os
import select
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
    ppid: int
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
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:  # gone, or never existed; EACCES cannot happen for stat
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:  # exited between the open and the read
        return None
    finally:
        os.close(fd)
    _, sep, rest = data.rpartition(b")")
    fields = rest.split()
    # fields[0] is field 3 (state), so field N is fields[N - 3].
    if not sep or len(fields) < 20:
        return None
    try:
        return _Stat(fields[0].decode("ascii"), int(fields[4 - 3]), int(fields[5 - 3]),
                     int(fields[6 - 3]), int(fields[22 - 3]))
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
    """SIGTERM the agent's tree led by ``leader``, await its death, SIGKILL what is left.

    The tree is every live process in ``leader``'s kernel session or process group (a
    shell with job control gives each pipeline a group of its own inside the session),
    and every live descendant of ``leader`` whatever its session. They are found in
    one pass over ``/proc/*/stat`` (a few ms for 500 processes; no ``environ`` is read,
    nothing is polled), each is held by a pidfd opened and then checked against the
    start time the pass read, and signalled through it; the groups of the members
    are signalled too, so a child forked after the pass dies with its group. Their
    deaths are awaited on the pidfds (``poll``, timeout ``grace``); the survivors and
    the groups then get SIGKILL.

    What escapes: a process that called ``setsid`` itself *and* is no longer a
    descendant of ``leader`` (some ancestor exited before the stop: a daemon's double
    fork, or the leader itself is gone) is in no tree we can see. Callers that must not
    leave those behind look for the polecat's identity in ``/proc/*/environ``
    (:func:`processes_with_env`).

    Nothing is signalled when a process ``leader`` exists with another start time: the
    pid was reused, so the agent and its session are long gone. A leader that is simply
    gone is fine: while any process uses its pid as a session or group id, the kernel
    does not hand the pid out again, so those processes are the agent's. A member's pid
    is only signalled through a pidfd taken while it still had the start time the pass
    read, so a pid handed to someone else in between is never signalled; a group id
    only while a process of the tree holds it (or, at the end, unless ``/proc`` shows
    that pid reborn with another start time).
    """
    if leader <= 1:
        return
    current = _read_stat(leader)
    if current is not None and current.start_time != start_time:
        return
    members = _open_tree(leader, start_time)
    try:
        owners = {leader: start_time}
        owners.update({m.pid: m.start_time for m in members})
        groups = {m.pgrp for m in members if m.pgrp in owners} | {leader}
        _signal_tree(members, groups, owners, signal.SIGTERM)
        alive = _await_exit(members, grace)
        if alive:
            _signal_tree(alive, groups, owners, signal.SIGKILL)
            _await_exit(alive, _KILL_WAIT)
        else:
            # Anything forked into a group after the pass and still there.
            _signal_groups(groups, owners, signal.SIGKILL)
    finally:
        for member in members:
            os.close(member.fd)


class _Member(NamedTuple):
    pid: int
    pgrp: int
    start_time: int
    fd: int


def _stats() -> dict[int, _Stat]:
    """Every live (non-zombie) process now, by pid: one pass over ``/proc/*/stat``."""
    found = {}
    for pid in _pids():
        stat = _read_stat(pid)
        if stat is not None and stat.live:
            found[pid] = stat
    return found


def _open_tree(leader: int, start_time: int) -> list[_Member]:
    """The live processes of ``leader``'s tree (see :func:`stop_process_tree`), each with
    a pidfd checked against its start time."""
    stats = _stats()
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    tree = {pid for pid, stat in stats.items() if leader in (stat.pgrp, stat.session)}
    leader_stat = stats.get(leader)
    if leader_stat is not None and leader_stat.start_time == start_time:
        descendants, todo = {leader}, [leader]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in descendants:
                    descendants.add(child)
                    todo.append(child)
        tree |= descendants
    members = []
    for pid in sorted(tree):
        if pid <= 1 or pid == os.getpid():
            continue
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone already
            continue
        now = _read_stat(pid)
        if now is None or now.start_time != stats[pid].start_time or not now.live:
            os.close(fd)  # it exited since the pass: the pid may be someone else's now
            continue
        members.append(_Member(pid, stats[pid].pgrp, stats[pid].start_time, fd))
    return members


def _exited(fd: int) -> bool:
    """Whether the process behind pidfd ``fd`` has exited (a zombie has)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _signal_tree(members: list[_Member], groups: set[int], owners: dict[int, int],
                 sig: signal.Signals) -> None:
    """``sig`` to each group a living member still holds, then to each member by pidfd."""
    held = {m.pgrp for m in members if not _exited(m.fd)}
    _signal_groups(groups & held, owners, sig)
    for member in members:
        try:
            signal.pidfd_send_signal(member.fd, sig)
        except OSError:  # exited (ESRCH), or a setuid child not ours to signal
            pass


def _signal_groups(groups: set[int], owners: dict[int, int], sig: signal.Signals) -> None:
    """``sig`` to each group, unless its id now names a process started at another time."""
    for pgrp in groups:
        stat = _read_stat(pgrp)
        if pgrp <= 1 or (stat is not None and stat.start_time != owners.get(pgrp)):
            continue
        try:
            os.killpg(pgrp, sig)
        except OSError:  # gone, or (a setuid child such as sudo) not ours to signal
            pass


def _await_exit(members: list[_Member], timeout: float) -> list[_Member]:
    """Wait up to ``timeout`` s for every member's pidfd to turn readable (it exited);
    returns those still running."""
    deadline = time.monotonic() + timeout
    alive = list(members)
    poller = select.poll()
    for member in alive:
        poller.register(member.fd, select.POLLIN)
    while alive:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready = {fd for fd, _ in poller.poll(max(1, int(left * 1000)))}
        for fd in ready:
            poller.unregister(fd)
        alive = [m for m in alive if m.fd not in ready]
    return alive
