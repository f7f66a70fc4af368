"""One supervisor per town, one process per role, and a start-up that ``down`` can see.

Layer: a roles adapter (``flock`` and pid files under ``.runtime/``), below the role
loops and the supervisor: the role processes take their role locks here, ``doctor``
asks whether a supervisor runs, and the supervisor and the CLI take and read the rest.

Three kinds of ``flock``, all under ``.runtime/``:

- ``supervisor.lock`` (with ``supervisor.pid``): the town's one supervisor, below;
- ``roles/<role>.lock``: each role process holds its own for its whole life, taken
  before it does any work, so two instances of a role can never run at once: those
  live in :mod:`.role_lock` (its names are re-exported here, where the role process,
  the supervisor and ``down`` import them from);
- ``start.lock``: held by ``gastown up`` from before it spawns the supervisor until
  the supervisor holds ``supervisor.lock`` (or died), so ``down`` issued during a
  start-up waits for the supervisor to exist and then stops it
  (:func:`hold_start_lock`, :func:`start_in_progress`, :func:`wait_start_settled`).

The supervisor's lock:

The lock is the truth; ``supervisor.pid`` only says who holds it. The kernel
releases a ``flock`` when the last fd on its open file goes away, so a supervisor
killed by SIGKILL or the OOM killer leaves no stale lock behind: the next
``gastown up`` simply takes it over. A pid file alone cannot give that guarantee,
because pids are reused (a stale file could name a stranger).

Rules that keep the lock honest:

- the lock fd is close-on-exec, so no role or agent inherits it (a child holding it
  would keep the town "running" after the supervisor died);
- ``supervisor.lock`` is never deleted: unlinking it while held would let the next
  supervisor lock a fresh inode beside the live one;
- the pid file is written atomically (temporary file + rename), so a reader sees the
  old content or the new, never half.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .. import __version__
from ..core.errors import Refused
from .flocks import flock_within, try_flock, wait_lock_free
from .processes import is_same_process, process_start_time
from .role_lock import ROLE_LOCK_TIMEOUT as ROLE_LOCK_TIMEOUT
from .role_lock import ROLE_LOCKED_EXIT as ROLE_LOCKED_EXIT
from .role_lock import ROLES_DIR as ROLES_DIR
from .role_lock import RoleLock as RoleLock
from .role_lock import RoleLocked as RoleLocked
from .role_lock import acquire_role_lock as acquire_role_lock
from .role_lock import role_lock_holder as role_lock_holder
from .role_lock import role_lock_path as role_lock_path
from .role_lock import wait_roles_exit as wait_roles_exit

LOCK_NAME: Final = "supervisor.lock"
PID_NAME: Final = "supervisor.pid"
START_LOCK_NAME: Final = "start.lock"
#: A reader (:func:`read_supervisor`) holds a shared lock for a few microseconds; an
#: acquire that collides with it retries this many times, this far apart, before
#: concluding that a supervisor holds the lock.
_ACQUIRE_ATTEMPTS: Final = 25
_ACQUIRE_RETRY: Final = 0.02

#: A supervisor writes its pid file right after taking the lock; a reader that finds
#: the lock held but the file missing or stale waits this long for it.
_READ_ATTEMPTS: Final = 25
_READ_RETRY: Final = 0.02


class SupervisorRunning(Refused):
    """Raised by :func:`acquire_supervisor_lock` when the town already has a supervisor."""

    def __init__(self, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"a supervisor is already running for this town ({who})")
        self.pid = pid


@dataclass(frozen=True, slots=True)
class SupervisorInfo:
    """Who holds (or held) a town's supervisor lock, as written in ``supervisor.pid``.

    Attributes:
        pid: the supervisor's process id.
        start_time: its start time in clock ticks since boot (with ``pid``, an identity
            that survives pid reuse; see :func:`gastown.roles.adapters.processes.is_same_process`).
        started_at: when it took the lock, in seconds since the epoch (wall clock).
        version: the gastown version it runs.
    """

    pid: int
    start_time: int
    started_at: float
    version: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": self.pid,
                "start_time": self.start_time,
                "started_at": self.started_at,
                "version": self.version,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SupervisorInfo | None:
        """Parse a pid file; None when it is not one (half-written by an old version, edited)."""
        try:
            data = json.loads(text)
            info = cls(
                pid=data["pid"],
                start_time=data["start_time"],
                started_at=data["started_at"],
                version=data["version"],
            )
        except (ValueError, KeyError, TypeError):
            return None
        valid = (
            type(info.pid) is int
            and type(info.start_time) is int
            and isinstance(info.started_at, int | float)
            and isinstance(info.version, str)
        )
        return info if valid else None


class SupervisorLock(contextlib.AbstractContextManager["SupervisorLock"]):
    """A held supervisor lock; release it with :meth:`release` or a ``with`` block.

    If the holder dies without releasing, the kernel drops the lock and the pid file
    stays behind, stale: :func:`read_supervisor` does not believe it.
    """

    __slots__ = ("_fd", "info", "runtime_dir")

    def __init__(self, fd: int, runtime_dir: Path, info: SupervisorInfo) -> None:
        self._fd: int | None = fd
        self.runtime_dir = runtime_dir
        self.info = info

    @property
    def fd(self) -> int | None:
        """The locked file's descriptor, or None once released."""
        return self._fd

    def release(self) -> None:
        """Remove the pid file, then drop the lock (idempotent)."""
        if self._fd is None:
            return
        # Remove the pid file while still holding the lock, so that no new holder's
        # file is ever removed by mistake.
        (self.runtime_dir / PID_NAME).unlink(missing_ok=True)
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the only fd on the open file releases the flock

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _open_lock_file(runtime_dir: Path) -> int:
    return os.open(runtime_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _write_pid_file(runtime_dir: Path, info: SupervisorInfo) -> None:
    path = runtime_dir / PID_NAME
    tmp = runtime_dir / f".{PID_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (info.to_json() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_pid_file(runtime_dir: Path) -> SupervisorInfo | None:
    try:
        text = (runtime_dir / PID_NAME).read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return SupervisorInfo.from_json(text)


def _verified(info: SupervisorInfo | None) -> SupervisorInfo | None:
    if info is not None and is_same_process(info.pid, info.start_time):
        return info
    return None


def acquire_supervisor_lock(runtime_dir: Path) -> SupervisorLock:
    """Become the town's one supervisor: take the lock and write ``supervisor.pid``.

    Creates ``runtime_dir`` (mode 0700) if needed. A lock left by a supervisor that
    died, even by SIGKILL, is free again and is taken over; its stale pid file is
    overwritten.

    Returns:
        The held lock; keep it for the supervisor's whole life. The lock fd is
        close-on-exec and must not be shared with a forked child.

    Raises:
        SupervisorRunning: another live process holds the lock; carries its pid when
            the pid file names a live process, else None. Nothing was changed.
        OSError: ``runtime_dir`` cannot be created or written.

    Blocks for at most about half a second, only while a concurrent
    :func:`read_supervisor` briefly holds its shared lock.
    """
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = _open_lock_file(runtime_dir)
    try:
        for attempt in range(_ACQUIRE_ATTEMPTS):
            if try_flock(fd, fcntl.LOCK_EX):
                break
            if attempt + 1 < _ACQUIRE_ATTEMPTS:
                time.sleep(_ACQUIRE_RETRY)
        else:
            holder = _verified(_read_pid_file(runtime_dir))
            raise SupervisorRunning(holder.pid if holder is not None else None)
        pid = os.getpid()
        start_time = process_start_time(pid)
        assert start_time is not None, "/proc/self/stat is always readable"
        info = SupervisorInfo(
            pid=pid, start_time=start_time, started_at=time.time(), version=__version__
        )
        _write_pid_file(runtime_dir, info)
    except BaseException:
        os.close(fd)
        raise
    return SupervisorLock(fd, runtime_dir, info)


def read_supervisor(runtime_dir: Path) -> SupervisorInfo | None:
    """Who is this town's running supervisor, or None when none is running.

    The lock decides: if a shared lock can be taken, nobody holds the exclusive one,
    so no supervisor runs, whatever a stale pid file says. If the lock is held, the
    pid file is believed only if its pid is alive with the recorded start time (a
    reused pid is not). A supervisor writes the file just after locking, so a missing
    or stale file is re-read for a short while.

    Returns None also when the lock is held by a process that cannot be identified
    (the pid file stays missing or names a dead process); :func:`acquire_supervisor_lock`
    refuses to start in that case all the same. Never modifies anything on disk.
    """
    try:
        fd = os.open(runtime_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # no supervisor ever ran here
    try:
        if try_flock(fd, fcntl.LOCK_SH):
            return None
        for attempt in range(_READ_ATTEMPTS):
            holder = _verified(_read_pid_file(runtime_dir))
            if holder is not None:
                return holder
            if attempt + 1 < _READ_ATTEMPTS:
                time.sleep(_READ_RETRY)
                if try_flock(fd, fcntl.LOCK_SH):
                    return None  # the holder exited meanwhile
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def wait_supervisor_exit(runtime_dir: Path, timeout: float) -> bool:
    """Block until no supervisor holds the town's lock, at most ``timeout`` seconds.

    Event-driven: a blocking shared ``flock`` returns the moment the kernel releases
    the supervisor's exclusive lock (at its exit, however it exits). It runs in a
    daemon thread so that the wait can time out. Returns whether the town is free.
    """
    return wait_lock_free(runtime_dir / LOCK_NAME, timeout)


# -- start-up ------------------------------------------------------------------------------


def hold_start_lock(runtime_dir: Path, timeout: float) -> int | None:
    """Take ``start.lock`` (exclusive) for a start-up; return its fd, or None after ``timeout``.

    ``gastown up`` takes it before anything else and hands the fd to the supervisor it
    spawns, which closes it once it holds ``supervisor.lock`` (or exits): until then
    :func:`start_in_progress` is true. A concurrent ``up`` waits here for the first one's
    supervisor to exist. The fd is close-on-exec; pass it on explicitly.
    """
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(runtime_dir / START_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if try_flock(fd, fcntl.LOCK_EX):
        return fd
    if flock_within(fd, fcntl.LOCK_EX, timeout):
        return fd
    return None


def start_in_progress(runtime_dir: Path) -> bool:
    """Whether a ``gastown up`` is starting a supervisor that does not hold the town yet."""
    try:
        fd = os.open(runtime_dir / START_LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return not try_flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


def wait_start_settled(runtime_dir: Path, timeout: float) -> bool:
    """Block until no start-up is in progress (its supervisor holds the town, or it
    failed), at most ``timeout`` seconds; returns whether it settled."""
    return wait_lock_free(runtime_dir / START_LOCK_NAME, timeout)
