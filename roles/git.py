"""Git, one function per operation, named in the domain's words.

Runs git through ``sh`` (``_tty_out=False``; from trio, call these through
``trio.to_thread.run_sync``). Makes no decisions beyond retrying lock contention:
a failure becomes :class:`GitError` carrying the operation, repository and stderr tail.
Never prompts: credentials come from the user's git setup or the command fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from gastown.roles.errors import GitError

#: Git's own lock files; another git process holding one is contention, not failure.
_LOCK_CONTENTION: Final = ("index.lock", "config.lock", ".lock': File exists",
                           "Unable to create", "cannot lock ref")
_LOCK_RETRIES: Final = 8

#: Generous: a clone of a large repository over a slow link takes minutes.
CLONE_TIMEOUT: Final = 3600.0
DEFAULT_TIMEOUT: Final = 300.0


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
            timeout: float = DEFAULT_TIMEOUT, env: Mapping[str, str] | None = None,
            where: str | None = None) -> str:
    """Run ``git *args`` and return its stdout; raise :class:`GitError` on failure.

    Lock contention (``index.lock``, ``config.lock``) is retried with a short back-off.
    ``where`` names the repository in error messages (default: ``cwd``).
    """
    import sh

    repo = where or (str(cwd) if cwd is not None else ".")
    delay = 0.05
    for attempt in range(_LOCK_RETRIES + 1):
        try:
            out = sh.git(*args, _cwd=str(cwd) if cwd is not None else None,
                         _env=_git_env(env), _tty_out=False, _timeout=timeout,
                         _in="", _encoding="utf-8", _decode_errors="replace")
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


def clone(repo: str, dest: Path, *, branch: str | None = None) -> None:
    """Clone ``repo`` (URL or local path) into ``dest``, checking out ``branch`` if given."""
    args = ["clone", "--quiet", "--no-recurse-submodules"]
    if branch is not None:
        args += ["--branch", branch]
    run_git([*args, "--", repo, str(dest)], cwd=None, op="clone", timeout=CLONE_TIMEOUT,
            where=repo)


def remote_default_branch(clone_dir: Path, remote: str = "origin") -> str | None:
    """The branch the remote's HEAD points at (``main`` for ``origin/main``), or None."""
    try:
        ref = run_git(["symbolic-ref", "--quiet", "--short", f"refs/remotes/{remote}/HEAD"],
                      cwd=clone_dir, op="symbolic-ref").strip()
    except GitError:
        return None
    prefix = f"{remote}/"
    return ref[len(prefix):] if ref.startswith(prefix) else ref or None


def current_branch(repo_dir: Path) -> str | None:
    """The branch checked out in ``repo_dir``, or None when HEAD is detached."""
    try:
        return run_git(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd=repo_dir,
                       op="symbolic-ref").strip() or None
    except GitError:
        return None


def has_commits(repo_dir: Path) -> bool:
    """Whether HEAD points at a commit (an empty repository has none)."""
    try:
        run_git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], cwd=repo_dir,
                op="rev-parse")
    except GitError:
        return False
    return True


def switch_to(repo_dir: Path, branch: str) -> None:
    """Check out ``branch`` (creating it from ``origin/<branch>`` when only that exists)."""
    run_git(["switch", "--quiet", branch], cwd=repo_dir, op="switch")
