"""Pushing a tested commit to the remote's branch, and telling how it went.

Layer: a roles adapter beside :mod:`.git` (which re-exports these), for the refinery's
landing: the one git command that changes the remote, and the reading of the remote's
answer (pushed, moved under us, or refused, with git's reason).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from ..core.errors import GitError
from .git_command import NETWORK_TIMEOUT, run_git

#: ``! [remote rejected] HEAD -> main (Working directory has unstaged changes)``
_REMOTE_REJECTED: Final = re.compile(r"\[remote rejected\][^(\n]*\(([^)\n]*)\)")


@dataclass(frozen=True)
class PushOutcome:
    """How a push of a commit to the remote's branch went.

    ``pushed``: the remote's branch is now that commit. ``moved``: rejected because the
    remote's branch moved (not a fast-forward): fetch and redo on it. ``refused``: the
    remote answered but would not take it, for ``reason`` (a working copy with the branch
    checked out, ``updateInstead`` on a dirty tree, a hook).
    """

    result: Literal["pushed", "moved", "refused"]
    reason: str = ""
    #: ``pushed`` and the remote's own report names the branch at the commit (its line of
    #: ``push --porcelain``); else the caller checks where the remote's branch is.
    confirmed: bool = field(default=False, compare=False)


def push_commit(repo: Path, commit: str, branch: str, remote: str = "origin") -> PushOutcome:
    """Push ``commit`` to ``refs/heads/<branch>`` on ``remote`` (fast-forward only).

    Nothing local moves: the caller fast-forwards its own branch after the remote took
    the commit, so a refused push never has to be undone. The explicit refspec matters
    (upstream bug G20: a bare push followed the tracking configuration somewhere else).
    An unreachable remote raises :class:`GitError` (op ``push``).
    """
    try:
        report = run_git(["push", "--porcelain", remote, f"{commit}:refs/heads/{branch}"],
                         cwd=repo, op="push", timeout=NETWORK_TIMEOUT, report_in_error=True)
    except GitError as exc:
        refused = _REMOTE_REJECTED.search(exc.stderr)
        if refused:
            return PushOutcome("refused", refused.group(1).strip())
        if "refusing to update checked out branch" in exc.stderr:
            return PushOutcome("refused", "branch is currently checked out")
        if "non-fast-forward" in exc.stderr or "fetch first" in exc.stderr or \
                "[rejected]" in exc.stderr:
            return PushOutcome("moved")
        raise
    # ``<flag>\t<from>:<to>\t<summary>``: " " fast-forward, "*" new, "=" already there.
    confirmed = any(line[:1] in (" ", "*", "=") and line[2:].split("\t")[0].endswith(
        f":refs/heads/{branch}") for line in report.splitlines() if line[1:2] == "\t")
    return PushOutcome("pushed", confirmed=confirmed)
