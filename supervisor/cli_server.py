"""The town's CLI fork server: a template process that runs ``gastown`` commands by fork.

Layer: supervisor, the top of the town: started by the supervisor for the town's life
(:mod:`gastown.supervisor.cli_server_runner`); its client is
:mod:`gastown.supervisor.cli._remote`.

Why: every ``gastown`` command paid Python's start and ~120 ms of imports (the store, the
configuration, the domain events) before doing a few milliseconds of work, and agents and
scripts run commands in loops. This process imports all of that once, listens on
``<town>/.runtime/cli-1.sock`` (0600, in the owner-only runtime folder; a peer of another
user is refused by its credentials), and for each request forks a child that takes the
client's stdin, stdout, stderr, working directory, environment and umask and runs the
ordinary :func:`~gastown.supervisor.cli.main`. The child is the command: it writes to the
client's own descriptors, reports its exit status itself, and runs in a session of its
own, so that stopping the town never cuts a command short that had already begun (it
finishes like any process whose parent went away).

Why fork is safe here: this process is single-threaded, runs no event loop, opens no
database and holds no lock; it only imports modules and waits in ``selectors``. A child
that dies of a signal is reported to its client by this process, which keeps each
connection until it has reaped the child (a pidfd per child, no SIGCHLD handler).

It exits when the supervisor closes its lifeline or sends SIGTERM; children still running
go on alone.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import pkgutil
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from ..roles import __version__
from ..roles.adapters.children import LIFELINE_ENV
from .cli._remote import SOCKET_NAME, read_request, send_line
from .role_template import CHANNEL_ENV, RoleTemplate

#: The packages whose every module is imported once here: a command's handler imports what
#: it needs inside the function, and each forked child would otherwise do it again.
PRELOAD: Final = ("gastown.config", "gastown.roles", "gastown.supervisor")


def preload() -> None:
    """Import every module of gastown (none does anything at import but define), build
    the argument parser (~6 ms of argparse and gettext per command otherwise), read the
    shipped default configuration files, and import what the commands import lazily from
    the standard library."""
    for package in PRELOAD:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    from ..config import default_text
    from .cli._parser import build_parser

    build_parser()
    for shipped in ("town.toml", "rig.toml", "agents.toml"):
        default_text(shipped)
    for name in ("structlog", "importlib.resources", "zipfile", "sqlite3", "setproctitle"):
        importlib.import_module(name)


def _read_configs(root: Path) -> None:
    """Read the town's and its rigs' configuration once here: a forked command or role
    then parses a file only if it changed since (the adapters keep what they read)."""
    from ..roles.adapters.town import RIG_FILE, Town
    from ..roles.core.errors import GastownError

    town = Town(root)
    with contextlib.suppress(GastownError, OSError):
        town.config  # noqa: B018 - read for its cache
        for rig_file in root.glob(f"*/{RIG_FILE}"):
            town.rig_config(rig_file.parent.name)


#: Exit status when the socket cannot exist (its path is too long for a Unix socket):
#: the supervisor does not start the server again; clients run commands themselves.
UNUSABLE: Final = 78

#: The longest path a Unix socket can be bound at (``sun_path`` minus its NUL).
_MAX_SOCKET_PATH: Final = 107


#: What a forked child runs: the command's words in, its exit status out.
Command = Callable[[list[str]], int]


def serve(root: Path, lifeline_fd: int | None, channel_fd: int | None = None, *,
          command: Command | None = None) -> int:
    """Accept commands until the lifeline closes or SIGTERM; fork one child per command,
    and one per role the supervisor asks for on ``channel_fd`` (:mod:`.role_template`).

    A child runs ``command`` (default: the CLI's :func:`~gastown.supervisor.cli.main`,
    the command itself). The test suite serves its own commands from a template of this
    kind (``tests/cli_template.py``) with the CLI's ``entry`` instead: the same decision
    to hand a command to a running town's server as the ``gastown`` executable makes."""
    path = root / ".runtime" / SOCKET_NAME
    usable = len(os.fsencode(path)) <= _MAX_SOCKET_PATH
    if not usable:
        print(f"gastown cli server: {path} is too long for a Unix socket; commands "
              f"run in their own processes", flush=True)
        if channel_fd is None:
            return UNUSABLE
    selector = selectors.DefaultSelector()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = None
    if usable:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead predecessor's: the supervisor runs one server per town
        old_mask = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old_mask)
        listener.listen(64)
        bound = path.stat().st_ino  # at exit, only our own socket file is removed
        selector.register(listener, selectors.EVENT_READ, "accept")
    template = None
    if channel_fd is not None:
        template = RoleTemplate(socket.socket(fileno=channel_fd))
        selector.register(template.channel, selectors.EVENT_READ, "channel")
    if lifeline_fd is not None:
        selector.register(lifeline_fd, selectors.EVENT_READ, "lifeline")
    stop_r, stop_w = os.pipe()
    os.set_blocking(stop_w, False)
    signal.set_wakeup_fd(stop_w)
    signal.signal(signal.SIGTERM, lambda *_: None)
    selector.register(stop_r, selectors.EVENT_READ, "signal")
    waiting: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
    if usable:
        print(f"gastown cli server: listening on {path}", flush=True)
    if template is not None:
        template.send({"op": "ready"})
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "accept":
                    roles = set(template.children) | {template.channel.fileno()} if template \
                        else set()
                    _accept(listener, selector, waiting,
                            keep={lifeline_fd, stop_r, stop_w, *roles}, command=command)
                elif key.data in ("lifeline", "signal"):
                    return 0
                elif key.data == "channel" and template is not None:
                    requests = template.read()
                    if requests is None:  # the supervisor is gone
                        return 0
                    for request in requests:
                        # The role keeps the lifeline; nothing else of this process.
                        template.handle(request, selector, keep=[
                            listener.fileno(), stop_r, stop_w,
                            *waiting, *(conn.fileno() for _, conn in waiting.values())])
                elif key.data == "role" and template is not None:
                    template.reap(int(key.fd), selector)
                else:
                    _reap(int(key.fd), selector, waiting)
    finally:
        with contextlib.suppress(OSError):
            if bound is not None and path.stat().st_ino == bound:
                path.unlink()
        listener.close()


