"""Running one git command: its environment, lock-contention retries, its error.

Layer: a roles adapter, below :mod:`.git` (which names each operation in the domain's
words and re-exports :func:`run_git`). Runs git through ``sh`` (``_tty_out=False``) and
never prompts: credentials come from the user's git setup or the command fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from ..core.errors import GitError

#: Git's own lock files; another git process holding one is contention, not failure.
_LOCK_CONTENTION: Final = ("index.lock", "config.lock", ".lock': File exists",
                           "Unable to create", "cannot lock ref")
_LOCK_RETRIES: Final = 8

#: Generous: a clone of a large repository over a slow link takes minutes.
CLONE_TIMEOUT: Final = 3600.0
#: For operations that talk to a remote (fetch, push, ls-remote).
NETWORK_TIMEOUT: Final = 600.0


def _git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_SSH_COMMAND": env.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"),
        "LC_ALL": "C",
    })
    if extra:
        env.update(extra)
    return env


def run_git(args: list[str], *, cwd: Path | None, op: str,
            timeout: float | None = None, env: Mapping[str, str] | None = None,
            where: str | None = None) -> str:
    """Run ``git *args`` and return its stdout; raise :class:`GitError` on failure.

    Lock contention (``index.lock``, ``config.lock``) is retried with a short back-off.
    Pass ``timeout`` only for operations that talk to a remote: ``sh`` watches a timeout
    with a 0.1 s polling thread, which turns a 4 ms local command into a 104 ms one
    (measured, sh 2.4).
    ``where`` names the repository in error messages (default: ``cwd``).
    """
    import sh

    repo = where or (str(cwd) if cwd is not None else ".")
    delay = 0.05
    for attempt in range(_LOCK_RETRIES + 1):
        try:
            options: dict[str, Any] = {"_timeout": timeout} if timeout else {}
            out = sh.git(*args, _cwd=str(cwd) if cwd is not None else None,
                         _env=_git_env(env), _tty_out=False, _in="", _encoding="utf-8",
                         _decode_errors="replace", **options)
            return str(out)
        except sh.ErrorReturnCode as exc:
            stderr = exc.stderr.decode("utf-8", "replace")
            if attempt < _LOCK_RETRIES and any(s in stderr for s in _LOCK_CONTENTION):
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            raise GitError(op, repo, stderr) from None
        except sh.TimeoutException:
            raise GitError(op, repo, f"timed out after {timeout:g}s") from None
        except sh.CommandNotFound:
            raise GitError(op, repo, "git is not installed (not found on PATH)") from None
    raise AssertionError("unreachable")
