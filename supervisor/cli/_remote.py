"""Run a ``gastown`` command in the town's CLI fork server, when the town runs one.

Layer: cli, at the top of the town; imported by :func:`gastown.supervisor.cli.main` before
anything else, so it imports only the standard library's small modules.

A ``gastown`` command costs ~130 ms of CPU before it does anything: Python's start and the
import of the store, the configuration and the domain events (dataclasses built at import
time). Agents and scripts run commands in loops (``done``, ``status --json``,
``bead list``), and the test suite starts thousands. While the town is up, its supervisor
keeps a template process with all of that imported (:mod:`gastown.supervisor.cli_server`);
this client hands it the command line, the environment, the umask, the working directory
and its own stdin, stdout and stderr (as file descriptors over the Unix socket), and the
template forks a child that runs the very same :func:`~gastown.supervisor.cli.main` on
them. Output, exit status and errors are the command's own; only the start is skipped.

The client falls back to running the command itself whenever the server cannot take it
(no town found, no socket, refused, an fd it cannot pass) — but only *before* the command
started: once the child confirmed it runs, a lost server is an error, never a second run.
Commands that need the terminal or run until interrupted (``up``, ``attach``, ``feed -f``)
and ``GASTOWN_CLI_SERVER=0`` always run here.
"""

from __future__ import annotations

# The C module under socket (and below, under signal): their Python wrappers import enum,
# ~5 ms of each command's start.
import _socket
import marshal
import os
import sys

#: ``typing.TYPE_CHECKING`` without importing typing (every command pays for its imports);
#: type checkers treat a constant of this name as true.
TYPE_CHECKING = False

if TYPE_CHECKING:  # not imported at run time: every command pays for what this imports
    import signal as _signal
    import socket
    from collections.abc import Mapping, Sequence
    from typing import Any, Final
else:
    import _signal  # the same functions and numbers as signal's (typeshed has no stub)

#: The socket of the town's CLI fork server, under ``<town>/.runtime``. The number is the
#: protocol's version: a client and a server that speak different ones never meet (the
#: client finds no socket and runs the command itself), so a reply is never misread.
SOCKET_NAME: Final = "cli-1.sock"

#: Set to ``0`` to run every command in its own process.
ENV_SWITCH: Final = "GASTOWN_CLI_SERVER"

#: Commands the fork server runs: short, non-interactive, and correct in a process that is
#: not the terminal's foreground job. (Group, command) pairs; ``None`` for a top command.
SERVED: Final = frozenset({
    ("status", None), ("sling", None), ("done", None), ("prime", None), ("nudge", None),
    ("agent-hook", None), ("feed", None), ("logs", None), ("doctor", None),
    ("rig", "list"), ("bead", "create"), ("bead", "list"), ("bead", "show"),
    ("bead", "update"), ("bead", "close"), ("bead", "reopen"), ("polecat", "list"),
    ("polecat", "nuke"), ("mq", "list"), ("mq", "show"), ("crew", "list"),
    ("config", "show"),
})

_GROUPS: Final = frozenset({"rig", "bead", "polecat", "mq", "crew", "config"})

#: Words that make a served command one that runs until interrupted, or only prints help.
_LOCAL_WORDS: Final = frozenset({"-f", "--follow", "-h", "--help", "--version"})

#: Signals the client passes on to the child that runs its command.
FORWARDED: Final = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT)


