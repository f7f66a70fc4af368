"""The suite's own invariant checks (tests/invariants.py) fire on what they exist to catch.

A real town and rig, a merge request recorded as merged in the real store, and main moved
by hand in the refinery's clone and its bare remote: the merged-patch check must name a
merged MR whose commit is not on main, and a patch on main twice, in either repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gastown.roles.adapters.store import open_store
from tests.conftest import Cli, git
from tests.invariants import check_invariants


def _merged_crew_mr(town: Path, clone: Path) -> str:
    """A commit on crew/x in the refinery's clone, recorded as a merged MR: its head."""
    base = git("rev-parse", "main", cwd=clone).strip()
    git("switch", "-q", "-c", "crew/x", cwd=clone)
    (clone / "x.txt").write_text("x\n")
    git("add", "x.txt", cwd=clone)
    git("commit", "-q", "-m", "x", cwd=clone)
    head = git("rev-parse", "HEAD", cwd=clone).strip()
    git("switch", "-q", "--detach", base, cwd=clone)
    with open_store(town / "state.db") as store:
        mr = store.record_crew_merge_request("web", "x", branch="crew/x", head=head,
                                             base=base, bead=None, title="x", prefix="web")
        store.start_merge_requests([mr.id])
        store.merge_landed(mr.id, head)
    return head


def _land_on_main(clone: Path, *commits: str) -> None:
    """``commits`` cherry-picked onto main in the clone, then pushed to the remote."""
    git("switch", "-q", "main", cwd=clone)
    for commit in commits:
        git("cherry-pick", commit, cwd=clone)
    git("push", "-q", "origin", "main", cwd=clone)
    git("switch", "-q", "--detach", "main", cwd=clone)


def test_a_merged_mr_missing_from_main_then_twice_on_it_is_caught(
        cli: Cli, town: Path, git_repo: Path) -> None:
    cli.ok("rig", "add", "web", str(git_repo))
    clone = town / "web" / "refinery" / "rig"
    head = _merged_crew_mr(town, clone)
    with pytest.raises(AssertionError, match=r"is merged but 1 of its commit\(s\) are not "
                                             r"on main"):
        check_invariants(town, "web")
    _land_on_main(clone, head)
    check_invariants(town, "web")
    # Reverted, then landed again: the same patch twice on main (the revert's is its own).
    git("switch", "-q", "main", cwd=clone)
    git("revert", "--no-edit", "HEAD", cwd=clone)
    _land_on_main(clone, head)
    with pytest.raises(AssertionError, match=r"is on main 2 times") as caught:
        check_invariants(town, "web")
    assert str(git_repo) in str(caught.value) and str(clone) in str(caught.value)