def _accept(listener: socket.socket, selector: selectors.BaseSelector,
            waiting: dict[int, tuple[int, socket.socket]], keep: set[int | None],
            command: Command | None) -> None:
    conn, _ = listener.accept()
    conn.settimeout(5.0)  # one slow client must not hold the others up
    try:
        uid = struct_ucred_uid(conn)
        if uid != os.getuid():
            send_line(conn, "refused", 1)
            conn.close()
            return
        request, fds = read_request(conn)
    except (OSError, ValueError):
        conn.close()
        return
    if request.get("version") != __version__:
        # Another gastown than the one this server runs (upgraded while the town is up):
        # the command runs in its own process, with its own code.
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            send_line(conn, "refused", 1)
        conn.close()
        return
    try:
        pid = os.fork()
    except OSError:
        for fd in fds:
            os.close(fd)
        conn.close()  # the client sees no pid and runs the command itself
        return
    if pid == 0:  # pragma: no cover - the child's coverage is the commands themselves
        # Nothing of the server's stays open in the command: not its socket, pipes and
        # lifeline, nor the pidfds and connections of the other commands in flight (a
        # copy held here would keep their clients from ever seeing the end of them).
        selector.close()
        listener.close()
        for pidfd, (_, other) in waiting.items():
            os.close(pidfd)
            other.close()
        for kept in keep:
            if kept is not None:
                with contextlib.suppress(OSError):
                    os.close(kept)
        os._exit(_run_command(conn, request, fds, command))
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    waiting[pidfd] = (pid, conn)
    selector.register(pidfd, selectors.EVENT_READ, "child")


def _reap(pidfd: int, selector: selectors.BaseSelector,
          waiting: dict[int, tuple[int, socket.socket]]) -> None:
    selector.unregister(pidfd)
    pid, conn = waiting.pop(pidfd)
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    # The child reports its status itself, unless it died of a signal or left through
    # ``os._exit`` (a fault point, a library): then tell its client here. A second report
    # after the child's own is never read (the client stops at the first).
    with contextlib.suppress(OSError):
        conn.settimeout(1.0)
        if os.WIFSIGNALED(status):
            send_line(conn, "signal", os.WTERMSIG(status))
        else:
            send_line(conn, "exit", os.waitstatus_to_exitcode(status))
    conn.close()


def struct_ucred_uid(conn: socket.socket) -> int:
    """The uid of the peer process (``SO_PEERCRED``: pid, uid, gid as three ints)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(creds[4:8], sys.byteorder)


def _run_command(conn: socket.socket, request: dict[str, Any], fds: list[int],
                 command: Command | None) -> int:
    """In the forked child: become the client's command, run it, report its status."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:  # at once: from here on the command is this child's, never the client's to rerun
        send_line(conn, "pid", os.getpid())
    except OSError:
        return 1  # the client is gone: run nothing
    # `ps` shows the command, not this server (and a search for the town's processes by
    # command line does not take a command for one of them). Before the environment is
    # replaced: setproctitle makes room by moving it.
    with contextlib.suppress(Exception):
        import setproctitle

        setproctitle.setproctitle(" ".join(["gastown", *map(str, request["argv"])]))
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    os.fchdir(fds[3])
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request["env"].items()})
    os.umask(int(request.get("umask", 0o022)))
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                 encoding="utf-8", errors="surrogateescape")
    sys.stdout = _output(1, errors="strict")
    sys.stderr = _output(2, errors="backslashreplace", line_buffering=True)
    argv = [str(word) for word in request["argv"]]
    sys.argv = ["gastown", *argv]
    code = 1
    try:
        if command is None:
            from .cli import main

            command = main
        code = command(argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = int(exc.code or 0)
        else:
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        print("gastown: interrupted", file=sys.stderr)
        code = 130
    except BaseException:
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    with contextlib.suppress(OSError):
        send_line(conn, "exit", code)
    return code


def _output(fd: int, *, errors: str, line_buffering: bool | None = None) -> io.TextIOWrapper:
    tty = os.isatty(fd)
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", errors=errors,
                            line_buffering=tty if line_buffering is None else line_buffering,
                            write_through=False)


def main(argv: list[str] | None = None, *,
         before_serving: Callable[[], None] | None = None) -> int:
    """The server's process: import, read the town's configuration, serve.

    ``before_serving`` runs between the last two (a server forked by ``up`` waits there
    for the supervisor to hold the town)."""
    parser = argparse.ArgumentParser(prog="python -m gastown.supervisor.cli_server",
                                     description="Run gastown commands for a town by fork.")
    parser.add_argument("--town", required=True, help="the town's root directory")
    args = parser.parse_args(argv)
    preload()
    _read_configs(Path(args.town).absolute())
    lifeline = os.environ.get(LIFELINE_ENV)
    channel = os.environ.pop(CHANNEL_ENV, None)
    if before_serving is not None:
        before_serving()
    return serve(Path(args.town).absolute(), int(lifeline) if lifeline else None,
                 int(channel) if channel else None)


if __name__ == "__main__":
    raise SystemExit(main())
