# ruff: noqa: F811  (the town and store fixtures are imported, then named as parameters)
"""The one nuke path against a real town and real git: interrupted nukes finish, work that
arrives late is kept, merge requests belong to one incarnation, nuked rows are history."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from gastown.roles.adapters.store import MIGRATIONS, Store, open_store
from gastown.roles.adapters.town import Town
from gastown.roles.core.lifecycle import (
    DeleteBranch,
    Done,
    MergeStarted,
    Nuke,
    RemoveWorktree,
    StopSession,
    Transition,
    transition,
)
from gastown.roles.operations.nuking import (
    WorkKept,
    _check_work,
    carry_out,
    nuke,
    nuke_merged,
    nuke_polecat,
)
from tests.conftest import Cli, git
from tests.integration.test_reconcile import (  # the town and polecat builders
    add_worktree,
    branches,
    clone,
    commit,
    land_by_cherry_pick,
    polecat_row,
    store,  # noqa: F401  (fixture)
    town,  # noqa: F401  (fixture)
)


def landed_polecat(town: Town, store: Store, name: str) -> tuple[Path, str]:
    """A working polecat with one commit whose patch is already on main."""
    worktree = add_worktree(town, name)
    polecat_row(town, store, name)
    change = commit(worktree, f"{name}.txt")
    land_by_cherry_pick(town, change)
    return worktree, change


def test_a_nuke_interrupted_between_effects_is_finished_by_the_next(
        town: Town, store: Store) -> None:
    """The process doing a nuke dies after removing the worktree, before the branch and the
    rows: the row is as it was, and the next nuke decides again and finishes."""
    worktree, _ = landed_polecat(town, store, "toast")
    polecat = store.polecat("web", "toast")
    decision = transition(polecat.state, Nuke(landed=True))
    assert isinstance(decision, Transition)
    world = [e for e in decision.effects if isinstance(e, (StopSession, RemoveWorktree))]
    carry_out(town, store, polecat, tuple(world))  # ... and then the process died
    assert not worktree.exists() and "polecat/toast" in branches(town)
    assert store.polecat("web", "toast").state == "working"

    nuke_polecat(town, store, "web", "toast")
    assert "polecat/toast" not in branches(town)
    assert [p.name for p in store.polecats("web")] == []
    history = store.polecat_history(rig="web")
    assert [(h["name"], h["ended"], h["last_state"]) for h in history] == [
        ("toast", "nuked", "working")]


def test_carry_out_twice_is_the_same_as_once(town: Town, store: Store) -> None:
    """Every world effect is idempotent: a second pass over finished effects changes nothing."""
    worktree, _ = landed_polecat(town, store, "toast")
    polecat = store.polecat("web", "toast")
    decision = transition(polecat.state, Nuke(landed=True))
    assert isinstance(decision, Transition)
    carry_out(town, store, polecat, decision.effects)
    carry_out(town, store, polecat, decision.effects)
    assert not worktree.exists() and "polecat/toast" not in branches(town)


def test_a_commit_that_arrives_after_the_check_keeps_the_branch(
        town: Town, store: Store) -> None:
    """The branch is re-checked when it is deleted: a commit made after the nuke was decided
    stops the nuke with the branch and the row kept (no commit deleted that had not landed)."""
    worktree, _ = landed_polecat(town, store, "toast")
    polecat = store.polecat("web", "toast")
    late = commit(worktree, "late.txt")  # the agent's last commit, after the check
    with pytest.raises(WorkKept, match="kept branch polecat/toast: 1 commit"):
        nuke(town, store, polecat, Nuke(landed=True))
    assert git("rev-parse", "polecat/toast", cwd=clone(town)).strip() == late
    assert store.polecat("web", "toast").state == "working"
    assert store.polecat_history(rig="web") == []


def test_a_forced_nuke_deletes_unchecked_and_reopens_the_bead(
        town: Town, store: Store) -> None:
    """``--force`` is the one way to delete unlanded work; the bead goes back to open, and
    ``bead show`` still says which polecat worked on it and how it ended."""
    worktree = add_worktree(town, "toast")
    polecat = polecat_row(town, store, "toast")
    commit(worktree, "unlanded.txt")
    nuke_polecat(town, store, "web", "toast", force=True)
    assert "polecat/toast" not in branches(town)
    assert polecat.bead is not None and store.bead(polecat.bead).status == "open"
    assert [h["ended"] for h in store.polecat_history(bead=polecat.bead)] == ["nuked"]
    cli = Cli(cwd=town.root, env={**os.environ, "GASTOWN_TOWN": str(town.root)})
    shown = cli.ok("bead", "show", polecat.bead)
    assert f"past polecat web/toast ({polecat.incarnation}): nuked" in shown
    past = json.loads(cli.ok("bead", "show", polecat.bead, "--json"))["past_polecats"]
    assert [(p["name"], p["ended"], p["last_state"]) for p in past] == [
        ("toast", "nuked", "working")]


def test_a_merged_request_of_an_earlier_life_is_not_the_new_ones(
        town: Town, store: Store) -> None:
    """Names are reused: the witness's nuke after a merge looks for the MR of this
    incarnation, never one that an earlier polecat of the same name got merged."""
    worktree, change = landed_polecat(town, store, "toast")
    head = git("rev-parse", "HEAD", cwd=worktree).strip()
    first = store.record_done("web", "toast", Done("completed"), head=head, base=head,
                              with_mr=True)
    assert first is not None
    store.start_merge_requests([first.id])
    store.merge_landed(first.id, change)
    assert nuke_merged(town, store, "web", "toast") is None  # the first life ends

    add_worktree(town, "toast")
    again = polecat_row(town, store, "toast")
    assert again.incarnation != first.incarnation
    store.apply_polecat_event("web", "toast", Done("completed"))
    store.apply_polecat_event("web", "toast", MergeStarted())
    assert nuke_merged(town, store, "web", "toast") == "its merge request has not landed"
    assert store.polecat("web", "toast").state == "merging"
    assert [h["ended"] for h in store.polecat_history(rig="web")] == ["merged"]


def test_the_migration_gives_old_merge_requests_their_incarnation(tmp_path: Path) -> None:
    """Merge requests recorded before migration 7 get the incarnation of the live polecat
    of that name that is older than them; an earlier life's MR stays without one."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:6]:
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 6")
    conn.execute("INSERT INTO polecats (rig, name, bead, branch, worktree, state, "
                 "incarnation, created_at, updated_at) VALUES "
                 "('web', 'toast', 'web-1', 'polecat/toast', '/w', 'done', 'life2', 100, 100)")
    for mr, created in (("mr-old", 50.0), ("mr-new", 150.0)):
        conn.execute("INSERT INTO merge_requests (id, rig, bead, polecat, branch, state, "
                     "created_at, updated_at) VALUES (?, 'web', 'web-1', 'toast', "
                     "'polecat/toast', 'queued', ?, ?)", (mr, created, created))
    conn.commit()
    conn.close()
    with open_store(path) as upgraded:
        assert upgraded.merge_request("mr-new").incarnation == "life2"
        assert upgraded.merge_request("mr-old").incarnation is None
        polecat = upgraded.polecat("web", "toast")
        assert upgraded.merge_request("mr-new").submitted_by(polecat)
        assert not upgraded.merge_request("mr-old").submitted_by(polecat)


