"""Running one git command: its environment, lock-contention retries, its error.

Layer: a roles adapter, below :mod:`.git` (which names each operation in the domain's
words and re-exports :func:`run_git`). Runs git as a plain subprocess (stdin empty, no
terminal) and never prompts: credentials come from the user's git setup or the command
fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from ..core.errors import GitError

#: Git's own lock files; another git process holding one is contention, not failure.
_LOCK_CONTENTION: Final = ("index.lock", "config.lock", ".lock': File exists",
                           "Unable to create", "cannot lock ref")
_LOCK_RETRIES: Final = 8
#: A compare-and-set on a ref that found another value (``update-ref REF NEW OLD``, ``-d
#: REF OLD``), or no ref: git words it "cannot lock ref", but it is an answer, not a
#: lock another process holds, and asking again gives the same answer.
REF_MISMATCH: Final = ("but expected", "unable to resolve reference")


def _transient(err: str) -> bool:
    """Whether git failed on another git process's work in progress: a lock it holds, or
    a linked worktree it is still creating (``git worktree add`` makes the admin folder
    ``.git/worktrees/<name>`` before its ``commondir``: a ``checkout`` in the main tree
    that reads every worktree's files then fails with "failed to read
    .git/worktrees/<name>/commondir", measured with 200 polecats spawned while merging)."""
    if any(s in err for s in REF_MISMATCH):
        return False
    return any(s in err for s in _LOCK_CONTENTION) or (
        "failed to read" in err and "worktrees/" in err)

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
            where: str | None = None, read_only: bool = False,
            report_in_error: bool = False) -> str:
    """Run ``git *args`` and return its stdout; raise :class:`GitError` on failure.

    Lock contention (``index.lock``, ``config.lock``) and a worktree another process is
    still creating are retried with a short back-off (:func:`_transient`).
    Pass ``timeout`` for operations that talk to a remote: at the timeout, git and what it
    started (ssh, a remote helper: its own process group) are killed. A plain subprocess:
    the ``sh`` library used before cost ~7 ms per call, and its timeout watcher, a 0.1 s
    polling thread, turned a 4 ms local command into a 104 ms one (measured, sh 2.4).
    ``where`` names the repository in error messages (default: ``cwd``). A ``read_only``
    command (it changes nothing a rerun would trip on) that another process killed is run
    once more: its death says nothing about the repository. ``report_in_error`` puts
    stdout before stderr in a failure's :class:`GitError` (``push --porcelain`` writes
    its per-ref report there, the rejections included).

    Git runs in a process group of its own (with a timeout, a session of its own): the
    supervisor stops a role by signalling the role's whole group, and a git killed by
    that signal fails without a word, which the role would take for a fact about the
    repository (seen: a mayor stopped by ``down`` during its recovery escalated a polecat
    because the ``git status`` of its worktree "failed"). Out of the group, git finishes
    and the stopping role decides what its result means.
    """
    repo = where or (str(cwd) if cwd is not None else ".")
    delay = 0.05
    killed_once = False
    for attempt in range(_LOCK_RETRIES + 1):
        code, out, err = _run(["git", *args], cwd=cwd, env=_git_env(env), timeout=timeout,
                              op=op, repo=repo)
        if code == 0:
            return out
        if (read_only and code < 0 and not err.strip() and not killed_once
                and attempt < _LOCK_RETRIES):
            killed_once = True  # seen: a recovery's `git status` killed by a SIGTERM
            continue
        if attempt < _LOCK_RETRIES and _transient(err):
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        if report_in_error:
            err = out + err
        raise GitError(op, repo, err if err.strip() else _silent_failure(code))
    raise AssertionError("unreachable")


def _silent_failure(code: int) -> str:
    """What to say of a git that failed without a word: its exit status, or the signal
    that killed it (a git killed by another process prints nothing)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}, no error output"
    return f"exit status {code}, no error output"


def _run(argv: list[str], *, cwd: Path | None, env: dict[str, str], timeout: float | None,
         op: str, repo: str) -> tuple[int, str, str]:
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=timeout is not None,
                                process_group=None if timeout is not None else 0)
    except FileNotFoundError:
        if cwd is not None and not Path(cwd).is_dir():
            raise GitError(op, repo, f"{cwd}: no such directory") from None
        raise GitError(op, repo, "git is not installed (not found on PATH)") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise GitError(op, repo, f"timed out after {timeout:g}s") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return (proc.returncode, out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"))
