"""Agent sessions: start a polecat's agent where no role's death can reach it, and stop it.

Two backends, chosen by ``[sessions] backend`` in ``town.toml``:

``tmux``
    One tmux server per town (``tmux -L <tmux_socket_name(town)>``), one session per
    polecat, attachable by a human (:func:`attach_argv`). The pane's process is the
    agent itself (see :mod:`gastown.roles.adapters.session_launcher`, ``exec`` mode), so it sees
    exactly the environment the caller built and nothing of the tmux server's.
``process``
    A detached process group whose output is appended to a log file. A launcher process
    starts it and exits at once, so the agent is never the caller's child.

Either way the agent leads its own process group, outlives the role that started it
(roles are restarted, and killed with their whole group, at any time), and is stopped by
signalling that whole group, because agents fork tools and an orphaned tool tree is how
upstream leaked 56 GB of processes (upstream bug table, rows 9 and 12). A session is named
by :class:`SessionInfo`: the pid *and* its start time, so a pid the kernel has handed to
someone else is never taken for the agent and never signalled.

Synchronous and blocking (a few tmux round trips, a short-lived launcher): roles call it
through ``trio.to_thread.run_sync``. It makes no decisions beyond "is it still running";
whether to start, restart or stop a session is the caller's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from hashlib import sha256
from pathlib import Path
from typing import Final, Literal

from ..core.errors import GastownError
from . import session_launcher
from .processes import is_same_process, process_start_time

Backend = Literal["tmux", "process"]

#: The pane size of a detached session; agents' TUIs lay themselves out for it.
PANE_WIDTH: Final = 200
PANE_HEIGHT: Final = 50

#: How long one tmux command or the launcher may take before we call it hung.
_COMMAND_TIMEOUT: Final = 30.0

#: How often a stopping session's processes are looked for in ``/proc``.
_POLL_INTERVAL: Final = 0.02

#: How long SIGKILLed processes get to disappear; only a process stuck in the kernel
#: (state D) takes longer, and then we give up on it.
_KILL_WAIT: Final = 5.0

#: Characters a session name may keep; tmux forbids ``.`` and ``:`` (target syntax), and
#: everything else outside this set is trouble in a shell or a file name.
_UNSAFE_NAME_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]")

#: What tmux says when there is no server for the socket (an empty town), in 3.x.
_NO_SERVER: Final = ("no server running", "error connecting to", "No such file or directory",
                      "server exited unexpectedly")


class SessionError(GastownError):
    """A session could not be started: tmux missing, name taken, command not found."""


@dataclass(frozen=True)
class SessionSpec:
    """What to run for one polecat, and where.

    ``env`` is the agent's *complete* environment: nothing of the caller's or the tmux
    server's is added. ``town_root`` scopes the tmux server.
    """

    backend: Backend
    name: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    town_root: Path


@dataclass(frozen=True)
class SessionInfo:
    """A started session, as the store keeps it (:meth:`to_json` / :meth:`from_json`).

    ``pid`` is the agent (process backend) or the tmux pane's process, which is also the
    agent; it leads the agent's process group. ``start_time`` is its
    :func:`~gastown.roles.adapters.processes.process_start_time`, or -1 when it had already
    exited and been reaped before it could be read. ``name`` is the sanitised name.
    """

    backend: Backend
    name: str
    pid: int
    start_time: int
    log_path: str
    tmux_socket: str | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SessionInfo:
        """Parse :meth:`to_json`'s output; ValueError when it is not such a record."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("a session record must be a JSON object")
        backend, name, pid = raw.get("backend"), raw.get("name"), raw.get("pid")
        start_time, log_path = raw.get("start_time"), raw.get("log_path")
        sock = raw.get("tmux_socket")
        if backend not in ("tmux", "process"):
            raise ValueError(f"unknown session backend {backend!r}")
        if not (isinstance(name, str) and isinstance(log_path, str)):
            raise ValueError("session name and log_path must be strings")
        if not (isinstance(pid, int) and isinstance(start_time, int)):
            raise ValueError("session pid and start_time must be integers")
        if sock is not None and not isinstance(sock, str):
            raise ValueError("tmux_socket must be a string or null")
        return cls(backend="tmux" if backend == "tmux" else "process", name=name, pid=pid,
                   start_time=start_time, log_path=log_path, tmux_socket=sock)


def resolve_backend(configured: Literal["auto", "tmux", "process"]) -> Backend:
    """The backend to use: ``auto`` is tmux when it is installed, else process.

    Raises:
        SessionError: ``tmux`` was asked for and tmux is not installed.
    """
    if configured == "process":
        return "process"
    if configured == "tmux":
        _tmux_binary()
        return "tmux"
    return "tmux" if shutil.which("tmux") else "process"


