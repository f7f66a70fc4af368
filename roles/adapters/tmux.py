"""The town's tmux server: the one place tmux is run.

Layer: a roles adapter (it runs the ``tmux`` binary), below :mod:`.sessions` (which
starts and stops agents' sessions on this server) and :mod:`.tmux_input` (which reads
and types into their panes). It names the town's server (:func:`tmux_socket_name`),
runs one tmux command against it (:func:`run_tmux`), and lists its sessions and a
session's panes. Synchronous and blocking; every command is bounded by
:data:`COMMAND_TIMEOUT`. It decides nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from hashlib import sha256
from pathlib import Path
from typing import Final

from ..core.errors import GastownError

#: How long one tmux command may take before we call it hung.
COMMAND_TIMEOUT: Final = 30.0

#: What tmux says when there is no server for the socket (an empty town), in 3.x.
_NO_SERVER: Final = ("no server running", "error connecting to", "No such file or directory",
                      "server exited unexpectedly")


class SessionError(GastownError):
    """A session could not be started: tmux missing, name taken, command not found."""


def tmux_binary() -> str:
    """The path of ``tmux``; :class:`SessionError` when it is not installed."""
    tmux = shutil.which("tmux")
    if tmux is None:
        raise SessionError('the tmux session backend needs tmux, which is not installed '
                           '(install it, or set [sessions] backend = "process")')
    return tmux


def tmux_socket_name(town_root: Path) -> str:
    """The town's tmux server name for ``tmux -L``: stable for the town's resolved path.

    Short on purpose: tmux puts the socket in ``$TMUX_TMPDIR/tmux-<uid>/``, and a Unix
    socket path is limited to 108 bytes.
    """
    digest = sha256(str(town_root.resolve()).encode()).hexdigest()
    return f"gastown-{digest[:12]}"


def _tmux_env() -> dict[str, str]:
    """The caller's environment minus what would point tmux at *another* server."""
    return {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}


def run_tmux(tmux: str, socket: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one tmux command line against the town's server; never raises for its status.

    ``-f /dev/null``: a server we start must not read the user's ``~/.tmux.conf``, which
    may set ``remain-on-exit`` (sessions that never end), ``default-command`` or hooks.

    Raises:
        SessionError: tmux did not answer within :data:`COMMAND_TIMEOUT`.
    """
    try:
        # Its own process group, as git's (git_command.run_git): a client killed by the
        # signal that stops the role would read as a session that is gone.
        return subprocess.run([tmux, "-L", socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, env=_tmux_env(),
                              timeout=COMMAND_TIMEOUT, check=False, process_group=0)
    except subprocess.TimeoutExpired as exc:
        raise SessionError(f"tmux {args[0]} did not answer within "
                           f"{COMMAND_TIMEOUT:g}s (server {socket})") from exc


def town_sessions(town_root: Path) -> list[str]:
    """Names of the sessions on the town's tmux server; [] when there is no server or tmux.

    Raises:
        SessionError: tmux failed for another reason than a missing server.
    """
    tmux = shutil.which("tmux")
    if tmux is None:
        return []
    result = run_tmux(tmux, tmux_socket_name(town_root), "list-sessions", "-F",
                      "#{session_name}")
    if result.returncode != 0:
        if any(marker in result.stderr for marker in _NO_SERVER):
            return []
        raise SessionError(f"tmux list-sessions failed: {last_line(result.stderr)}")
    return [line for line in result.stdout.splitlines() if line]


def server_pid(town_root: Path) -> int | None:
    """The pid of the town's tmux server while it has sessions; None otherwise (no
    server, no tmux, or it did not answer)."""
    tmux = shutil.which("tmux")
    if tmux is None:
        return None
    try:
        result = run_tmux(tmux, tmux_socket_name(town_root), "list-sessions", "-F", "#{pid}")
    except SessionError:
        return None
    first = result.stdout.split()[:1] if result.returncode == 0 else []
    return int(first[0]) if first and first[0].isdigit() else None


def session_panes(tmux: str, socket: str, name: str) -> list[tuple[str, str]]:
    """``(session id, pane pid)`` of each pane of the session named exactly ``name``.

    Empty when there is no such session (or no server). Session ids (``$N``) are never
    reused by a server, so killing by id cannot hit a newer session of the same name.
    """
    result = run_tmux(tmux, socket, "list-panes", "-s", "-t", f"={name}", "-F",
                      "#{session_id} #{pane_pid}")
    if result.returncode != 0:
        return []
    panes = []
    for line in result.stdout.splitlines():
        session_id, _, pane_pid = line.partition(" ")
        panes.append((session_id, pane_pid))
    return panes


def last_line(text: str) -> str:
    """The last line of a command's error output, for a one-line message."""
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no error output"
