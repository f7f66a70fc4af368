"""Starting the supervisor: in this process (``up --foreground``) or detached (``up``).

Layer: cli, at the top of the town with the rest of ``supervisor``: what ``up`` runs
once it holds the start-up lock (:mod:`._lifecycle`).
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

from ...roles.adapters.town import Town

if TYPE_CHECKING:
    from ...roles.adapters.children import Lifeline
    from ..cli_server_fork import ForkedServer

#: How long ``up`` waits for the start-up lock, and for every role to report ready.
UP_TIMEOUT = 60.0


def start_daemon(town: Town, *, timeout: float, start_fd: int | None) -> dict[str, Any]:
    """Start a detached supervisor and wait on a pipe until it reports every role ready.

    The supervisor writes one JSON line to the pipe; EOF without a line means it died,
    and the tail of its output explains why. ``start_fd`` (the held start-up lock) is
    handed to the supervisor, which releases it once it holds the town; it is closed
    here in any case.

    The supervisor is this process, forked: it has already imported the configuration
    and the store and read the town (a fresh interpreter would do it all again, ~150 ms
    of CPU per ``up``), and this process is single-threaded and holds nothing open but
    the two descriptors it hands over. ``ps`` shows it as the ``up --foreground`` it
    runs, the command a service manager starts.
    """
    read_fd, write_fd = os.pipe()
    out_path = town.logs_dir / "supervisor.out"
    argv = ["-m", "gastown.supervisor", "--town", str(town.root), "up", "--foreground",
            "--ready-fd", str(write_fd)]
    if start_fd is not None:
        argv += ["--start-lock-fd", str(start_fd)]
    try:
        town.logs_dir.mkdir(exist_ok=True)
        out = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for stream in (sys.stdout, sys.stderr):  # nothing of ours printed twice
            stream.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the supervisor's coverage is the town's tests
            os.close(read_fd)
            _become_supervisor(town, argv, out, write_fd, start_fd)
        os.close(out)
    finally:
        os.close(write_fd)
        if start_fd is not None:
            os.close(start_fd)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                return {"ok": False, "error": f"roles not ready after {timeout:g}s; see "
                                              "'gastown status' and 'gastown logs'"}
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
    if not data.strip():
        tail = _tail(out_path)
        return {"ok": False, "error": "the supervisor exited during start-up" +
                (f": {tail}" if tail else "")}
    result: dict[str, Any] = json.loads(data)
    return result


def _become_supervisor(town: Town, argv: list[str], out: int, ready_fd: int,
                       start_fd: int | None) -> NoReturn:
    """In the forked child: detach (own session, stdin from /dev/null, output to
    ``supervisor.out``, the town as working directory, none of the caller's descriptors)
    and run the supervisor; never returns."""
    from ..forked import detach, run_then_exit

    def supervise() -> int:
        _close_inherited(keep={ready_fd, start_fd})
        detach(out, town.root, [sys.executable, *argv])
        return run_foreground(town, ready_fd, start_fd, fork_cli_server=True)

    run_then_exit(supervise)


def _close_inherited(keep: set[int | None]) -> None:
    """Close what this process inherited from whoever ran ``gastown up`` (the inheritable
    descriptors above stderr: Python opens its own close-on-exec): a daemon that kept, say,
    the write end of its caller's pipe would leave the caller waiting for EOF forever."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd in keep:
            continue
        try:
            if os.get_inheritable(fd):
                os.close(fd)
        except OSError:
            pass  # listdir's own descriptor, closed meanwhile


def _tail(path: Any) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_foreground(town: Town, ready_fd: int | None, start_fd: int | None, *,
                   fork_cli_server: bool = False) -> int:
    """Run the supervisor in this process until it stops; its exit status.

    With ``fork_cli_server`` (``up``'s detached supervisor, still single-threaded here),
    the town's first CLI server is forked from this process before trio starts
    (:mod:`gastown.supervisor.cli_server_fork`), not started afresh by the supervisor.
    """
    import trio

    from ...roles.adapters import log
    from ...roles.adapters.faults import fault_point
    from ...roles.adapters.town_lock import SupervisorRunning, hold_start_lock
    from ..supervisor import run_supervisor

    if start_fd is None:
        start_fd = hold_start_lock(town.runtime_dir, timeout=UP_TIMEOUT)
    else:
        os.set_inheritable(start_fd, False)  # no role may inherit it

    def release_start_lock() -> None:
        nonlocal start_fd
        if start_fd is not None:
            os.close(start_fd)
            start_fd = None

    config = town.config
    lifeline, server = _fork_first_cli_server(town, close=(ready_fd, start_fd)) \
        if fork_cli_server else (None, None)
    log.configure_logging(town.logs_dir, role="supervisor", level=config.logging.level,
                          console=ready_fd is None and sys.stderr.isatty(),
                          max_bytes=config.logging.max_bytes, backups=config.logging.backups)

    def report(outcome: dict[str, Any]) -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, (json.dumps(outcome) + "\n").encode())
                os.close(ready_fd)
            except OSError:
                pass
        elif outcome.get("ok"):
            print(f"town up: supervisor pid {os.getpid()}", flush=True)
        else:
            print(f"gastown: {outcome.get('error')}", file=sys.stderr, flush=True)

    try:
        fault_point("supervisor", "start")
        code = trio.run(run_supervisor, town, report, release_start_lock, lifeline, server)
    except SupervisorRunning as exc:
        report({"ok": False, "already": exc.pid, "error": exc.message})
        return 0 if ready_fd is not None else exc.exit_code
    finally:
        release_start_lock()
        if server is not None:
            server.discard()  # not adopted (the supervisor failed first): the child exits
        if lifeline is not None:
            lifeline.close()
    return code


def _fork_first_cli_server(town: Town, close: tuple[int | None, ...]
                           ) -> tuple[Lifeline | None, ForkedServer | None]:
    """The lifeline the supervisor will hold and the forked server on it; (None, None)
    when the server is switched off, (lifeline, None) when the fork failed (the
    supervisor then starts the server itself)."""
    from ...roles.adapters.children import open_lifeline
    from ..cli_server_fork import fork_cli_server
    from ..cli_server_runner import ENV_SWITCH
    from ..role_forks import ENV_SWITCH as ROLE_FORKS_SWITCH

    if os.environ.get(ENV_SWITCH) == "0":
        return None, None
    lifeline = open_lifeline()
    try:
        server = fork_cli_server(town.root, lifeline, os.environ, close=close,
                                 role_forks=os.environ.get(ROLE_FORKS_SWITCH) != "0")
    except OSError:
        return lifeline, None
    return lifeline, server
