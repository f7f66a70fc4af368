"""Agent sessions: start a polecat's agent where no role's death can reach it, and stop it.

Two backends, chosen by ``[sessions] backend`` in ``town.toml``:

``tmux``
    One tmux server per town (``tmux -L <tmux_socket_name(town)>``), one session per
    polecat, attachable by a human (:func:`attach_argv`). The pane's process is the
    agent itself (see :mod:`gastown.roles.adapters.session_launcher`, ``exec`` mode), so it sees
    exactly the environment the caller built and nothing of the tmux server's.
``process``
    A process group of its own whose output is appended to a log file. The caller starts
    it (vfork and exec) and a thread of the caller collects it when it ends; a caller that
    ignores or blocks a signal the agent needs by default has a launcher process start
    it instead, and exit at once.

Either way the agent leads its own process group, outlives the role that started it
(roles are restarted, and killed with their whole group, at any time), and is stopped by
signalling that whole group, because agents fork tools and an orphaned tool tree is how
upstream leaked 56 GB of processes (upstream bug table, rows 9 and 12). A session is named
by :class:`SessionInfo`: the pid *and* its start time, so a pid the kernel has handed to
someone else is never taken for the agent and never signalled.

Layer: a roles adapter, above :mod:`.tmux` (which runs tmux) and :mod:`.processes` (which
reads ``/proc`` and stops process trees); this module only decides which of them a
session needs. Synchronous and blocking (a few tmux round trips, a short-lived
launcher): roles call it through ``trio.to_thread.run_sync``. It makes no decisions
beyond "is it still running"; whether to start, restart or stop a session is the caller's.
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
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Literal

from . import session_launcher
from .processes import is_same_process, process_start_time, stop_process_tree
from .tmux import SessionError as SessionError
from .tmux import last_line as _last_line
from .tmux import run_tmux as _run_tmux
from .tmux import session_panes
from .tmux import tmux_binary as _tmux_binary
from .tmux import tmux_socket_name as tmux_socket_name
from .tmux import town_sessions as town_sessions

Backend = Literal["tmux", "process"]

#: The pane size of a detached session; agents' TUIs lay themselves out for it.
PANE_WIDTH: Final = 200
PANE_HEIGHT: Final = 50

#: How long the launcher may take before we call it hung.
_COMMAND_TIMEOUT: Final = 30.0

#: Characters a session name may keep; tmux forbids ``.`` and ``:`` (target syntax), and
#: everything else outside this set is trouble in a shell or a file name.
_UNSAFE_NAME_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]")

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
    process group, and is collected by this module when it ends. Returns once the agent's
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

    The agent leads its kernel session and process group in both backends, so the
    record's pid names them: the tree is every process in that session or group (a
    shell with job control gives each pipeline a group of its own inside the session)
    and every live descendant of the agent, found in one pass over ``/proc/*/stat``
    and held by pidfds; the agent's death is awaited on them, not polled
    (:func:`~gastown.roles.adapters.processes.stop_process_tree`). What escapes: a
    process that called ``setsid`` itself and is no longer the agent's descendant (an
    ancestor exited, a daemon's double fork, or the agent itself is gone); nothing
    short of a cgroup would catch it, a search by identity (``environ``) may.

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
    stop_process_tree(info.pid, info.start_time, grace)
    if tmux is not None and session_id is not None and info.tmux_socket is not None:
        # By now tmux has usually closed the pane and with it the session; killing by
        # id ($N, unique for the server's life) cannot hit a same-named newer session.
        try:
            _run_tmux(tmux, info.tmux_socket, "kill-session", "-t", session_id)
        except SessionError:
            pass


def stop_town_session(town_root: Path, name: str, grace: float) -> None:
    """Stop the session ``name`` of the town's tmux server that nobody recorded (an orphan).

    Every pane's process tree is stopped as :func:`stop_session` stops an agent's, then
    the session itself is killed by id. Nothing happens without tmux or such a session.

    Raises:
        SessionError: the town's tmux server did not answer within 30 s.
    """
    tmux = shutil.which("tmux")
    if tmux is None:
        return
    socket = tmux_socket_name(town_root)
    panes = session_panes(tmux, socket, name)
    for _, pane_pid in panes:
        start = process_start_time(int(pane_pid)) if pane_pid.isdigit() else None
        if start is not None:
            stop_session(SessionInfo(backend="tmux", name=name, pid=int(pane_pid),
                                     start_time=start, log_path="", tmux_socket=socket),
                         grace=grace)
    for session_id in {session_id for session_id, _ in panes}:
        _run_tmux(tmux, socket, "kill-session", "-t", session_id)


def attach_argv(info: SessionInfo) -> list[str] | None:
    """The command a human runs to attach to the session, or None (process backend).

    The target is ``=<name>``: an exact match, never tmux's prefix match.
    """
    if info.backend != "tmux" or info.tmux_socket is None:
        return None
    return ["tmux", "-L", info.tmux_socket, "attach", "-t", f"={info.name}"]


# --- process backend ---------------------------------------------------------------


def _start_process(spec: SessionSpec, name: str) -> SessionInfo:
    """Start the agent straight from here (vfork and exec, in a session of its own) and
    collect it from a thread when it ends; the launcher only when this process ignores or
    blocks a signal the agent must get at its default (both would be inherited).

    Why not always the launcher: it is a second interpreter's start per session, ~10 ms
    of CPU, the largest cost of a polecat's start after the agent's own. The agent stays
    out of every role's reach all the same: its own session and process group from before
    its exec, and when this process dies the kernel hands it to init like any orphan.
    """
    if _passes_on_odd_signals():
        return _start_by_launcher(spec, name)
    try:
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = os.open(spec.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                      0o666)
    except OSError as exc:
        raise SessionError(f"cannot start session {name}: cannot open its log "
                           f"{spec.log_path}: {exc.strerror}") from exc
    try:
        # restore_signals: SIGPIPE and SIGXFSZ, which Python ignores, back to default.
        agent = subprocess.Popen(spec.argv, cwd=spec.cwd, env=spec.env,
                                 stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 restore_signals=True)
    except (OSError, ValueError) as exc:  # the child's exec failure comes back as OSError
        raise SessionError(f"cannot start session {name}: "
                           f"{session_launcher.describe(exc)}") from exc
    finally:
        os.close(log)
    # Read while the agent is our unreaped child: even one that exits at once has it.
    start_time = process_start_time(agent.pid)
    threading.Thread(target=agent.wait, name=f"reap agent {agent.pid}", daemon=True).start()
    return SessionInfo(backend="process", name=name, pid=agent.pid,
                       start_time=-1 if start_time is None else start_time,
                       log_path=str(spec.log_path), tmux_socket=None)


def _passes_on_odd_signals() -> bool:
    """Whether a child of this thread would start with a signal ignored (an ignored
    disposition survives exec) or blocked that the agent must get by default."""
    if signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        return True
    return any(signal.getsignal(getattr(signal, name)) == signal.SIG_IGN
               for name in session_launcher.DEFAULT_SIGNALS
               if name not in ("SIGPIPE", "SIGXFSZ"))  # restore_signals resets these


def _start_by_launcher(spec: SessionSpec, name: str) -> SessionInfo:
    # The request (environment included) goes through a pipe, never a command line,
    # which every local user can read in /proc.
    try:
        request = session_launcher.encode_request(spec.argv, str(spec.cwd), spec.env,
                                                  str(spec.log_path))
    except ValueError as exc:
        raise SessionError(f"cannot start session {name}: {exc}") from exc
    try:
        result = subprocess.run(
            [sys.executable, "-I", "-S", _LAUNCHER, "spawn"],
            input=request, capture_output=True, timeout=_COMMAND_TIMEOUT,
            check=False, process_group=0)  # not stopped half-way with the role's group
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SessionError(f"cannot start session {name}: launcher failed: {exc}") from exc
    out = result.stdout.decode("utf-8", "replace").strip().splitlines()
    if out and out[-1].startswith("error "):
        raise SessionError(f"cannot start session {name}: {out[-1].removeprefix('error ')}")
    reply = out[-1].split(" ") if out else []
    if reply[:1] != ["ok"] or len(reply) != 3 or not reply[1].isdigit():
        stderr = result.stderr.decode("utf-8", "replace")
        raise SessionError(f"cannot start session {name}: launcher exited "
                           f"{result.returncode}: {_last_line(stderr)}")
    start_time = int(reply[2]) if reply[2].lstrip("-").isdigit() else -1
    return SessionInfo(backend="process", name=name, pid=int(reply[1]),
                       start_time=start_time, log_path=str(spec.log_path), tmux_socket=None)


#: The launcher run as a file with ``-I -S``: only the standard library, nothing of the
#: caller's ``PYTHONPATH`` or site-packages to find or import.
_LAUNCHER: Final = str(Path(session_launcher.__file__).resolve())


# --- tmux backend ------------------------------------------------------------------


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
    for session_id, pane_pid in session_panes(tmux, info.tmux_socket, info.name):
        if pane_pid == str(info.pid):
            return session_id
    return None


# --- small helpers -----------------------------------------------------------------


def _first_int(text: str) -> int | None:
    first = text.strip().partition("\n")[0].strip()
    return int(first) if first.isdigit() else None
