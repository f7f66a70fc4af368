"""Starting and stopping one role process: environment, lifeline, process group, stop.

Layer: a roles adapter (processes and pipes), below the role loops and the supervisor,
which starts and stops its children with it; a role watches its lifeline and reads its
token with it; gates use :func:`child_env` and :func:`stop_child`. Imports only the log.

This module carries out what the supervisor decided; it never decides (when to
restart is :mod:`gastown.supervisor.restart_policy`'s job). Every role process is

- started by trio (``trio.lowlevel.open_process``), so that exactly one task can
  await it and trio's pidfd sees its death within milliseconds;
- a session and process-group leader (``start_new_session=True``): a terminal's
  Ctrl-C does not hit it behind the supervisor's back, and a stop can signal the
  role's whole group, grandchildren included;
- given an environment scrubbed of systemd's handles (:func:`child_env`);
- tied to the supervisor by a **lifeline** pipe (:class:`Lifeline`), so that it exits
  when the supervisor dies, even by SIGKILL; the role watches it from its event loop
  *and* from a thread (:func:`start_lifeline_backstop`), so a role whose loop is hung
  or blocked in a call still goes;
- handed a per-spawn **token** on a pipe of its own (never in its environment, which
  any same-uid process can read in ``/proc/<pid>/environ``): the proof, on the bus,
  that it is the process the supervisor started for its role's name.

It must never call ``waitpid(-1)`` or set SIGCHLD to ``SIG_IGN``: a foreign reaper
steals trio's exit statuses, and a crash then reads as exit 0 (measured: 3 became 0).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol

import trio

from .log import get_logger

log = get_logger()

#: The environment variable that tells a role which fd is its end of the lifeline.
LIFELINE_ENV: Final = "GASTOWN_LIFELINE_FD"

#: The environment variable that tells a role which fd holds its per-spawn token.
TOKEN_ENV: Final = "GASTOWN_ROLE_TOKEN_FD"

#: How long a role may take to stop cleanly once its lifeline closed, before the
#: backstop kills it (and its process group).
LIFELINE_GRACE: Final = 5.0

#: Variables by which systemd hands a service its notify socket, watchdog, journal
#: stream and sockets. A child that inherited them would talk to systemd as if it
#: were the service (an sd_notify library in an agent could send READY=1 for us), or
#: believe its stderr is the journal when it is our log file.
_SYSTEMD_VARIABLES: Final = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"}
)


def child_env(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """Return ``base`` without systemd's variables, updated with ``extra``.

    Removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, ``WATCHDOG_PID``, ``JOURNAL_STREAM``
    and every ``LISTEN_*`` (``LISTEN_FDS``, ``LISTEN_PID``, ``LISTEN_FDNAMES``, ...).
    ``extra`` is applied last and is not scrubbed: a caller that deliberately gives a
    role its own ``NOTIFY_SOCKET`` gets it.
    """
    env = {
        key: value
        for key, value in base.items()
        if key not in _SYSTEMD_VARIABLES and not key.startswith("LISTEN_")
    }
    env.update(extra)
    return env


class Lifeline:
    """The supervisor's side of the lifeline pipe: children exit when it closes.

    Every role child inherits the read end (at the same fd number, named in
    ``GASTOWN_LIFELINE_FD``) and waits for it to become readable
    (:func:`wait_for_lifeline_eof`). Only the supervisor holds the write end, and it
    never writes. When the supervisor exits for any reason, SIGKILL and OOM kill
    included, the kernel closes the write end, every read end reports EOF, and the
    roles shut themselves down instead of living on as orphans that a new
    supervisor would duplicate.

    Why not ``PR_SET_PDEATHSIG``: the kernel delivers it when the *thread* that
    forked the child exits, not the process. trio forks from a worker thread
    (``trio.to_thread``), and idle worker threads exit after 10 s, so a PDEATHSIG
    child was killed 10.0 s after spawn while the supervisor was healthy (measured,
    trio 0.35.0).

    Both fds are close-on-exec (``os.pipe`` creates them non-inheritable, PEP 446):
    the read end reaches a child only through ``pass_fds``, and the write end never
    does. A child holding the write end would keep the pipe open after the
    supervisor died and defeat the lifeline: a child forked without exec (the first
    CLI server, :mod:`gastown.supervisor.cli_server_fork`) closes it first thing.

    :meth:`close` (or leaving the ``with`` block) closes both ends, which tells every
    child still holding the read end to exit: stop the children first.
    """

    __slots__ = ("_closed", "read_fd", "write_fd")

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def env(self) -> dict[str, str]:
        """The variables that tell a child where its end of the lifeline is."""
        return {LIFELINE_ENV: str(self.read_fd)}

    def close(self) -> None:
        """Close both ends (idempotent); children waiting on the lifeline see EOF."""
        if self._closed:
            return
        self._closed = True
        os.close(self.write_fd)
        os.close(self.read_fd)

    def __enter__(self) -> Lifeline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"read_fd={self.read_fd} write_fd={self.write_fd}"
        return f"<Lifeline {state}>"


def open_lifeline() -> Lifeline:
    """Create the lifeline pipe (keep it open while children run); it replaces
    ``PR_SET_PDEATHSIG``, which trio's spawn path breaks (see :class:`Lifeline`)."""
    read_fd, write_fd = os.pipe()  # both O_CLOEXEC
    return Lifeline(read_fd, write_fd)


