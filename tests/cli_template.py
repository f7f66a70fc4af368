"""The test suite's ``gastown`` commands, run by fork from one pre-imported template.

Why: the suite runs ~4,000 ``gastown`` commands. A command run while its town is up is
already forked by the town's CLI server (:mod:`gastown.supervisor.cli_server`), but every
command run while the town is down (``install``, ``rig add``, ``bead create`` before
``up``, ``up`` and ``down`` themselves) started Python and imported the store, the
configuration and the domain events afresh: ~150 ms of CPU each, a quarter of the whole
suite's CPU on 2 cores.

How: each test process starts this module once (``python -m tests.cli_template DIR``),
which imports what the town's CLI server imports and serves commands with the very same
code (:func:`~gastown.supervisor.cli_server.serve`) on ``DIR/.runtime/cli-1.sock``. Its
forked child takes the test's pipes, working directory, environment and umask and runs
the CLI's :func:`~gastown.supervisor.cli.entry` — what the ``gastown`` executable runs,
so a command for a town that is up is still handed to that town's own server. Only the
interpreter's start and the imports are skipped.

What keeps the executable itself tested: the tests that start ``gastown`` with
``subprocess`` directly (signals, ``up --foreground``, ``feed -f``, the CLI server's own
tests, the console script in ``test_cli_foundation``) and ``GASTOWN_TEST_CLI=exec``,
which runs every command of the suite in its own process again.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

#: ``exec``: every command in its own process (the suite as it ran before this module).
MODE_ENV = "GASTOWN_TEST_CLI"

#: The socket's name under ``DIR/.runtime``, as the server binds it.
SOCKET_NAME = "cli-1.sock"


class Template:
    """One template process for this test process; started on first use."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gt-clit-"))
        (self.root / ".runtime").mkdir(mode=0o700)
        self.socket_path = self.root / ".runtime" / SOCKET_NAME
        read_end, self._lifeline = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_template", str(self.root), str(read_end)],
            pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent)
        os.close(read_end)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "listening on ..." once the socket is bound
        assert b"listening" in line, f"the CLI template did not start: {line!r}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lifeline)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def _send(self, argv: list[str], *, cwd: Path, env: dict[str, str],
              stdin: bool) -> tuple[socket.socket, list[int]] | None:
        """Hand ``gastown ARGV`` to the template: the connection and this side's pipe ends
        (stdin's write end first when ``stdin``, then stdout's and stderr's read ends); None
        if the template cannot be reached."""
        from gastown.roles import __version__

        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fds: list[int] = []
        mine: list[int] = []
        try:
            conn.connect(str(self.socket_path))
            in_r, in_w = os.pipe() if stdin else (os.open(os.devnull, os.O_RDONLY), -1)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            cwd_fd = os.open(cwd, os.O_RDONLY | os.O_DIRECTORY)
            child_fds = [in_r, out_w, err_w, cwd_fd]
            mine = [fd for fd in (in_w, out_r, err_r) if fd >= 0]
            mask = os.umask(0)
            os.umask(mask)
            request = marshal.dumps({"argv": argv, "env": env, "umask": mask,
                                     "version": __version__})
            data = len(request).to_bytes(4, "big") + request
            socket.send_fds(conn, [data], child_fds)
        except OSError:
            conn.close()
            for fd in child_fds + mine:
                os.close(fd)
            return None
        for fd in child_fds:
            os.close(fd)
        return conn, mine

    def run(self, argv: list[str], *, cwd: Path, env: dict[str, str], stdin: str | None,
            timeout: float) -> tuple[int, str, str] | None:
        """The exit status, stdout and stderr of ``gastown ARGV``; None if the template
        refused it before anything ran (the caller runs it in its own process)."""
        sent = self._send(argv, cwd=cwd, env=env, stdin=stdin is not None)
        if sent is None:
            return None
        conn, mine = sent
        try:
            return _collect(conn, mine, stdin, timeout, argv)
        finally:
            conn.close()
            for fd in mine:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def start(self, argv: list[str], *, cwd: Path, env: dict[str, str]) -> Running | None:
        """``gastown ARGV`` left running (``feed -f``): its output read as it comes; None
        if the template refused it before anything ran."""
        sent = self._send(argv, cwd=cwd, env=env, stdin=False)
        if sent is None:
            return None
        conn, (out_r, err_r) = sent
        # The pipes' read ends become the Running's files, closed by its close().
        running = Running(conn, open(out_r, encoding="utf-8", errors="replace"),  # noqa: SIM115
                          open(err_r, encoding="utf-8", errors="replace"))  # noqa: SIM115
        if running.pid is None:
            running.close()
            return None
        return running