def served_town(argv: Sequence[str], environ: Mapping[str, str], cwd: str) -> str | None:
    """The root of the town whose fork server should run ``argv``, or None to run here.

    Mirrors the parser's global options (``--town PATH``, ``-v``) and
    :func:`~gastown.roles.adapters.town.find_town`'s search, so that a command is sent to
    the town it would act on; anything unusual runs here, where the parser handles it.
    """
    if environ.get(ENV_SWITCH) == "0" or _LOCAL_WORDS.intersection(argv):
        return None
    town: str | None = None
    words = list(argv)
    while words and words[0].startswith("-"):
        option = words.pop(0)
        if option in ("-v", "--verbose"):
            continue
        if option == "--town" and words:
            town = words.pop(0)
        elif option.startswith("--town="):
            town = option.removeprefix("--town=")
        else:
            return None
    if not words:
        return None
    command = words[0]
    sub = words[1] if command in _GROUPS and len(words) > 1 else None
    if (command, sub) not in SERVED:
        return None
    if town is None:
        town = environ.get("GASTOWN_TOWN") or None
    if town is not None:
        root = os.path.abspath(os.path.expanduser(town))
        return root if os.path.isfile(os.path.join(root, "town.toml")) else None
    here = os.path.abspath(cwd)
    while True:
        if os.path.isfile(os.path.join(here, "town.toml")):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def run_remote(argv: Sequence[str]) -> int | None:
    """Run ``argv`` in the town's fork server; its exit status, or None to run it here."""
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed: let the local run say so
        return None
    root = served_town(argv, os.environ, cwd)
    if root is None:
        return None
    # From before the request leaves: a Ctrl-C between the fork and our reading of the
    # child's pid must reach the child too, not kill this client and leave it running.
    forwarder = _Forwarder()
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            conn.connect(os.path.join(root, ".runtime", SOCKET_NAME))
            started = _hand_over(conn, argv)
        except OSError:
            started = None
        if started is None:  # nothing ran
            conn.close()
            if forwarder.pending:  # interrupted before anything ran: stop here
                return _interrupted(forwarder.pending[0])
            return None
        pid, buffer = started
        forwarder.attach(pid)
        return _wait_for_exit(conn, buffer)
    finally:
        forwarder.restore()


class _Forwarder:
    """Our signal handlers while a command runs elsewhere: each signal goes to the child,
    or waits for its pid."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        self._previous = {signum: _signal.signal(signum, self._handle)
                          for signum in FORWARDED}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.pid is None:
            self.pending.append(signum)
        else:
            _kill(self.pid, signum)

    def attach(self, pid: int) -> None:
        self.pid = pid
        for signum in self.pending:
            _kill(pid, signum)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            _signal.signal(signum, handler)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _interrupted(signum: int) -> int:
    if signum == _signal.SIGINT:
        print("gastown: interrupted", file=sys.stderr)
    return 128 + signum


def _hand_over(conn: _socket.socket, argv: Sequence[str]) -> tuple[int, bytes] | None:
    """Send the command with our fds; the child's pid once it runs, or None if refused."""
    mask = os.umask(0)
    os.umask(mask)
    # marshal, not json: it is built in, and json's import (re, enum) was a third of what
    # this client costs; only a peer of our own uid ever reads it (the server checks).
    request = marshal.dumps({"argv": list(argv), "env": dict(os.environ), "umask": mask,
                             "version": _version()})
    cwd_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2, cwd_fd))
        data = len(request).to_bytes(4, "big") + request
        sent = conn.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        if sent < len(data):
            conn.sendall(data[sent:])
    finally:
        os.close(cwd_fd)
    buffer = b""
    while b"\n" not in buffer:
        chunk = conn.recv(4096)
        if not chunk:
            return None  # the server closed before a child ran: nothing happened
        buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    word, _, value = line.partition(b" ")
    if word != b"pid":
        return None  # refused (another user, another gastown version): nothing happened
    return int(value), rest


def _version() -> str:
    from .. import __version__

    return __version__


def _wait_for_exit(conn: _socket.socket, buffer: bytes) -> int:
    """The child's exit status, once it reports it (our signals go to it meanwhile)."""
    try:
        while b"\n" not in buffer:
            chunk = conn.recv(4096)
            if not chunk:
                print("gastown: the command's process ended without an exit status "
                      "(the town's CLI server stopped?)", file=sys.stderr)
                return 1
            buffer += chunk
    finally:
        conn.close()
    word, _, value = buffer.partition(b"\n")[0].partition(b" ")
    return 128 + int(value) if word == b"signal" else int(value)


def read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The server's side of :func:`_hand_over`: the request and the four fds.

    Raises:
        ValueError: a malformed request (its fds are closed).
        OSError: the connection failed.
    """
    import socket

    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 4)
    try:
        if len(fds) != 4 or len(data) < 4:
            raise ValueError("a request needs its length and four descriptors")
        length = int.from_bytes(data[:4], "big")
        body = data[4:]
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                raise ValueError("the request ended early")
            body += chunk
        try:
            request = marshal.loads(body)
        except (EOFError, TypeError) as exc:
            raise ValueError(f"a malformed request: {exc}") from exc
        if not isinstance(request, dict) or not isinstance(request.get("argv"), list) \
                or not isinstance(request.get("env"), dict):
            raise ValueError("a request needs argv and env")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


def send_line(conn: socket.socket, word: str, value: int) -> None:
    """One message to the client: ``pid N``, ``exit N``, ``signal N`` or ``refused 1``."""
    conn.sendall(f"{word} {value}\n".encode())