def lifeline_fd_from_env(environ: Mapping[str, str]) -> int | None:
    """The lifeline fd a role was given in ``GASTOWN_LIFELINE_FD``, or None when absent.

    Raises:
        ValueError: the variable is set but is not a non-negative integer.
    """
    raw = environ.get(LIFELINE_ENV)
    if raw is None or raw == "":
        return None
    fd = int(raw)
    if fd < 0:
        raise ValueError(f"{LIFELINE_ENV} must be a file descriptor, got {raw!r}")
    return fd


async def wait_for_lifeline_eof(fd: int) -> None:
    """Return once the supervisor's end of the lifeline has closed (the child side).

    Waits with ``trio.lowlevel.wait_readable`` (no thread, no polling) and then
    confirms EOF with a read: the supervisor never writes, so a readable pipe means
    EOF. Stray bytes, should anything ever write, are discarded and the wait goes on.

    Also marks ``fd`` close-on-exec, so the role's own children (agents, git) do not
    carry the lifeline, and non-blocking, so a spurious wake-up cannot block the run
    loop. Cancellation leaves the fd open and usable for another wait; the fd is
    never closed here.

    Raises:
        OSError: ``fd`` is not an open file descriptor.
    """
    os.set_inheritable(fd, False)
    os.set_blocking(fd, False)
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not data:
            return


def read_token(environ: MutableMapping[str, str]) -> str | None:
    """Read, once, the per-spawn token the supervisor handed this process (the child side).

    Reads the pipe named by ``GASTOWN_ROLE_TOKEN_FD`` to its end, closes it and removes
    the variable from ``environ`` (this process's children must not look for it).
    Returns None when no token was given (a role started by hand).
    """
    raw = environ.pop(TOKEN_ENV, None)
    if not raw:
        return None
    fd = int(raw)
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode() or None


