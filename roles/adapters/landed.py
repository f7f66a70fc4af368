"""Has this work landed? The one answer for polecats, crew, the doctor and the refinery.

Layer: an adapter over git (:mod:`.git`); it decides nothing beyond the verdict.

Two parts. The pure part takes the facts — uncommitted files in a worktree, a folder that
is no git worktree, a detached HEAD, the commits whose patches are not on the local
default branch and not on the remote's (``origin/<default>``) — and gives the verdict and
the one-line phrases a refusal prints (each command keeps its own wording). The git part,
:func:`gather`, collects those facts from a clone and, optionally, a worktree of it.

"Landed" is by patch (``git cherry``): a commit the refinery rebased or someone
cherry-picked counts as landed. A commit counts as landed when its patch is on the local
default branch *or* on the remote-tracking one (crew may push to the remote directly;
the clone's local branch only sees that at the refinery's next fetch). A detached HEAD's
commits are checked too: they die with the worktree, whereas a branch survives it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from ..core.errors import GitError
from . import git

# -- the verdict (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What git says about some work; see :func:`gather`."""

    #: Uncommitted files (untracked included) in the worktree.
    dirty: int = 0
    #: The worktree's folder exists but holds no git worktree (stray files).
    stray: bool = False
    #: The worktree's HEAD is detached (its commits are counted in the sets below).
    detached: bool = False
    #: Commits whose patch is not on the local default branch.
    not_on_local: frozenset[str] = frozenset()
    #: Commits whose patch is not on ``origin/<default>``; None when not consulted (the
    #: clone has no such ref, or every commit is already on the local branch).
    not_on_remote: frozenset[str] | None = None
    #: Refs asked about that name no commit (a deleted branch, an empty MR head).
    missing: tuple[str, ...] = ()
    #: With ``at_worktree_head``: the commit the worktree's branch was checked at.
    branch_tip: str | None = None

    @property
    def unlanded(self) -> frozenset[str]:
        """Commits whose patch is on neither the local nor the remote default branch."""
        if self.not_on_remote is None:
            return self.not_on_local
        return self.not_on_local & self.not_on_remote

    @property
    def landed(self) -> bool:
        """Nothing would be lost: no uncommitted or stray files, no unlanded commit.

        A missing ref holds nothing, so it loses nothing.
        """
        return not (self.dirty or self.stray or self.unlanded)

    @property
    def landed_on(self) -> Literal["local", "remote"] | None:
        """Which one default branch holds every commit asked about (local first), or None.

        A missing ref cannot be shown to have landed: then None.
        """
        if self.missing:
            return None
        if not self.not_on_local:
            return "local"
        if self.not_on_remote is not None and not self.not_on_remote:
            return "remote"
        return None


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


_STRAY: Final = "no git worktree in its folder (stray files)"


def nuke_problems(facts: Facts, branch: str, default_branch: str) -> list[str]:
    """What a polecat nuke would destroy, one phrase each (``gastown polecat nuke``)."""
    problems = [_STRAY] if facts.stray else []
    if facts.dirty:
        problems.append(f"{facts.dirty} uncommitted change(s)")
    if facts.unlanded:
        problems.append(f"{len(facts.unlanded)} commit(s) on {branch} not on {default_branch}")
    return problems


def removal_problems(facts: Facts, default_branch: str) -> list[str]:
    """What removing a crew worktree would lose, one phrase each."""
    problems = [_STRAY] if facts.stray else []
    if facts.dirty:
        problems.append(plural(facts.dirty, "uncommitted file"))
    if facts.unlanded:
        problems.append(f"{plural(len(facts.unlanded), 'commit')} not on {default_branch}")
    return problems


def kept_problems(facts: Facts, on: str) -> list[str]:
    """Why the doctor keeps a worktree (``kept: has ...``), one phrase each."""
    problems = ["no git worktree in its folder"] if facts.stray else []
    if facts.dirty:
        problems.append(plural(facts.dirty, "uncommitted change"))
    if facts.unlanded:
        problems.append(f"{plural(len(facts.unlanded), 'unmerged commit')} on {on}")
    return problems


# -- the facts (git) ----------------------------------------------------------------------


def gather(clone: Path, default_branch: str, refs: Iterable[str | None] = (), *,
           worktree: Path | None = None, remote: str = "origin",
           at_worktree_head: bool = False) -> Facts:
    """The facts about ``refs`` (and ``worktree``, when given) against ``default_branch``.

    ``refs`` are branches or commits of ``clone``; one that does not resolve is listed
    in ``missing``. The worktree, when its folder exists, adds its uncommitted files and,
    when its HEAD is detached, that HEAD's commits. The remote-tracking branch is only
    consulted for commits that are not on the local one. Raises :class:`GitError` when
    git cannot answer (a corrupt worktree, no local ``default_branch``).

    With ``at_worktree_head``, a ref naming the branch the worktree is on is checked at
    the commit the worktree's status reported, not wherever the ref is a moment later;
    that commit is :attr:`Facts.branch_tip`, for a nuke's compare-and-delete
    (:func:`.git.delete_branch_at`) to delete exactly what was checked.
    """
    heads = [ref for ref in refs if ref]
    missing = ["" for ref in refs if not ref]
    dirty, stray, detached, tip = 0, False, False, None
    if worktree is not None and worktree.exists():
        if not (worktree / ".git").exists():
            stray = True
        else:
            status = git.worktree_status(worktree)
            dirty = len(status.dirty)
            if status.branch is None and status.head is not None:
                detached = True
                heads.append(status.head)
            elif at_worktree_head and f"refs/heads/{status.branch}" in heads and status.head:
                heads[heads.index(f"refs/heads/{status.branch}")] = tip = status.head
    not_on_local = _not_on(clone, f"refs/heads/{default_branch}", heads, missing)
    not_on_remote: frozenset[str] | None = None
    tracking = f"refs/remotes/{remote}/{default_branch}"
    if not_on_local and git.rev(clone, tracking) is not None:
        not_on_remote = _not_on(clone, tracking, heads)
    return Facts(dirty=dirty, stray=stray, detached=detached, not_on_local=not_on_local,
                 not_on_remote=not_on_remote, missing=tuple(missing), branch_tip=tip)


def _not_on(clone: Path, base: str, heads: list[str],
            missing: list[str] | None = None) -> frozenset[str]:
    """The commits of ``heads`` whose patch is not on ``base``. With ``missing``, a head
    that names no commit moves from ``heads`` to it: asked of git only when ``cherry``
    failed, so that a nuke's check costs one command per ref, not two."""
    found: set[str] = set()
    for head in list(heads):
        try:
            found.update(git.unmerged_commits(clone, base, head))
        except GitError:
            if missing is None or git.rev(clone, head) is not None:
                raise
            heads.remove(head)
            missing.append(head)
    return frozenset(found)