def tmux_socket_name(town_root: Path) -> str:
    """The town's tmux server name for ``tmux -L``: stable for the town's resolved path.

    Short on purpose: tmux puts the socket in ``$TMUX_TMPDIR/tmux-<uid>/``, and a Unix
    socket path is limited to 108 bytes.
    """
    digest = sha256(str(town_root.resolve()).encode()).hexdigest()
    return f"gastown-{digest[:12]}"


def sanitize_name(name: str) -> str:
    """``name`` as a tmux session may carry it: every character but ``[A-Za-z0-9_-]`` → ``_``.

    Raises:
        SessionError: the name is empty.
    """
    if not name:
        raise SessionError("a session needs a name")
    return _UNSAFE_NAME_CHARS.sub("_", name)


def start_session(spec: SessionSpec) -> SessionInfo:
    """Start the agent of ``spec`` and return how to find it again.

    The agent runs in ``spec.cwd`` with exactly ``spec.env``, leads its own session and
    process group, and is nobody's child that anyone must reap. Returns once the agent's
    process exists (not once it is ready: that is the agent's business). If the agent
    exits at once, the session simply is not alive.

    Raises:
        SessionError: tmux backend without tmux; a tmux session of that name exists
            (never silently reused); the command or the working directory does not
            exist; the launcher or tmux failed. Nothing is left running then.
    """
    name = sanitize_name(spec.name)
    if spec.backend not in ("tmux", "process"):
        raise SessionError(f"cannot start session {name}: unknown backend {spec.backend!r}")
    if not spec.argv:
        raise SessionError(f"cannot start session {name}: no command given")
    # execve would reject these, in the tmux case out of our sight.
    bad = [k for k, v in spec.env.items() if not k or "=" in k or "\0" in k + v]
    if bad:
        raise SessionError(f"cannot start session {name}: "
                           f"invalid environment variable {bad[0]!r}")
    if any("\0" in arg for arg in spec.argv):
        raise SessionError(f"cannot start session {name}: NUL byte in the command")
    if not spec.cwd.is_dir():
        raise SessionError(f"cannot start session {name}: "
                           f"working directory {spec.cwd} does not exist")
    if spec.backend == "tmux":
        return _start_tmux(spec, name)
    return _start_process(spec, name)


def session_alive(info: SessionInfo) -> bool:
    """Whether the session's agent is still running (a zombie counts as dead).

    For tmux, the session must also still exist and hold the agent's pane: an agent that
    survived ``kill-session`` is a leftover, not a session.

    Raises:
        SessionError: the town's tmux server did not answer within 30 s.
    """
    if not is_same_process(info.pid, info.start_time):
        return False
    if info.backend == "process" or info.tmux_socket is None:
        return True
    tmux = shutil.which("tmux")
    if tmux is None:
        return True  # cannot ask tmux; the agent is demonstrably running
    return _tmux_session_id(tmux, info) is not None


def stop_session(info: SessionInfo, grace: float = 5.0) -> None:
    """Stop the session's whole process tree: SIGTERM, up to ``grace`` s, then SIGKILL.

    The tree is every process in the agent's kernel session (the agent is its leader in
    both backends), not just its process group: a shell with job control gives each
    pipeline a group of its own inside the same session. Only a descendant that calls
    ``setsid`` itself escapes; nothing short of a cgroup would catch it.

    For tmux the session is then killed too, if it still holds the agent's pane (a newer
    session that reuses the name is left alone). Idempotent: everything may already be
    gone. A pid that now belongs to another process (different start time) is never
    signalled. Blocks for up to ``grace`` plus a few seconds; never raises for tmux
    trouble, so a hung tmux server cannot keep an agent alive.
    """
    tmux = shutil.which("tmux") if info.backend == "tmux" else None
    session_id = None
    if tmux is not None:
        try:
            session_id = _tmux_session_id(tmux, info)
        except SessionError:
            pass
    _stop_process_tree(info.pid, info.start_time, grace)
    if tmux is not None and session_id is not None and info.tmux_socket is not None:
        # By now tmux has usually closed the pane and with it the session; killing by
        # id ($N, unique for the server's life) cannot hit a same-named newer session.
        try:
            _run_tmux(tmux, info.tmux_socket, "kill-session", "-t", session_id)
        except SessionError:
            pass


