"""The first CLI server of a town started by ``gastown up``: forked before the supervisor
runs, instead of a fresh interpreter started by it.

Layer: supervisor, the top of the town: called by ``up``'s forked supervisor before trio
starts (:mod:`gastown.supervisor.cli._lifecycle`); the supervisor's
:func:`~gastown.supervisor.cli_server_runner.keep_cli_server` adopts the child.

Why: the server imports every module of gastown (~400 ms of CPU in a fresh interpreter),
and ``up`` has imported half of them already, so a fork of it pays only the rest, and
pays it while the supervisor starts. Why it is safe: the process forked is ``up``'s
supervisor before ``trio.run`` — one thread, no event loop, no store open — and the child
closes every descriptor of the supervisor's that it was given by the fork (the lifeline's
write end, the start-up lock, the pipe to ``up``).

The child imports, then waits on a pipe for the supervisor's word before it binds the
socket: the supervisor says go only once it holds the town's lock, so a server is never
put in the place of another town's live one; if the supervisor dies or gives up first,
the pipe's EOF ends the child. The restarts of a server that died are started by exec,
as before.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import trio

from ..roles.adapters.children import Lifeline, child_env
from .forked import detach, run_then_exit
from .role_template import CHANNEL_ENV


@dataclass
class ForkedServer:
    """The supervisor's handle on the forked server: its pid, the pipe that tells it to
    serve, and the supervisor's end of the role template channel (None: no role forks)."""

    pid: int
    go_fd: int
    channel: socket.socket | None
    returncode: int | None = None
    _pidfd: int | None = field(default=None, repr=False)

    def go(self) -> None:
        """Let it bind and serve (the supervisor holds the town); once."""
        if self.go_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self.go_fd, b"1")
            os.close(self.go_fd)
            self.go_fd = -1

    def discard(self) -> None:
        """It will not be used: close our ends (the child exits on the EOF)."""
        if self.go_fd >= 0:
            os.close(self.go_fd)
            self.go_fd = -1
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    async def wait(self) -> int:
        """Its exit status (``trio.Process.returncode``'s convention), once it exited;
        reaps it."""
        if self.returncode is None:
            if self._pidfd is None:
                self._pidfd = os.pidfd_open(self.pid)
            try:
                await trio.lowlevel.wait_readable(self._pidfd)
            finally:
                trio.lowlevel.notify_closing(self._pidfd)
                os.close(self._pidfd)
                self._pidfd = None
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def fork_cli_server(root: Path, lifeline: Lifeline, env: Mapping[str, str], *,
                    role_forks: bool, close: Iterable[int | None]) -> ForkedServer:
    """Fork the town's first CLI server (the template roles are forked from, with
    ``role_forks``); ``close`` names the caller's descriptors the child must not keep.

    Raises:
        OSError: the fork failed; nothing was started.
    """
    go_r, go_w = os.pipe()
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) if role_forks else None
    out_path = root / "logs" / "cli-server.out"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        pid = os.fork()
    except OSError:
        for fd in (go_r, go_w, out):
            os.close(fd)
        if pair is not None:
            pair[0].close()
            pair[1].close()
        raise
    if pid == 0:  # pragma: no cover - the child's coverage is the town's tests
        channel_fd = pair[1].detach() if pair is not None else None
        if pair is not None:
            pair[0].close()
        _serve_when_told(root, lifeline, env, go_r=go_r, go_w=go_w, out=out,
                         channel_fd=channel_fd, close=close)
    os.close(go_r)
    os.close(out)
    if pair is not None:
        pair[1].close()
    return ForkedServer(pid=pid, go_fd=go_w, channel=pair[0] if pair is not None else None)


def _serve_when_told(root: Path, lifeline: Lifeline, env: Mapping[str, str], *, go_r: int,
                     go_w: int, out: int, channel_fd: int | None,
                     close: Iterable[int | None]) -> NoReturn:
    """In the child: become the server process start_child would have started — own
    session, stdin from /dev/null, output to ``cli-server.out``, the supervisor's
    environment without systemd's variables — import, wait for the word, serve."""

    def serve() -> int:
        os.close(go_w)
        os.close(lifeline.write_fd)  # else the lifeline never closes while this lives
        for fd in close:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        detach(out, root, [sys.executable, "-m", "gastown.supervisor.cli_server",
                           "--town", str(root)])
        extra = lifeline.env()
        if channel_fd is not None:
            extra[CHANNEL_ENV] = str(channel_fd)
        os.environ.clear()
        os.environ.update(child_env(env, extra))
        from .cli_server import main

        # main() imports, reads the configuration, then serves; it waits for the word
        # between the two through this hook.
        return main(["--town", str(root)], before_serving=lambda: _wait_for_go(go_r))

    run_then_exit(serve)


def _wait_for_go(go_r: int) -> None:
    """Block until the supervisor says go; exit quietly if it went away instead."""
    try:
        word = os.read(go_r, 1)
    finally:
        os.close(go_r)
    if not word:
        raise SystemExit(0)
