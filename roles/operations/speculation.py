"""The merge queue's second checkout, where the next batch is gated ahead of time.

Its one job: hold what speculative gating (``merge_queue.speculative = true``) needs
outside :mod:`.merging` — the batch that is gated ahead (:class:`Ahead`), the result of
its run (:class:`Speculated`), and the second checkout it runs in: a detached git
worktree of the refinery's clone at ``<rig>/refinery/speculative``, created on first
use, cleaned before each use and removed by recovery (:func:`remove_checkout`), so a
refinery killed mid-speculation leaves nothing a restart trusts.

While batch k's gates run in the refinery's checkout, batch k+1 is stacked on top of
k's candidate here and its gates run too (:func:`.merging.speculate`). If k lands whole,
main is exactly the base k+1 was gated on, and its result stands (no second run). If k
fails, k+1's run is cancelled (its gates killed as a group) and k+1 is gated again on the
real base. A result is used only for the same MRs on the very base it was gated on.

Layer: operations, used by :mod:`.merging`, :mod:`.landing` (recovery) and the refinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..adapters import git, log
from ..adapters.store import MergeRequest
from .merge_site import MergeSite, off_thread

_log = log.get_logger()


@dataclass(frozen=True)
class Speculated:
    """A finished speculative run: ``mrs`` stacked on ``base`` gave ``candidate``, whose
    gates passed (``ok``) or failed (``failure``, ``tail``); ``tips`` are the prefixes
    built on the way, reusable on the same base."""

    mrs: tuple[str, ...]
    base: str
    candidate: str
    ok: bool
    failure: str
    tail: str
    tips: dict[tuple[str, ...], str]


@dataclass
class Ahead:
    """The next batch, already marked ``running``, gated ahead of the current one."""

    by_id: dict[str, MergeRequest]
    result: Speculated | None = None
    #: How many speculative runs were started, and how many were cancelled.
    started: int = field(default=0)
    discarded: int = field(default=0)

    @property
    def mrs(self) -> tuple[str, ...]:
        return tuple(self.by_id)


def checkout_path(site: MergeSite) -> Path:
    """Where the second checkout lives: beside the refinery's own."""
    return site.clone.parent / "speculative"


def _prepare(site: MergeSite, commit: str) -> Path:
    path = checkout_path(site)
    if (path / ".git").is_file():
        git.checkout_detached(path, commit)  # checkout --force, clean -ffdx
        return path
    with git.repo_lock(site.clone):
        git.remove_worktree(site.clone, path)  # a half-created one: start afresh
        git.run_git(["worktree", "add", "--quiet", "--detach", str(path), commit],
                    cwd=site.clone, op="worktree add", env={"GIT_LFS_SKIP_SMUDGE": "1"})
    return path


async def prepare_checkout(site: MergeSite, commit: str) -> Path:
    """The second checkout, pristine and detached at ``commit`` (created if missing)."""
    return await off_thread(_prepare, site, commit)


def _remove(site: MergeSite) -> None:
    path = checkout_path(site)
    with git.repo_lock(site.clone):
        if path.exists() or path.is_symlink():
            _log.info("speculative_checkout_removed", path=str(path))
        git.remove_worktree(site.clone, path)


async def remove_checkout(site: MergeSite) -> None:
    """Remove the second checkout, whatever state a killed refinery left it in."""
    await off_thread(_remove, site)
