"""The template's side of role forks: start a role process by ``fork`` from preloaded code.

Layer: supervisor, the top of the town. Runs inside the town's fork server
(:mod:`gastown.supervisor.cli_server`), which has imported every gastown module once;
its peer in the supervisor is :mod:`gastown.supervisor.role_forks`.

Why: a role started by ``exec`` pays Python's start and ~200 ms of imports (trio,
structlog, the store, the role's modules) before it does anything, at every ``up`` and
every restart; a fork of the template starts the role with all of it already loaded.

The channel is a private socket pair the supervisor created (never the CLI socket:
only the supervisor may start a role). It carries JSON lines:

- supervisor → template: ``{"op": "spawn", "id", "args", "env", "cwd", "stdout",
  "token", "title"}``; ``{"op": "signal", "pid", "signal"}``.
- template → supervisor: ``{"op": "ready"}`` once; ``{"op": "spawned", "id", "pid"}``
  or ``{"op": "failed", "id", "error"}``; ``{"op": "exited", "pid", "status"}`` with
  the status as :class:`subprocess.Popen` reports it (minus the signal number).

The template is the roles' parent, so it alone reaps them: a role's pid, and with it
its process group, stays reserved until the template has reported its exit. That is why
group signals go through the template (it signals a group only while the leader is
unreaped), and why the group of a leader that exits after a stop request is killed
before the leader is reaped (grandchildren do not outlive a role that was stopped).

The forked child is what ``python -m gastown.roles ROLE --town PATH`` would be: leader
of a new session, its environment and working directory replaced, stdout and stderr
appended to the role's ``.out`` file, its token on a pipe, and its command line
rewritten (``setproctitle``) to the command it stands for, so that ``ps`` shows the role.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Iterable
from typing import Any, Final

#: Names the fd of the template's end of the channel in the fork server's environment.
CHANNEL_ENV: Final = "GASTOWN_ROLE_CHANNEL_FD"


class RoleTemplate:
    """The template's bookkeeping: the channel, and the roles it forked and has not reaped."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self._buffer = b""
        self.children: dict[int, int] = {}  # pidfd -> pid
        self.pidfds: dict[int, int] = {}  # pid -> pidfd
        self.stopping: set[int] = set()

    def send(self, message: dict[str, Any]) -> None:
        """One line to the supervisor; a supervisor that is gone is not an error here
        (the lifeline ends this process)."""
        with contextlib.suppress(OSError):
            self.channel.sendall(json.dumps(message).encode() + b"\n")

    def read(self) -> list[dict[str, Any]] | None:
        """The complete requests that arrived (blocking read of what is there); None at EOF
        or when the channel broke (the supervisor was killed: a reset, not an end)."""
        try:
            data = self.channel.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def handle(self, request: dict[str, Any], selector: selectors.BaseSelector,
               keep: Iterable[int]) -> None:
        """Carry out one request of the supervisor."""
        if request.get("op") == "signal":
            pid = int(request["pid"])
            if pid in self.pidfds:  # unreaped: its pid and group are still its own
                sig = signal.Signals(int(request["signal"]))
                self.stopping.add(pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
            return
        if request.get("op") != "spawn":
            return
        try:
            pid = os.fork()
        except OSError as exc:
            self.send({"op": "failed", "id": request["id"], "error": str(exc)})
            return
        if pid == 0:  # pragma: no cover - the child's coverage is the role itself
            # First, the dispositions a fresh process has: this server's SIGTERM handler
            # writes to its wakeup pipe, which is closed below; a role stopped this early
            # printed an EBADF traceback into the server's output instead of dying.
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            selector.close()
            for fd in [self.channel.fileno(), *self.children, *keep]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            os._exit(_become_role(request))
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = pid
        self.pidfds[pid] = pidfd
        selector.register(pidfd, selectors.EVENT_READ, "role")
        self.send({"op": "spawned", "id": request["id"], "pid": pid})

    def reap(self, pidfd: int, selector: selectors.BaseSelector) -> None:
        """A role exited: end what is left of its group if it was being stopped, reap it,
        report its status."""
        selector.unregister(pidfd)
        pid = self.children.pop(pidfd)
        del self.pidfds[pid]
        os.close(pidfd)
        if pid in self.stopping:
            self.stopping.discard(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        self.send({"op": "exited", "pid": pid, "status": code})


def _become_role(request: dict[str, Any]) -> int:
    """In the forked child: become ``python -m gastown.roles ARGS`` and run it."""
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        out = os.open(request["stdout"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
        os.chdir(request["cwd"])
        # Before the environment is replaced: setproctitle makes room for the title by
        # moving the environment that follows the command line in memory.
        with contextlib.suppress(Exception):
            import setproctitle

            setproctitle.setproctitle(str(request["title"]))
        env = {str(k): str(v) for k, v in request["env"].items()}
        if request.get("token") is not None:
            from ..roles.adapters.children import TOKEN_ENV, token_pipe

            env[TOKEN_ENV] = str(token_pipe(str(request["token"])))
        os.environ.clear()
        os.environ.update(env)
        args = [str(arg) for arg in request["args"]]
        sys.argv = ["-m", *args]
        from ..roles.role_process import main

        code = main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    return code
