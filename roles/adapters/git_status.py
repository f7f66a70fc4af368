"""What a worktree's ``git status`` says: its uncommitted changes, its branch, its HEAD.

Layer: a roles adapter beside :mod:`.git` (which re-exports these): the questions a nuke,
``done`` and the doctor ask of a worktree before they touch it, answered with as few git
commands as possible (a merged polecat's nuke asks all of them at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..core.errors import GitError
from .git_command import run_git


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


def dirty_files(worktree: Path) -> list[str]:
    """``git status --porcelain`` lines (untracked files included); empty means clean."""
    out = run_git(["status", "--porcelain", "--untracked-files=all"], cwd=worktree,
                  op="status")
    return [line for line in out.splitlines() if line.strip()]


@dataclass(frozen=True)
class WorktreeStatus:
    """A worktree as one ``git status`` sees it."""

    #: One line per uncommitted change (untracked files included); empty means clean.
    dirty: list[str]
    #: The branch checked out, or None when HEAD is detached.
    branch: str | None
    #: The commit HEAD points at, or None before the first commit.
    head: str | None


def is_pristine(worktree: Path) -> bool:
    """Whether the tree is as its commit wrote it: no change, nothing untracked, nothing
    ignored either (what ``git clean -ffdx`` and a forced checkout would leave)."""
    out = run_git(["status", "--porcelain", "--ignored", "--untracked-files=normal"],
                  cwd=worktree, op="status")
    return not out.strip()


def worktree_status(worktree: Path) -> WorktreeStatus:
    """:func:`dirty_files`, :func:`current_branch` and the HEAD commit in one command
    (``status --porcelain=v2 --branch``) instead of three or four: a nuke asks them all."""
    out = run_git(["status", "--porcelain=v2", "--branch", "--untracked-files=all"],
                  cwd=worktree, op="status", read_only=True)
    dirty: list[str] = []
    branch: str | None = None
    head: str | None = None
    for line in out.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.removeprefix("# branch.oid ").strip()
            head = None if oid == "(initial)" else oid
        elif line.startswith("# branch.head "):
            name = line.removeprefix("# branch.head ").strip()
            branch = None if name == "(detached)" else name
        elif line.strip() and not line.startswith("# "):
            dirty.append(_short_entry(line))
    return WorktreeStatus(dirty=dirty, branch=branch, head=head)


#: Fields before the path in a ``status --porcelain=v2`` entry, by its first letter.
_V2_FIELDS: Final = {"1": 8, "2": 9, "u": 10}


def _short_entry(line: str) -> str:
    """A ``--porcelain=v2`` entry as ``--porcelain`` (v1) prints it: ``XY path``."""
    kind = line[:1]
    if kind in ("?", "!"):
        return f"{kind * 2} {line[2:]}"
    fields = _V2_FIELDS.get(kind)
    if fields is None:
        return line
    parts = line.split(" ", fields)
    xy = parts[1].replace(".", " ") if len(parts) > 1 else "  "
    return f"{xy} {parts[-1].split(chr(9))[0]}"
