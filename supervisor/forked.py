"""What a child forked without exec does to become a process of its own, and how it ends.

Layer: supervisor, the top of the town: used by ``up``'s supervisor
(:mod:`gastown.supervisor.cli._supervisor_start`) and the first CLI server it forks
(:mod:`gastown.supervisor.cli_server_fork`).

A fork keeps the parent's session, terminal, standard streams, working directory and
signal handlers, and ``ps`` shows the parent's command line; an exec'd child would
have started clean. :func:`detach` gives the child what exec and
``start_new_session=True`` would have given it. :func:`run_then_exit` runs its work and
leaves through ``os._exit``, so that nothing of the parent's (``atexit`` handlers,
buffered output, a ``finally`` further up the parent's stack) runs a second time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


def detach(out: int, cwd: Path, argv: list[str]) -> None:
    """Own session; stdin from ``/dev/null``; stdout and stderr to ``out`` (closed here);
    ``cwd``; default signal handlers; ``sys.argv`` and the process title ``argv``."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.chdir(cwd)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = list(argv)
    with contextlib.suppress(ImportError):
        import setproctitle

        setproctitle.setproctitle(" ".join(argv))


def run_then_exit(work: Callable[[], int]) -> NoReturn:
    """Run ``work`` and exit with its status (a traceback on stderr and 1 if it raised)."""
    code = 1
    try:
        code = work()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