def attach_argv(info: SessionInfo) -> list[str] | None:
    """The command a human runs to attach to the session, or None (process backend).

    The target is ``=<name>``: an exact match, never tmux's prefix match.
    """
    if info.backend != "tmux" or info.tmux_socket is None:
        return None
    return ["tmux", "-L", info.tmux_socket, "attach", "-t", f"={info.name}"]


def town_sessions(town_root: Path) -> list[str]:
    """Names of the sessions on the town's tmux server; [] when there is no server or tmux.

    Raises:
        SessionError: tmux failed for another reason than a missing server.
    """
    tmux = shutil.which("tmux")
    if tmux is None:
        return []
    result = _run_tmux(tmux, tmux_socket_name(town_root), "list-sessions", "-F",
                       "#{session_name}")
    if result.returncode != 0:
        if any(marker in result.stderr for marker in _NO_SERVER):
            return []
        raise SessionError(f"tmux list-sessions failed: {_last_line(result.stderr)}")
    return [line for line in result.stdout.splitlines() if line]


# --- process backend ---------------------------------------------------------------


def _start_process(spec: SessionSpec, name: str) -> SessionInfo:
    request = json.dumps({"argv": spec.argv, "cwd": str(spec.cwd), "env": spec.env,
                          "log_path": str(spec.log_path)})
    # The request (environment included) goes through a pipe, never a command line,
    # which every local user can read in /proc.
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gastown.roles.adapters.session_launcher", "spawn"],
            input=request, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT,
            check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SessionError(f"cannot start session {name}: launcher failed: {exc}") from exc
    reply = _parse_reply(result.stdout)
    if reply is None:
        raise SessionError(f"cannot start session {name}: launcher exited "
                           f"{result.returncode}: {_last_line(result.stderr)}")
    error, pid, start_time = reply.get("error"), reply.get("pid"), reply.get("start_time")
    if isinstance(error, str):
        raise SessionError(f"cannot start session {name}: {error}")
    if not isinstance(pid, int):
        raise SessionError(f"cannot start session {name}: launcher sent no pid")
    return SessionInfo(backend="process", name=name, pid=pid,
                       start_time=start_time if isinstance(start_time, int) else -1,
                       log_path=str(spec.log_path), tmux_socket=None)


def _parse_reply(stdout: str) -> dict[str, object] | None:
    lines = stdout.strip().splitlines()
    if not lines:
        return None
    try:
        reply = json.loads(lines[-1])
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None


# --- tmux backend ------------------------------------------------------------------


def _tmux_binary() -> str:
    tmux = shutil.which("tmux")
    if tmux is None:
        raise SessionError('the tmux session backend needs tmux, which is not installed '
                           '(install it, or set [sessions] backend = "process")')
    return tmux


def _tmux_env() -> dict[str, str]:
    """The caller's environment minus what would point tmux at *another* server."""
    return {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}


