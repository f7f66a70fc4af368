"""The few lines that run between a caller and its agent, so the agent is no one's child.

Layer: adapters (processes), below :mod:`.sessions`, its only user.

Two modes, both used only by :mod:`gastown.roles.adapters.sessions`:

``spawn`` (process backend), run as ``python -m gastown.roles.adapters.session_launcher spawn``
    Reads ``{"argv", "cwd", "env", "log_path"}`` as JSON on stdin, starts the agent in
    its own session and process group (stdin ``/dev/null``, stdout and stderr appended
    to ``log_path``), writes ``{"pid", "start_time"}`` (or ``{"error"}``) as one JSON
    line on stdout and exits at once without waiting. The caller waits only for this
    launcher; the agent is reparented to init (or the nearest subreaper), so the caller
    never holds a zombie and never needs ``waitpid(-1)``. The start time is read here,
    while the agent is still our unreaped child, so even an agent that exits at once
    has one.

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

import json
import os
import signal
import subprocess
import sys

#: Exit status of ``exec`` mode when the agent cannot be run, as a shell would use.
EXEC_FAILED = 127


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


def _describe(exc: Exception) -> str:
    """``No such file or directory: 'x'`` without the ``[Errno 2]`` noise."""
    if not isinstance(exc, OSError):  # ValueError: a NUL byte, or '=' in a variable name
        return str(exc)
    what = exc.strerror or type(exc).__name__
    return f"{what}: {exc.filename!r}" if exc.filename is not None else what


def _spawn() -> int:
    """``spawn`` mode; returns the launcher's exit status (0: started, 1: not)."""
    try:
        raw = json.loads(sys.stdin.read())
        argv, cwd, env = _spec_fields(raw)
        log_path = raw["log_path"]
        if not isinstance(log_path, str):
            raise ValueError("log_path must be a string")
    except (ValueError, KeyError) as exc:
        return _report({"error": f"bad launcher request: {exc}"})

    # Dispositions set to SIG_IGN and the signal mask survive exec; the caller (a role
    # process) may have either, and an agent that ignores SIGTERM only dies by SIGKILL.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())

    from .processes import process_start_time

    try:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
            agent = subprocess.Popen(argv, cwd=cwd, env=env, stdin=devnull, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
    except (OSError, ValueError) as exc:  # the child's exec failure comes back as OSError
        return _report({"error": _describe(exc)})
    start_time = process_start_time(agent.pid)  # unreaped child: always readable
    return _report({"pid": agent.pid, "start_time": start_time})


def _report(result: dict[str, object]) -> int:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 1 if "error" in result else 0


def _exec(spec_file: str) -> int:
    """``exec`` mode: becomes the agent, or returns EXEC_FAILED after saying why."""
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
        print(f"gastown: cannot run {argv[0]}: {_describe(exc)}", file=sys.stderr)
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
