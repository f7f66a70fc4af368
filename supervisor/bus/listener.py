"""The bus's socket file: a safe place, a private mode, one live owner, peer credentials.

Layer: bus (a socket file), used by :mod:`.server` only.

An adapter for :mod:`gastown.supervisor.bus.server`, kept apart because each
rule here is a trap someone already fell into (see
``reference/process-supervisors.md``, pitfall 8): ``sun_path`` is 108 bytes;
``bind`` creates the file with ``0777 & ~umask``; unlinking "stale" sockets
unconditionally lets a second supervisor steal a live bus's path; file modes
alone are not authentication.
"""

from __future__ import annotations

import errno
import os
import socket as stdlib_socket
import stat
import struct
from pathlib import Path
from typing import Final

import structlog
import trio

from .errors import BusAlreadyRunning, BusPathError

#: ``sun_path`` holds 108 bytes including the terminating NUL.
SUN_PATH_MAX: Final = 107

_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid

#: What identifies the socket file this process created: ``(st_dev, st_ino)``.
SocketIdentity = tuple[int, int]


def peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int]:
    """The connected peer's ``(pid, effective uid)``, from the kernel (``SO_PEERCRED``, Linux)."""
    raw = sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, _gid = _PEERCRED.unpack(raw)
    return pid, uid


def check_path(path: Path) -> None:
    """Refuse a path that cannot hold the bus safely, before anything is created.

    Raises:
        BusPathError: too long for ``sun_path``, or its directory is missing, owned
            by another user, or writable by group or others (who could then swap
            the socket for their own).
    """
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise BusPathError(f"the bus socket path is too long for a Unix socket ({size} bytes, "
                           f"limit {SUN_PATH_MAX}): {path}")
    try:
        info = path.parent.stat()
    except FileNotFoundError:
        raise BusPathError(f"the bus socket's directory does not exist: {path.parent}") from None
    if info.st_uid != os.geteuid():
        raise BusPathError(f"refusing to put the bus in {path.parent}: it belongs to uid "
                           f"{info.st_uid}, not to us (uid {os.geteuid()})")
    if info.st_mode & 0o022:
        raise BusPathError(f"refusing to put the bus in {path.parent}: it is writable by "
                           f"group or others (mode {stat.S_IMODE(info.st_mode):o})")


async def clear_stale_socket(path: Path) -> None:
    """Remove a socket file that no bus answers on; refuse to touch a live one.

    Raises:
        BusAlreadyRunning: a probe connected, so a bus is serving at ``path``.
        BusPathError: ``path`` exists and is not a socket.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise BusPathError(f"{path} exists and is not a socket; refusing to replace it")
    try:
        probe = await trio.open_unix_socket(path)
    except FileNotFoundError:
        return
    except ConnectionRefusedError:
        structlog.get_logger().info("bus.stale_socket_removed", path=str(path))
        path.unlink(missing_ok=True)
        return
    await probe.aclose()
    raise BusAlreadyRunning(f"a bus is already running at {path}")


def bind_private(path: Path) -> tuple[stdlib_socket.socket, SocketIdentity]:
    """Create the listening socket at ``path``, mode 0600; return it and the file's identity.

    The umask is process-wide; it is narrowed only for the ``bind`` call, with no
    checkpoint in between, so no other trio task can observe it. (A worker thread
    creating a file in that instant gets 0600 instead of 0644: stricter, harmless.)
    ``chmod`` after ``bind`` would leave a window in which the socket is wider.

    Raises:
        BusAlreadyRunning: another bus bound the path since the probe.
    """
    sock = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        previous = os.umask(0o177)
        try:
            sock.bind(os.fsencode(path))
        finally:
            os.umask(previous)
        sock.listen(128)
        info = path.stat()
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise BusAlreadyRunning(f"a bus is already running at {path}") from exc
        raise
    except BaseException:
        sock.close()
        raise
    return sock, (info.st_dev, info.st_ino)


def unlink_if_ours(path: Path, identity: SocketIdentity) -> None:
    """Remove the socket file, unless a successor has already replaced it with its own."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if (info.st_dev, info.st_ino) == identity:
        path.unlink(missing_ok=True)
