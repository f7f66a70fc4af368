"""Crew work into the merge queue: ``gastown done`` in a crew workspace, and after the merge.

Layer: operations, used by ``gastown done`` (the CLI) and the witness's role loop.

A crew workspace (``<rig>/crew/<name>`` on ``crew/<name>``, or a cross-rig worktree
``<rig>/crew/<home>-<name>``) is a person's long-lived checkout. ``done`` there submits
its branch as a merge request of kind ``crew`` (the MR's ``polecat`` field names the
workspace), gated and landed by the refinery like a polecat's. Nothing is nuked for it:
after the merge the witness brings the workspace up to date instead, by rebasing its
branch onto the merged default branch, which drops the commits that landed (patch
equivalence) and so ends on the default branch. That happens only when the tree is
clean and every commit on the branch landed; otherwise the workspace is left as it is,
and the ``crew_updated`` event says why. Synchronous: trio callers use a worker thread.
"""

from __future__ import annotations

from pathlib import Path

from ..adapters import git
from ..adapters.store import MergeRequest, Store
from ..adapters.town import Town
from ..core.errors import GastownError, NotFound, Refused
from ..core.names import validate_name
from .crew import crew_branch


def locate_crew(town: Town, cwd: Path) -> tuple[str, str] | None:
    """The (rig, workspace folder) of the crew workspace containing ``cwd``, or None."""
    try:
        parts = cwd.resolve().relative_to(town.root.resolve()).parts
    except ValueError:
        return None
    if len(parts) >= 3 and parts[1] == "crew" and not parts[2].startswith("."):
        return parts[0], parts[2]
    return None


def submit_crew(town: Town, store: Store, rig: str, name: str, *,
                bead: str | None = None) -> MergeRequest:
    """Queue crew workspace ``<rig>/crew/<name>``'s branch for the refinery.

    Refuses (one line, with what to do) a dirty tree, a branch with nothing ahead of the
    default branch, a workspace on another branch, and a branch already queued.
    """
    validate_name("rig", rig)
    validate_name("crew", name)
    worktree = town.crew_dir(rig) / name
    if not worktree.is_dir():
        raise NotFound(f"no crew workspace {rig}/{name} at {worktree}")
    branch = crew_branch(name)
    current = git.current_branch(worktree)
    if current != branch:
        raise Refused(f"crew workspace {rig}/{name} is on {current or 'a detached HEAD'}, "
                      f"not {branch}; switch back to {branch} (git switch {branch}) to submit")
    default = store.rig(rig).default_branch
    dirty = git.dirty_files(worktree)
    if dirty:
        raise Refused(f"the workspace has {len(dirty)} uncommitted change(s) "
                      f"({dirty[0].strip()}{', ...' if len(dirty) > 1 else ''}); "
                      "commit or discard them, then run 'gastown done' again")
    if git.commits_ahead(worktree, default, "HEAD") == 0:
        raise Refused(f"branch {branch} has no commits ahead of {default}: nothing to merge; "
                      "commit your work first")
    head = git.head_commit(worktree)
    base = git.head_commit(worktree, default)
    subject = git.run_git(["log", "-1", "--format=%s", head], cwd=worktree, op="log").strip()
    return store.record_crew_merge_request(
        rig, name, branch=branch, head=head, base=base, bead=bead,
        title=f"crew {name}: {subject}"[:200], prefix=store.rig(rig).prefix)


def update_crew_after_merge(town: Town, store: Store, rig: str, name: str) -> str:
    """Bring a crew workspace whose MR merged up to date; returns what happened (one line).

    Its branch is rebased onto the default branch when the tree is clean and every
    commit on the branch landed (so nothing of the person's can be lost: a commit made
    meanwhile is replayed, and a conflict aborts the rebase). Otherwise it is left as it
    is, and the line says why.
    """
    worktree = town.crew_dir(rig) / name
    if not worktree.is_dir():
        return f"crew workspace {rig}/{name} is gone; nothing to update"
    default = store.rig(rig).default_branch
    try:
        dirty = git.dirty_files(worktree)
        if dirty:
            return f"left as it is: {len(dirty)} uncommitted change(s)"
        if git.current_branch(worktree) != crew_branch(name):
            return f"left as it is: not on {crew_branch(name)}"
        unlanded = git.unmerged_commits(worktree, default, "HEAD")
        if unlanded:
            return f"left as it is: {len(unlanded)} commit(s) not on {default} yet"
        try:
            git.run_git(["rebase", "-q", default], cwd=worktree, op="rebase")
        except GastownError as exc:
            _abort_rebase(worktree)
            return f"left as it is: rebase onto {default} failed ({exc.message})"
        return f"updated to {default} at {git.head_commit(worktree)[:10]}"
    except GastownError as exc:
        return f"left as it is: {exc.message}"


def _abort_rebase(worktree: Path) -> None:
    try:
        git.run_git(["rebase", "--abort"], cwd=worktree, op="rebase --abort")
    except GastownError:
        pass  # there was no rebase in progress
