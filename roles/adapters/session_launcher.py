"""The few lines that run between a caller and its agent, so the agent is no one's child.

Layer: adapters (processes), below :mod:`.sessions`, its only user.

Two modes, both used only by :mod:`gastown.roles.adapters.sessions`:

``spawn`` (process backend, for a caller that ignores or blocks one of the signals the
agent must get by default; others start it themselves), run as ``python -I -S <this file>
spawn``
    Reads the request on stdin — the log path, the working directory, the argument
    count, the arguments and the environment's ``NAME=value`` entries, each ended by a
    NUL byte (:func:`encode_request`) — starts the agent with ``posix_spawn`` in its own
    session (stdin ``/dev/null``, stdout and stderr appended to the log, default signal
    dispositions, empty signal mask), writes ``ok PID START_TIME`` (or ``error
    MESSAGE``) as one line on stdout and exits at once without waiting. The caller waits
    only for this launcher; the agent is reparented to init (or the nearest subreaper),
    so the caller never holds a zombie and never needs ``waitpid(-1)``. The start time
    is read here, while the agent is still our unreaped child, so even an agent that
    exits at once has one. It imports ``os`` and ``sys`` only (no ``json``, no
    ``subprocess``): a polecat's launcher cost ~30 ms of CPU, now ~10, the interpreter's
    own start.

``exec SPEC_FILE`` (tmux backend), run as ``python -I -S <this file> exec SPEC_FILE``
    The tmux pane's command. Reads ``{"argv", "cwd", "env"}`` from the JSON file,
    deletes it, and ``execve``\\ s the agent with exactly that environment, so the pane
    process *becomes* the agent (same pid). The tmux server's global environment (a
    snapshot of whichever process first started the server) never reaches the agent,
    and neither the environment nor a long prompt goes through a command line (visible
    to every local user in ``/proc/*/cmdline``; tmux also caps a command at 16 KiB).
    This mode imports only the standard library: ``-I -S`` keeps the server's stale
    ``PYTHONPATH`` and site-packages out of it.

This module must never wait for the agent, and must report every failure to start it.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # under ``signal``, without its enums
import os
import sys

#: Exit status of ``exec`` mode when the agent cannot be run, as a shell would use.
EXEC_FAILED = 127

#: Signals the agent gets at their default disposition whatever the caller had: an
#: ignored signal stays ignored across exec, and Python ignores SIGPIPE and SIGXFSZ.
DEFAULT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGPIPE", "SIGXFSZ")


def encode_request(argv: list[str], cwd: str, env: dict[str, str], log_path: str) -> bytes:
    """The ``spawn`` request for the launcher's stdin (the caller's side).

    Raises:
        ValueError: a field holds a NUL byte, or a variable name is empty or holds ``=``
            (the operating system could not pass either on).
    """
    if not argv:
        raise ValueError("argv must not be empty")
    for name in env:
        if not name or "=" in name:
            raise ValueError(f"illegal environment variable name {name!r}")
    fields = [log_path, cwd, str(len(argv)), *argv, *(f"{k}={v}" for k, v in env.items())]
    if any("\0" in field for field in fields):
        raise ValueError("embedded null byte")
    return b"".join(os.fsencode(field) + b"\0" for field in fields)


def _decode_request(data: bytes) -> tuple[str, str, list[str], dict[str, str]]:
    """``(log_path, cwd, argv, env)`` from :func:`encode_request`'s bytes."""
    fields = [os.fsdecode(f) for f in data.split(b"\0")]
    if len(fields) < 4 or fields.pop() != "":
        raise ValueError("truncated request")
    log_path, cwd, count = fields[0], fields[1], int(fields[2])
    argv, entries = fields[3:3 + count], fields[3 + count:]
    if len(argv) != count or count < 1:
        raise ValueError("argv is short")
    env = dict(entry.split("=", 1) for entry in entries)
    return log_path, cwd, argv, env