def _lifeline_closed(fd: int) -> bool:
    """Block (no event loop) until the lifeline reports EOF; False if ``fd`` went invalid."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while True:
        events = poller.poll()
        if any(mask & select.POLLNVAL for _, mask in events):
            return False
        try:
            if not os.read(fd, 4096):
                return True
        except BlockingIOError:  # the event loop's watcher read it first: poll again
            continue
        except OSError:
            return False


def start_lifeline_backstop(fd: int, label: str, grace: float = LIFELINE_GRACE,
                            ) -> threading.Thread:
    """Kill this process if the lifeline closes and it has not exited ``grace`` s later.

    The role's event loop watches the lifeline too (:func:`wait_for_lifeline_eof`) and
    stops cleanly; this daemon thread is for when it cannot: a loop blocked in a
    synchronous call (a paused fail point, a stuck library call) would otherwise keep
    the role alive beside the next supervisor's. It blocks in ``poll`` on ``fd``, so it
    needs nothing from the loop. When it fires it writes one line to stderr and sends
    SIGKILL to its own process group (the role and the git or gate processes it
    started) if this process leads that group, as the supervisor's roles do; otherwise
    (a role started by hand) it ends only this process.
    """
    os.set_inheritable(fd, False)

    def watch() -> None:
        if not _lifeline_closed(fd):
            return
        time.sleep(grace)
        message = (f"gastown {label}: the supervisor is gone and this role did not stop "
                   f"within {grace:g}s; killing it\n")
        try:
            os.write(2, message.encode())
        except OSError:
            pass
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        os._exit(70)

    thread = threading.Thread(target=watch, name="lifeline-backstop", daemon=True)
    thread.start()
    return thread


def token_pipe(token: str) -> int:
    """A pipe holding ``token`` with its write end already closed; returns the read end."""
    read_fd, write_fd = os.pipe()  # both O_CLOEXEC; the read end goes through pass_fds
    try:
        os.write(write_fd, token.encode())  # far below the pipe's buffer: never blocks
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


async def start_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str,
    lifeline: Lifeline,
    stdout_path: Path,
    token: str | None = None,
    extra_fds: Mapping[str, int] | None = None,
) -> trio.Process:
    """Start one role process and return it; the caller must await it (one task, always).

    The child runs ``argv`` in ``cwd`` as the leader of a new session and process
    group (its pgid is its pid), with stdin from ``/dev/null`` and stdout and stderr
    appended to ``stdout_path`` (created ``0600``, with its parent directories). Its
    environment is ``child_env(env, lifeline.env())``: systemd's variables scrubbed,
    ``GASTOWN_LIFELINE_FD`` added; the lifeline's read end is its only extra fd.
    With ``token``, the child also gets a pipe holding it, named by
    ``GASTOWN_ROLE_TOKEN_FD`` (see :func:`read_token`). ``extra_fds`` passes more
    descriptors, each named in the child's environment by its key.

    Raises:
        OSError: the executable is missing or not executable, or ``cwd`` is missing;
            no process exists then. Count it against the restart budget like a crash.
        ValueError: ``argv`` is empty or the lifeline is closed.

    Cancellation: trio finishes a spawn it has begun, and nothing after it here can
    be interrupted, so a cancelled call either started nothing or returns the
    process (and the cancellation arrives at the caller's next checkpoint).
    """
    if not argv:
        raise ValueError("cannot start a child with an empty argv")
    if lifeline.closed:
        raise ValueError("cannot start a child on a closed lifeline")
    stdout_path.parent.mkdir(parents=True, exist_ok=True)
    extra_env = lifeline.env()
    fds = [lifeline.read_fd]
    for name, fd in (extra_fds or {}).items():
        extra_env[name] = str(fd)
        fds.append(fd)
    token_fd = None
    if token is not None:
        token_fd = token_pipe(token)
        extra_env[TOKEN_ENV] = str(token_fd)
        fds.append(token_fd)
    try:
        out = os.open(stdout_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                      0o600)
    except BaseException:
        if token_fd is not None:
            os.close(token_fd)
        raise
    try:
        proc = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=child_env(env, extra_env),
            start_new_session=True,
            pass_fds=tuple(fds),
        )
    except OSError as exc:
        log.warning("child spawn failed", argv0=argv[0], error=str(exc))
        raise
    finally:
        os.close(out)
        if token_fd is not None:
            os.close(token_fd)
    log.info("child started", pid=proc.pid, argv0=argv[0], stdout=str(stdout_path))
    return proc


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a whole group, tolerating that every member is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # a member changed uid (setuid program); the rest got it
        log.warning("child group partly unsignalable", pgid=pgid, signal=sig.name)


def _already_reaped(pid: int) -> bool:
    """Whether our child ``pid`` has already been collected (by ``Process.wait``/``poll``).

    Peeks with ``WNOWAIT`` on this one pid: nothing is reaped and no other child's
    status is touched (unlike ``waitpid(-1)``). ``Process.returncode`` cannot be
    used for this: reading it reaps a zombie, freeing the pid for reuse.
    """
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


async def _wait_exited(proc: Child, pidfd: int | None) -> None:
    """Wait for the leader to exit; through ``pidfd`` it stays an unreaped zombie."""
    if pidfd is None:
        await proc.wait()
    else:
        await trio.lowlevel.wait_readable(pidfd)


class Child(Protocol):
    """A ``trio.Process``, or a child forked without exec and awaited through a pidfd."""

    @property
    def pid(self) -> int: ...
    async def wait(self) -> int: ...


async def stop_child(proc: Child, grace: float) -> int:
    """Stop a child started by :func:`start_child` and its whole group; return its status.

    Sends SIGTERM to the process group, waits up to ``grace`` seconds for the leader
    to exit, then sends SIGKILL to the group (which also takes down grandchildren
    that outlived a leader that obeyed SIGTERM) and awaits the leader. The status is
    ``trio.Process.returncode``'s: the exit code, or minus the signal number
    (``-15`` for a SIGTERM death, ``-9`` after SIGKILL).

    Runs shielded from cancellation: once called it always finishes, so a
    cancelled supervisor still reaps its children instead of leaving zombies or
    orphans; an outer cancellation takes effect at the caller's next checkpoint. It
    can only hang if SIGKILL cannot end the leader (a process stuck in the kernel).

    Safe on a child that has already exited: one already reaped is not signalled
    (its pgid may belong to someone else by now) and its status is returned; an
    exited but unreaped one is reaped, after a SIGKILL to whatever remains of its
    group.

    Group ids stay safe to signal: until the leader is reaped its pid (and thus the
    pgid) cannot be reused. The leader's exit is awaited through a pidfd of our own,
    which does not reap it, so the final SIGKILL reaches the group before the pid is
    released.
    """
    with trio.CancelScope(shield=True):
        status = await _terminate_group_and_reap(proc, grace)
    return status


async def _terminate_group_and_reap(proc: Child, grace: float) -> int:
    pid = proc.pid
    if _already_reaped(pid):
        return await proc.wait()
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except OSError:  # kernel < 5.3: fall back to waiting through trio (reaps)
        pidfd = None
    try:
        log.info("child stopping", pid=pid, grace=grace)
        _signal_group(pid, signal.SIGTERM)
        with trio.move_on_after(max(grace, 0.0)) as grace_scope:
            await _wait_exited(proc, pidfd)
        if grace_scope.cancelled_caught:
            log.warning("child ignored SIGTERM; killing its group", pid=pid, grace=grace)
        _signal_group(pid, signal.SIGKILL)
    finally:
        if pidfd is not None:
            trio.lowlevel.notify_closing(pidfd)
            os.close(pidfd)
    status = await proc.wait()
    log.info("child stopped", pid=pid, status=status)
    return status
