"""``gastown done``: check a polecat's work, record its outcome and merge request.

Layer: operations. Run by the agent (the CLI), by the witness for an agent that committed
and stopped without ``done``, and by a spawn rollback that keeps committed work.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..adapters import git
from ..adapters.store import MergeRequest, Polecat, Store
from ..adapters.town import Town
from ..core.errors import NotFound, Refused, UsageError
from ..core.lifecycle import (
    Done,
    Outcome,
)
from ..core.names import validate_name
from .polecat_sessions import done_marker_path, session_output_tail, write_atomic


@dataclass(frozen=True)
class DoneResult:
    polecat: Polecat
    outcome: Outcome
    merge_request: MergeRequest | None


def locate_polecat(town: Town, env: Mapping[str, str], cwd: Path) -> tuple[str, str]:
    """The (rig, name) of the polecat ``gastown done`` runs in: from the environment, else
    from the cwd (``<town>/<rig>/polecats/<name>/...``)."""
    if env.get("GASTOWN_RIG") and env.get("GASTOWN_POLECAT"):
        return env["GASTOWN_RIG"], env["GASTOWN_POLECAT"]
    try:
        parts = cwd.resolve().relative_to(town.root.resolve()).parts
    except ValueError:
        parts = ()
    if len(parts) >= 3 and parts[1] == "polecats" and not parts[2].startswith("."):
        return parts[0], parts[2]
    raise UsageError("not inside a polecat worktree (run 'gastown done' in "
                     "<town>/<rig>/polecats/<name>, or set GASTOWN_RIG and GASTOWN_POLECAT)")


def record_done(town: Town, store: Store, rig: str, name: str, outcome: Outcome,
                reason: str | None = None, *, done_by: str = "agent") -> DoneResult:
    """``gastown done``: check the work, record the outcome (and MR), drop the marker.

    For ``completed`` it refuses a dirty tree and a branch with nothing ahead of the
    default branch, and records nothing then. The marker file is written after the
    store commit, so a witness that sees it always finds the MR. In an ``escalated``
    or ``rejected`` polecat (work a person fixed by hand) ``completed`` re-submits it: a
    new merge request. ``escalated`` keeps ``reason`` and the session's last lines.
    """
    validate_name("rig", rig)
    validate_name("polecat", name)
    polecat = store.polecat(rig, name)
    rig_config = town.rig_config(rig)
    worktree = Path(polecat.worktree)
    if not worktree.is_dir():
        raise NotFound(f"polecat {rig}/{name} has no worktree at {worktree}")
    status = git.worktree_status(worktree) if outcome == "completed" else None
    head = status.head if status is not None and status.head else git.head_commit(worktree)
    base = git.head_commit(worktree, rig_config.default_branch)
    kept = polecat.state in ("escalated", "rejected")
    if status is not None:
        dirty = status.dirty
        if dirty:
            raise Refused(f"the worktree has {len(dirty)} uncommitted change(s) "
                          f"({dirty[0].strip()}{', ...' if len(dirty) > 1 else ''}); "
                          "commit or discard them, then run 'gastown done' again")
        if git.commits_ahead(worktree, rig_config.default_branch, "HEAD") == 0:
            hint = (f"; commit the fix on {polecat.branch} and run 'gastown done' again, or "
                    f"drop it with 'gastown polecat nuke {rig}/{name} --force'") if kept else ""
            raise Refused(f"branch {polecat.branch} has no commits ahead of "
                          f"{rig_config.default_branch}: nothing to merge{hint}")
    tail = session_output_tail(town, polecat) if outcome == "escalated" else None
    extra = {"resubmitted": polecat.state} if kept else {}
    if kept and done_by == "agent":
        done_by = "human"  # work fixed by hand in a kept worktree
    mr = store.record_done(rig, name, Done(outcome, reason), head=head, base=base,
                           with_mr=outcome == "completed", output_tail=tail,
                           done_by=done_by, **extra)
    marker = {"outcome": outcome, "mr": mr.id if mr else None, "head": head}
    write_atomic(done_marker_path(town, rig, name), json.dumps(marker) + "\n")
    return DoneResult(store.polecat(rig, name), outcome, mr)