class Running:
    """A command forked from the template and still running: what a test needs of a
    :class:`subprocess.Popen` (``stdout``, ``stderr``, ``poll``, ``wait``, ``terminate``,
    ``kill``). Its exit status comes over the template's connection; the child leads its
    own session, so a signal goes to its process group."""

    def __init__(self, conn: socket.socket, stdout: IO[str], stderr: IO[str]) -> None:
        self._conn = conn
        self.stdout = stdout
        self.stderr = stderr
        self.pid: int | None = None
        self.returncode: int | None = None
        self._reply = b""
        self._read_reply(block=True)  # "pid N" once the child runs, or a refusal

    def _read_reply(self, *, block: bool, timeout: float | None = None) -> None:
        self._conn.settimeout(timeout if block else 0.0)
        while self.returncode is None:
            try:
                chunk = self._conn.recv(4096)
            except (BlockingIOError, TimeoutError):
                return
            if not chunk:  # the template is gone, or refused before a child ran
                self.returncode = 1 if self.pid is not None else None
                return
            self._reply += chunk
            while b"\n" in self._reply:
                line, _, self._reply = self._reply.partition(b"\n")
                word, _, value = line.decode().partition(" ")
                if word == "pid":
                    self.pid = int(value)
                elif word == "exit":
                    self.returncode = int(value)
                elif word == "signal":
                    self.returncode = -int(value)
                else:
                    return  # refused
            if self.pid is not None and block and timeout is None:
                return  # started: the caller goes on while it runs

    def poll(self) -> int | None:
        if self.returncode is None and self.pid is not None:
            self._read_reply(block=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("gastown", timeout or 0)
            self._read_reply(block=True, timeout=left if left is not None else 3600)
        assert self.returncode is not None
        return self.returncode

    def _signal(self, signum: int) -> None:
        if self.pid is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        self._conn.close()
        self.stdout.close()
        self.stderr.close()


def _collect(conn: socket.socket, fds: list[int], stdin: str | None, timeout: float,
             argv: list[str]) -> tuple[int, str, str] | None:
    """Feed stdin, read stdout and stderr to their ends and the child's exit status."""
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    reply = b""
    pid: int | None = None
    status: int | None = None
    outputs: dict[int, bytearray] = {}
    pending = (stdin or "").encode()
    if stdin is not None:
        in_w = fds[0]
        os.set_blocking(in_w, False)
        if pending:
            selector.register(in_w, selectors.EVENT_WRITE, "stdin")
        else:
            os.close(in_w)
        fds = fds[1:]
    for fd in fds:
        outputs[fd] = bytearray()
        selector.register(fd, selectors.EVENT_READ, "output")
    selector.register(conn, selectors.EVENT_READ, "conn")
    open_outputs = len(fds)
    while open_outputs or status is None:
        left = deadline - time.monotonic()
        if left <= 0:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # the child leads its own session
            raise subprocess.TimeoutExpired(["gastown", *argv], timeout)
        events = selector.select(left)
        for key, _ in events:
            if key.data == "stdin":
                fd = int(key.fd)
                try:
                    written = os.write(fd, pending[:65536])
                except BrokenPipeError:
                    written = len(pending)
                pending = pending[written:]
                if not pending:
                    selector.unregister(fd)
                    os.close(fd)
            elif key.data == "output":
                fd = int(key.fd)
                chunk = os.read(fd, 65536)
                if chunk:
                    outputs[fd] += chunk
                else:
                    selector.unregister(fd)
                    open_outputs -= 1
            else:
                chunk = conn.recv(4096)
                if not chunk:
                    selector.unregister(conn)
                    if pid is None:
                        return None  # refused or failed before a child ran
                    if status is None:
                        status = 1  # the child died without a word (cannot happen: reaped)
                    continue
                reply += chunk
                while b"\n" in reply:
                    line, _, reply = reply.partition(b"\n")
                    word, _, value = line.decode().partition(" ")
                    if word == "pid":
                        pid = int(value)
                    elif word == "exit":
                        status = int(value)
                    elif word == "signal":
                        status = -int(value)  # as subprocess reports a signal
                    else:
                        return None  # refused: nothing ran
    selector.close()
    out, err = (bytes(outputs[fd]).decode(errors="replace") for fd in fds)
    return status, out, err


_template: Template | None = None
_starting = threading.Lock()  # tests that run commands from several threads


def _the_template() -> Template | None:
    """This test process's template (started on first use); None with
    ``GASTOWN_TEST_CLI=exec``."""
    global _template
    if os.environ.get(MODE_ENV) == "exec":
        return None
    with _starting:
        if _template is None:
            _template = Template()
        return _template


def run(argv: list[str], *, cwd: Path, env: dict[str, str], stdin: str | None = None,
        timeout: float = 120) -> tuple[int, str, str]:
    """``gastown ARGV`` as the tests run it: by fork from the template, or in its own
    process when ``GASTOWN_TEST_CLI=exec`` or the template cannot take it."""
    template = _the_template()
    if template is not None:
        result = template.run(argv, cwd=cwd, env=env, stdin=stdin, timeout=timeout)
        if result is not None:
            return result
    proc = subprocess.run([sys.executable, "-m", "gastown.supervisor", *argv], cwd=cwd,
                          env=env, capture_output=True, text=True, input=stdin,
                          timeout=timeout, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def start(argv: list[str], *, cwd: Path, env: dict[str, str]) -> Running | subprocess.Popen[str]:
    """``gastown ARGV`` left running, its stdout and stderr as text pipes: forked from the
    template, or in its own process when ``GASTOWN_TEST_CLI=exec`` or the template cannot
    take it."""
    template = _the_template()
    if template is not None:
        running = template.start(argv, cwd=cwd, env=env)
        if running is not None:
            return running
    return subprocess.Popen([sys.executable, "-m", "gastown.supervisor", *argv], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=1)


def close() -> None:
    """Stop this test process's template (end of the session)."""
    global _template
    if _template is not None:
        _template.close()
        _template = None


def main(argv: list[str]) -> int:
    from gastown.supervisor.cli import entry
    from gastown.supervisor.cli_server import preload, serve

    root, lifeline = Path(argv[0]), int(argv[1])
    preload()
    return serve(root, lifeline, command=entry)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
