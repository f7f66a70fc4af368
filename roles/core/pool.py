"""The warm worktree pool's decisions: what to fill, follow and trim, which tree a sling
takes, whether a tree may go back into the pool, and how pool entries are named.

Layer: roles core (pure: facts in, decisions out). The I/O is
:mod:`gastown.roles.operations.worktree_pool`'s, which gathers the facts (one
:class:`PoolTree` per ready tree, read from its git files) and carries the decisions out.

A *ready* tree is a folder ``<rig>/pool/<name>`` whose name does not start with ``.``:
a linked worktree of the rig's clone, detached, verified clean when it entered the pool.
A ``.dirty-<name>`` folder is a nuked polecat's tree waiting to be cleaned (by the
mayor's next pass). Folders ``.busy-<name>`` are trees some process is working on (filled,
followed or cleaned), each guarded by an ``flock`` on ``.busy-<name>.lock``; nobody else
touches them.
Names are a hexadecimal time stamp plus a random tail, so that they sort by the moment the
tree entered the pool: a sling takes the newest (its files are the warmest in the page
cache), and a pool trimmed keeps the newest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

#: The prefix of a folder (and, with :data:`LOCK_SUFFIX`, its lock file) in flight.
BUSY_PREFIX: Final = ".busy-"
#: The prefix of a recycled tree not cleaned yet.
DIRTY_PREFIX: Final = ".dirty-"
LOCK_SUFFIX: Final = ".lock"

#: Files in a worktree's own git directory that mean an operation was left half done.
IN_PROGRESS_STATE: Final = ("rebase-merge", "rebase-apply", "MERGE_HEAD",
                            "CHERRY_PICK_HEAD", "REVERT_HEAD", "BISECT_LOG")


@dataclass(frozen=True)
class PoolTree:
    """A ready tree as its files tell it: ``head`` is the detached commit, or None when
    HEAD names a branch or cannot be read (such a tree is not fit for the pool)."""

    name: str
    head: str | None


@dataclass(frozen=True)
class PoolPlan:
    """One tending pass: ``remove`` these trees, move ``follow`` to the tip, add ``fill``."""

    fill: int
    follow: tuple[str, ...]
    remove: tuple[str, ...]


def is_ready_name(name: str) -> bool:
    """Whether a pool folder entry is a ready tree (not in flight, not a lock file)."""
    return bool(name) and not name.startswith(".")


def busy_name(name: str) -> str:
    return f"{BUSY_PREFIX}{name}"


def dirty_name(name: str) -> str:
    return f"{DIRTY_PREFIX}{name}"


def lock_name(busy: str) -> str:
    return f"{busy}{LOCK_SUFFIX}"


def tree_name(time_ns: int, token: str) -> str:
    """A fresh entry name: sorts by ``time_ns`` (fixed width), ``token`` breaks ties."""
    return f"{time_ns:016x}-{token}"


def plan_pool(size: int, trees: Sequence[PoolTree], tip: str) -> PoolPlan:
    """What to do so that the pool holds ``size`` trees, all detached at ``tip``.

    Trees on a branch or with an unreadable HEAD are removed. Of the fit ones the pool
    keeps ``size``, those already at ``tip`` first, then the newest; the others are
    removed (the pool shrank). The kept trees not at ``tip`` follow it; what is missing
    is filled.
    """
    size = max(size, 0)
    unfit = [t.name for t in trees if t.head is None]
    newest_first = sorted((t for t in trees if t.head is not None), key=lambda t: t.name,
                          reverse=True)
    fit = sorted(newest_first, key=lambda t: t.head != tip)  # stable: newest first stays
    keep, surplus = fit[:size], fit[size:]
    return PoolPlan(fill=size - len(keep),
                    follow=tuple(sorted(t.name for t in keep if t.head != tip)),
                    remove=tuple(sorted(unfit + [t.name for t in surplus])))


def choose_take(trees: Sequence[PoolTree], tip: str | None) -> str | None:
    """The tree a sling takes: the newest one at ``tip``, else the newest fit one, or
    None when no tree is fit (the sling then adds its worktree as without a pool)."""
    fit = [t for t in trees if t.head is not None]
    if not fit:
        return None
    at_tip = [t for t in fit if t.head == tip]
    return max(t.name for t in (at_tip or fit))


def recycle_fits(size: int, pooled: int) -> bool:
    """Whether one more tree goes into a pool that holds ``pooled`` trees (ready ones,
    and for a nuked tree also the dirty ones waiting to be cleaned)."""
    return pooled < size


def clean_problems(status: Sequence[str], head: str | None, expected: str,
                   in_progress: Sequence[str]) -> list[str]:
    """Why a tree cleaned for the pool is not clean, one phrase each; empty when it is.

    ``status`` are the lines of ``git status --porcelain --ignored
    --untracked-files=all`` (ignored files count: nothing of the previous user may
    survive), ``head`` its detached HEAD (None when on a branch or unreadable),
    ``in_progress`` the :data:`IN_PROGRESS_STATE` files found in its git directory.
    """
    problems = []
    lines = [line for line in status if line.strip()]
    if lines:
        shown = ", ".join(line[3:] for line in lines[:3])
        problems.append(f"{len(lines)} file(s) left ({shown}{', ...' if len(lines) > 3 else ''})")
    if head is None:
        problems.append("HEAD is not detached")
    elif head != expected:
        problems.append(f"HEAD is {head[:10]}, not {expected[:10]}")
    if in_progress:
        problems.append(f"an operation in progress ({', '.join(in_progress)})")
    return problems
