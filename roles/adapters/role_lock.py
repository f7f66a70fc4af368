"""One process per role: each role process holds ``.runtime/roles/<role>.lock`` for life.

Layer: a roles adapter (``flock`` under ``.runtime/``), below the role process, which
takes its lock before it does any work (:func:`acquire_role_lock`), and the supervisor
and ``down``, which ask who holds one (:func:`role_lock_holder`, :func:`wait_roles_exit`).
Two instances of a role can never run at once, whatever state the event loop of the
older one is in: a new instance waits (bounded) for the old one to go, and the kernel
releases the lock however its holder exits.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ..core.errors import Refused
from .flocks import flock_within, try_flock, wait_lock_free
from .processes import is_same_process, process_start_time

ROLES_DIR: Final = "roles"

#: Exit status of a role process that could not take its lock in time (EX_TEMPFAIL).
ROLE_LOCKED_EXIT: Final = 75

#: How long a new role instance waits, by default, for the old one to release its lock.
ROLE_LOCK_TIMEOUT: Final = 30.0


class RoleLocked(Refused):
    """Raised by :func:`acquire_role_lock` when another instance kept the role's lock."""

    def __init__(self, role: str, pid: int | None, waited: float) -> None:
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"another instance of {role} ({who}) still holds its lock after "
                         f"{waited:g}s; not starting a second one")
        self.role = role
        self.pid = pid


class RoleLock:
    """A role's held instance lock; the role keeps it (its fd open) for its whole life."""

    __slots__ = ("fd", "path", "role")

    def __init__(self, fd: int, path: Path, role: str) -> None:
        self.fd = fd
        self.path = path
        self.role = role

    def release(self) -> None:
        """Drop the lock (tests; a role simply exits, and the kernel releases it)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def role_lock_path(runtime_dir: Path, role: str) -> Path:
    """``.runtime/roles/<role>.lock``, with ``:`` as ``-`` (``refinery-web.lock``)."""
    return runtime_dir / ROLES_DIR / (role.replace(":", "-") + ".lock")


def role_lock_holder(runtime_dir: Path, role: str) -> int | None:
    """The pid of the live process holding ``role``'s lock, or None if nobody holds it.

    The holder writes its pid and start time into the lock file; a pid that is gone or
    reused is not believed (None while the lock is held by an unidentified process).
    """
    path = role_lock_path(runtime_dir, role)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if try_flock(fd, fcntl.LOCK_SH):
            return None
        return _lock_file_pid(fd)
    finally:
        os.close(fd)


def wait_roles_exit(runtime_dir: Path, timeout: float) -> dict[str, int | None]:
    """Wait until no role process holds its lock, at most ``timeout`` s in all.

    For ``down``: once the supervisor is gone its roles follow within the lifeline's
    grace; this waits for that (event-driven, on each lock) and returns the roles
    still running after ``timeout``, role name -> pid (None if unknown): a role that
    has no supervisor, e.g. one started by hand.
    """
    deadline = time.monotonic() + timeout
    left: dict[str, int | None] = {}
    folder = runtime_dir / ROLES_DIR
    for path in sorted(folder.glob("*.lock")) if folder.is_dir() else []:
        if wait_lock_free(path, max(deadline - time.monotonic(), 0.0)):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"null")
            role = data["role"] if isinstance(data.get("role"), str) else path.stem
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            role = path.stem
        finally:
            os.close(fd)
        left[role] = role_lock_holder(runtime_dir, role)
    return left


def _lock_file_pid(fd: int) -> int | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
        pid, start_time = data["pid"], data["start_time"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if type(pid) is int and type(start_time) is int and is_same_process(pid, start_time):
        return pid
    return None


def acquire_role_lock(runtime_dir: Path, role: str, *, timeout: float = ROLE_LOCK_TIMEOUT,
                      on_wait: Callable[[int | None], None] | None = None) -> RoleLock:
    """Become ``role``'s one instance: take its exclusive lock, waiting up to ``timeout``.

    Taken by the role process before it does any work, and held (fd open,
    close-on-exec) until it exits, however it exits: the kernel, not the role's event
    loop, guarantees that two instances never run at once. When another instance
    holds the lock, ``on_wait`` is called once with its pid (read from the lock file;
    None if unknown) and the wait begins; it ends the moment that instance exits.

    Raises:
        RoleLocked: the lock was still held after ``timeout`` seconds.
    """
    path = role_lock_path(runtime_dir, role)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if not try_flock(fd, fcntl.LOCK_EX):
        holder = _lock_file_pid(fd)
        if on_wait is not None:
            on_wait(holder)
        if not flock_within(fd, fcntl.LOCK_EX, timeout):
            raise RoleLocked(role, role_lock_holder(runtime_dir, role) or holder, timeout)
    try:
        start_time = process_start_time(os.getpid())
        identity = json.dumps({"pid": os.getpid(), "start_time": start_time,
                               "role": role}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, identity + b"\n", 0)
    except BaseException:
        os.close(fd)
        raise
    return RoleLock(fd, path, role)