def test_delete_branch_is_unchecked_only_for_a_forced_nuke() -> None:
    """The decision says it: only ``Nuke(force=True)`` deletes a branch without a re-check."""
    for state in ("working", "done", "merging", "escalated", "rejected", "stalled"):
        for force in (False, True):
            decision = transition(state, Nuke(force=force, landed=True))
            assert isinstance(decision, Transition)
            deletes = [e for e in decision.effects if isinstance(e, DeleteBranch)]
            assert deletes == [DeleteBranch(unchecked=force)]


def test_a_rolled_back_spawn_requeues_its_sling_with_the_row(
        town: Town, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recovery's rollback removes the row and puts the sling back in the queue in one
    transaction: a failure between the two (here the requeue raising) leaves both as they
    were, never a sling dispatched to a polecat that is gone (stranded: nothing would
    dispatch it again)."""
    from gastown.roles.core.errors import StoreError
    from gastown.roles.operations.nuking import rollback_spawn

    add_worktree(town, "toast")
    spawning = polecat_row(town, store, "toast", working=False)
    assert spawning.state == "spawning" and spawning.sling is not None

    def broken(*_args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as patched:
        patched.setattr(Store, "_requeue_sling", broken)
        with pytest.raises(StoreError):
            rollback_spawn(town, store, spawning, "interrupted", requeue_sling=True)
    assert store.polecat("web", "toast").state == "spawning"
    assert store.sling(spawning.sling).state == "dispatched"

    assert rollback_spawn(town, store, store.polecat("web", "toast"), "interrupted",
                          requeue_sling=True) is None
    assert store.polecats("web") == []
    assert store.sling(spawning.sling).state == "queued"


def test_the_nuke_deletes_the_commit_it_found_landed_and_nothing_newer(
        town: Town, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The landed check gives the branch's commit it checked; the branch is deleted only if
    it still points there (one ``update-ref -d``, no second ``cherry``, no ``branch -D``).
    A commit that arrived in between moves the branch: it is checked again and kept."""
    from tests.integration.test_git_command import _logging_git

    worktree, change = landed_polecat(town, store, "toast")
    polecat = store.polecat("web", "toast")
    problems, tip = _check_work(town, polecat)
    assert problems == [] and tip == change
    late = commit(worktree, "late.txt")
    with pytest.raises(WorkKept, match="kept branch polecat/toast: 1 commit"):
        nuke(town, store, polecat, Nuke(landed=True), landed_tip=tip)
    assert git("rev-parse", "polecat/toast", cwd=clone(town)).strip() == late

    landed_polecat(town, store, "bravo")
    log = _logging_git(tmp_path, monkeypatch)
    nuke_polecat(town, store, "web", "bravo")
    calls = [line.split()[0] for line in log.read_text().splitlines()
             if line.split()[0] in ("cherry", "branch", "update-ref", "rev-parse")]
    assert calls == ["cherry", "update-ref"]
    assert "polecat/bravo" not in branches(town)
    assert [p.name for p in store.polecats("web")] == ["toast"]
