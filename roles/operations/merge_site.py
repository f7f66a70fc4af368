"""Where a rig's merge work happens: the refinery's clone, its store and its queue state.

Its one job: hold what the merge operations (:mod:`.merging`, :mod:`.landing`) share —
the rig, the refinery's clone, the store, and the
queue's state the refinery reports (the step in progress, the counters, the mirrors of
the rig's ``mq_paused`` and unpushed work) — and run blocking git calls off the trio
thread.

Layer: operations; it decides nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, ParamSpec, TypedDict, TypeVar

import trio

from ..adapters import git, log
from ..adapters.async_store import AsyncStore
from ..adapters.town import Town
from ..core.config import RigConfig
from ..core.errors import GitError

_log = log.get_logger()

P = ParamSpec("P")
R = TypeVar("R")


async def off_thread(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run the blocking ``fn(*args, **kwargs)`` (git, mostly) in a worker thread."""
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


async def commit_of(site: MergeSite, ref: str) -> str:
    """The commit ``ref`` names in the site's clone; :class:`GitError` when it names none."""
    commit = await off_thread(git.rev, site.clone, ref)
    if commit is None:
        raise GitError("rev-parse", str(site.clone), f"no commit named {ref}")
    return commit


def short(commit: str | None) -> str:
    return (commit or "")[:10]


class MergeStep(TypedDict, total=False):
    """What the refinery is doing now, as its ``status`` shows it (empty between batches)."""

    mrs: list[str]
    step: str
    mr: str
    gate: str
    candidate: str


@dataclass
class QueueState:
    """The refinery's own view of its queue: reported by ``status``, kept across batches."""

    current: MergeStep = field(default_factory=lambda: MergeStep())
    merged: int = 0
    rejected: int = 0
    #: Mirrors of the rig's row: why the queue is stopped, whether work is unpushed.
    paused: str | None = None
    unpushed: bool = False

    def status(self) -> QueueStatus:
        """The refinery's fields in its role's ``status`` answer."""
        return {"merged": self.merged, "rejected": self.rejected, "current": self.current,
                "paused": self.paused, "unpushed": self.unpushed}


class QueueStatus(TypedDict):
    """:meth:`QueueState.status`."""

    merged: int
    rejected: int
    current: MergeStep
    paused: str | None
    unpushed: bool


@dataclass
class MergeSite:
    """One rig's merge work: its clone, its store, its queue state."""

    town: Town
    rig: str
    #: The refinery's role name, for fault points.
    role: str
    clone: Path
    store: AsyncStore
    state: QueueState
    #: The checkout is known pristine on the default branch: cleaned (by
    #: :func:`clean_checkout`) and not touched since. False at start, so recovery cleans.
    checkout_clean: bool = False
    #: The checkout is known pristine and detached at this commit: a candidate just
    #: rebased into a pristine tree, which its gates can use without a checkout and a
    #: clean. Cleared by whatever else touches the tree (a gate, a clean).
    candidate_ready: str | None = None
    #: Whether the clone has an ``origin``, asked once (:func:`has_remote`).
    remote: bool | None = None
    #: Batches since git's maintenance check last ran here (:func:`upkeep`).
    batches_since_upkeep: int = 0
    #: When the remote was last fetched (``time.monotonic()``), None: fetch next time
    #: (at start, and after a push found that the remote had moved).
    fetched_at: float | None = None
    #: Seconds a chain's step takes (rebase one MR, gate it), a moving average of the
    #: last ones; None until one ran. It sizes the next chain (``land_within``).
    step_seconds: float | None = None

    def note_step(self, seconds: float) -> None:
        """A chain's step took ``seconds``: half the average, the other half the past."""
        last = self.step_seconds
        self.step_seconds = seconds if last is None else (last + seconds) / 2

    def config(self) -> RigConfig:
        return self.town.rig_config(self.rig)

    def gate_tag(self) -> dict[str, str]:
        """Environment that marks this rig's gate processes, so a restart can find them."""
        return {"GASTOWN_GATE_OF": f"{self.town.root}:{self.rig}"}


async def has_remote(site: MergeSite) -> bool:
    """Whether the clone has an ``origin`` to push to: asked of git once per refinery (the
    remote is set up by ``rig add``; a remote added by hand is seen after a restart or a
    reload), not twice per batch."""
    if site.remote is None:
        site.remote = await off_thread(git.has_remote, site.clone)
    return site.remote


#: While batches follow one another, the remote is fetched at most this often: between
#: fetches, the remote-tracking branch the last push moved is the remote's branch unless
#: someone else pushed meanwhile, which that batch's push finds out (rejected, not a
#: fast-forward: fetched and rebuilt on the remote's branch, see ``landing.land``).
FETCH_EVERY: Final = 10.0


async def fetch_remote(site: MergeSite, *, force: bool = False) -> None:
    """Fetch the remote unless it was fetched less than :data:`FETCH_EVERY` ago (and not
    ``force``): a busy queue asked the remote twice per merge (a fetch and the push),
    and the fetch was three processes on its critical path."""
    now = time.monotonic()
    if not force and site.fetched_at is not None and now - site.fetched_at < FETCH_EVERY:
        return
    site.fetched_at = None
    await off_thread(git.fetch, site.clone)
    site.fetched_at = now


#: During a long burst of batches, git's maintenance check runs after this many.
UPKEEP_EVERY: Final = 20


async def own_maintenance(site: MergeSite) -> None:
    """At the refinery's start: commands in the clone and its worktrees no longer start
    git's maintenance themselves (:func:`git.own_maintenance`); :func:`upkeep` does."""
    if await off_thread(git.own_maintenance, site.clone):
        _log.info("git_maintenance_taken_over", clone=str(site.clone))


async def upkeep(site: MergeSite, *, idle: bool) -> None:
    """After a batch: git's maintenance check (gc past its thresholds) when the queue is
    ``idle``, else every :data:`UPKEEP_EVERY` batches. A failure is logged, never fatal
    to the queue."""
    site.batches_since_upkeep += 1
    if not idle and site.batches_since_upkeep < UPKEEP_EVERY:
        return
    site.batches_since_upkeep = 0
    try:
        await off_thread(git.maintain, site.clone)
    except GitError as exc:
        _log.warning("git_maintenance_failed", error=exc.message)


async def clean_checkout(site: MergeSite, branch: str, *, force: bool = False,
                         thorough: bool = False) -> None:
    """Leave the checkout pristine on ``branch`` (:func:`git.clean_checkout`, ``thorough``
    at the refinery's start), unless it is known to be already (``site.checkout_clean``,
    and not ``force``): one clean per batch.

    Whatever touches the tree (a candidate, a gate) clears ``site.checkout_clean`` first.
    """
    if site.checkout_clean and not force:
        return
    site.checkout_clean = False
    site.candidate_ready = None
    await off_thread(git.clean_checkout, site.clone, branch, thorough=thorough)
    site.checkout_clean = True