def _spec_fields(raw: object) -> tuple[list[str], str, dict[str, str]]:
    """``(argv, cwd, env)`` from a decoded spec, or ValueError when it is malformed."""
    if not isinstance(raw, dict):
        raise ValueError("spec is not an object")
    argv, cwd, env = raw.get("argv"), raw.get("cwd"), raw.get("env")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise ValueError("argv must be a non-empty list of strings")
    if not isinstance(cwd, str):
        raise ValueError("cwd must be a string")
    if not (isinstance(env, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise ValueError("env must map strings to strings")
    return list(argv), cwd, dict(env)


def describe(exc: Exception) -> str:
    """``No such file or directory: 'x'`` without the ``[Errno 2]`` noise."""
    if not isinstance(exc, OSError):  # ValueError: a NUL byte, or '=' in a variable name
        return str(exc)
    what = exc.strerror or type(exc).__name__
    return f"{what}: {exc.filename!r}" if exc.filename is not None else what


def _spawn() -> int:
    """``spawn`` mode; returns the launcher's exit status (0: started, 1: not)."""
    try:
        log_path, cwd, argv, env = _decode_request(sys.stdin.buffer.read())
    except ValueError as exc:
        return _report(f"error bad launcher request: {exc}")
    try:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        # posix_spawn has no working directory of its own: this process moves there,
        # so that a relative argv[0] and the agent's files are taken from it.
        os.chdir(cwd)
        agent = os.posix_spawn(
            _executable(argv[0], env), argv, env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o666),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True, setsigmask=(),
            setsigdef=[getattr(_signal, name) for name in DEFAULT_SIGNALS])
    except (OSError, ValueError) as exc:  # the child's exec failure comes back as OSError
        return _report(f"error {describe(exc)}")
    return _report(f"ok {agent} {_start_time(agent)}")


def _executable(argv0: str, env: dict[str, str]) -> str:
    """``argv0`` looked up as ``execvpe`` would in ``env``'s ``PATH`` (not this
    process's, which ``posix_spawnp`` would use); itself when it holds a slash or is not
    found (the spawn then fails with the usual error)."""
    if "/" in argv0:
        return argv0
    for folder in os.get_exec_path(env):
        candidate = os.path.join(folder, argv0)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return argv0


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22),
    -1 if unreadable; the unreaped child is always readable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return -1


def _report(line: str) -> int:
    sys.stdout.write(line.replace("\n", " ") + "\n")
    sys.stdout.flush()
    return 1 if line.startswith("error") else 0


def _exec(spec_file: str) -> int:
    """``exec`` mode: becomes the agent, or returns EXEC_FAILED after saying why."""
    import json
    import signal

    try:
        with open(spec_file, "rb") as f:
            raw = json.loads(f.read())
        argv, cwd, env = _spec_fields(raw)
    except (OSError, ValueError) as exc:
        print(f"gastown: cannot read session spec {spec_file}: {exc}", file=sys.stderr)
        return EXEC_FAILED
    finally:
        try:
            os.unlink(spec_file)
        except OSError:
            pass
    # Python ignores SIGPIPE (and SIGXFSZ) at startup, and an ignored signal stays
    # ignored across exec: an agent writing into a closed pipe would get EPIPE forever.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT,
                signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.chdir(cwd)
        os.execvpe(argv[0], argv, env)  # searches env's PATH, as a shell would
    except (OSError, ValueError) as exc:
        print(f"gastown: cannot run {argv[0]}: {describe(exc)}", file=sys.stderr)
    return EXEC_FAILED


def main(args: list[str]) -> int:
    if args == ["spawn"]:
        return _spawn()
    if len(args) == 2 and args[0] == "exec":
        return _exec(args[1])
    print("usage: session_launcher spawn | exec SPEC_FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    status = main(sys.argv[1:])
    # Exit without running atexit hooks or finalisers: nothing here may wait for the agent.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