def _run_tmux(tmux: str, socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one tmux command line against the town's server; never raises for its status.

    ``-f /dev/null``: a server we start must not read the user's ``~/.tmux.conf``, which
    may set ``remain-on-exit`` (sessions that never end), ``default-command`` or hooks.
    """
    try:
        return subprocess.run([tmux, "-L", socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, env=_tmux_env(),
                              timeout=_COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SessionError(f"tmux {args[0]} did not answer within "
                           f"{_COMMAND_TIMEOUT:g}s (server {socket})") from exc


def _command_exists(argv0: str, cwd: Path, env: dict[str, str]) -> bool:
    """Whether ``execvpe(argv0, …, env)`` from ``cwd`` would find an executable."""
    if "/" in argv0:
        path = cwd / argv0
        return path.is_file() and os.access(path, os.X_OK)
    return shutil.which(argv0, path=env.get("PATH", os.defpath)) is not None


def _write_exec_spec(spec: SessionSpec, name: str) -> Path:
    """Write the pane's ``{argv, cwd, env}`` to a 0600 file in ``<town>/.runtime/sessions``.

    The pane's launcher deletes it as soon as it has read it.
    """
    runtime = spec.town_root / ".runtime"
    for directory in (runtime, runtime / "sessions"):
        directory.mkdir(mode=0o700, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".json", dir=runtime / "sessions")
    with os.fdopen(fd, "w") as f:
        json.dump({"argv": spec.argv, "cwd": str(spec.cwd), "env": spec.env}, f)
    return Path(path)


def _start_tmux(spec: SessionSpec, name: str) -> SessionInfo:
    tmux = _tmux_binary()
    # The pane execs the agent out of our sight; this is our one chance at a clear error.
    if not _command_exists(spec.argv[0], spec.cwd, spec.env):
        raise SessionError(f"cannot start session {name}: command not found: {spec.argv[0]}")
    socket = tmux_socket_name(spec.town_root)
    try:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        spec_file = _write_exec_spec(spec, name)
    except OSError as exc:
        raise SessionError(f"cannot start session {name}: {exc}") from exc
    # Several arguments after the options: tmux execs them directly, with no shell and
    # so no quoting; the launcher then execs the agent, keeping the pane's pid.
    pane_argv = [sys.executable, "-I", "-S", str(Path(session_launcher.__file__).resolve()),
                 "exec", str(spec_file)]
    # pipe-pane runs in the same command list, before the server reads the pane's first
    # output, so nothing the agent prints early is lost. tmux expands #{...} in its
    # command, hence ## for a literal #.
    pipe_command = "cat >> " + shlex.quote(str(spec.log_path)).replace("#", "##")
    result = _run_tmux(
        tmux, socket,
        "new-session", "-d", "-s", name, "-c", str(spec.cwd),
        "-x", str(PANE_WIDTH), "-y", str(PANE_HEIGHT), "-P", "-F", "#{pane_pid}",
        *pane_argv, ";",
        "pipe-pane", "-o", "-t", f"={name}:", pipe_command)
    pid = _first_int(result.stdout)
    if pid is None:  # new-session failed, so tmux skipped the rest of the list
        spec_file.unlink(missing_ok=True)
        if "duplicate session" in result.stderr:
            raise SessionError(f"session {name} already exists on tmux server {socket}")
        raise SessionError(f"tmux could not start session {name}: "
                           f"{_last_line(result.stderr)}")
    start_time = process_start_time(pid)
    return SessionInfo(backend="tmux", name=name, pid=pid,
                       start_time=start_time if start_time is not None else -1,
                       log_path=str(spec.log_path), tmux_socket=socket)


def _tmux_session_id(tmux: str, info: SessionInfo) -> str | None:
    """The id (``$N``) of the session named ``info.name`` if one of its panes is ours."""
    if info.tmux_socket is None:
        return None
    result = _run_tmux(tmux, info.tmux_socket, "list-panes", "-s", "-t", f"={info.name}",
                       "-F", "#{session_id} #{pane_pid}")
    if result.returncode != 0:
        return None
    for line in result.stdout.splitlines():
        session_id, _, pane_pid = line.partition(" ")
        if pane_pid == str(info.pid):
            return session_id
    return None


# --- stopping a process tree -------------------------------------------------------


def _stop_process_tree(leader: int, start_time: int, grace: float) -> None:
    """SIGTERM the kernel session led by ``leader``, wait ``grace`` s, SIGKILL what is left.

    Nothing is signalled when a process ``leader`` exists with another start time: the
    pid was reused, so the agent and its session are long gone. A leader that is simply
    gone is fine: while any process uses its pid as a session or group id, the kernel
    does not hand the pid out again, so those processes are the agent's.
    """
    current = process_start_time(leader)
    if leader <= 1 or (current is not None and current != start_time):
        return
    _signal_all(_session_members(leader), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _session_members(leader):
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL)
    else:
        return
    # Re-sent each round: a process forked between the scan and the signal is caught
    # by the next one.
    deadline = time.monotonic() + _KILL_WAIT
    while members := _session_members(leader):
        if time.monotonic() >= deadline:
            return  # stuck in the kernel; nothing more a signal can do
        _signal_all(members, signal.SIGKILL)
        time.sleep(_POLL_INTERVAL)


def _session_members(leader: int) -> list[tuple[int, int]]:
    """``(pid, pgrp)`` of each live (non-zombie) process in ``leader``'s session or group."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        # comm (field 2) may hold spaces and parentheses: count from the last ')'.
        fields = stat.rpartition(b")")[2].split()
        if len(fields) < 4 or fields[0] in (b"Z", b"X"):
            continue
        pgrp, session = int(fields[2]), int(fields[3])
        if leader in (pgrp, session):
            members.append((int(entry), pgrp))
    return members


def _signal_all(members: list[tuple[int, int]], sig: signal.Signals) -> None:
    """Send ``sig`` to each member's group and to each member, tolerating exits."""
    for pgrp in {pgrp for _, pgrp in members}:
        try:
            os.killpg(pgrp, sig)
        except OSError:  # gone, or (a setuid child such as sudo) not ours to signal
            pass
    for pid, _ in members:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


# --- small helpers -----------------------------------------------------------------


def _first_int(text: str) -> int | None:
    first = text.strip().partition("\n")[0].strip()
    return int(first) if first.isdigit() else None


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no error output"
