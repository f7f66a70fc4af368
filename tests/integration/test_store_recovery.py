"""The store's side of recovering kept work: editing and closing beads by hand, the merge
request's steps and failing tail, and the sling queue's order."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gastown.roles.adapters.store import Rig, Store, open_store
from gastown.roles.core.errors import Refused
from gastown.roles.core.lifecycle import Done, SessionStarted


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = open_store(tmp_path / "state.db")
    s.add_rig(Rig(name="web", prefix="web", repo="/r", default_branch="main",
                  created_at=time.time()))
    return s


def working_polecat(store: Store, bead: str, *, with_mr: bool = False,
                    force: bool = False) -> str:
    """A polecat for ``bead``, working (or done with a queued MR); returns its name."""
    sling = store.queue_sling(bead, "web", agent=None, force=force)
    polecat = store.reserve_polecat(sling.id, pool=["toast", "alpha", "bravo"],
                                    branch_template="polecat/{name}", polecats_dir="/p",
                                    agent="script", rig_cap=5, town_cap=5)
    assert polecat is not None
    store.apply_polecat_event("web", polecat.name, SessionStarted())
    if with_mr:
        store.record_done("web", polecat.name, Done("completed"), head="h" * 40,
                          base="b" * 40, with_mr=True)
    return polecat.name


def kinds_since(store: Store, seq: int) -> list[str]:
    return [e.kind for e in store.events_after(seq)]


def test_close_refuses_live_work_and_force_cancels_it_in_one_step(store: Store) -> None:
    """Without force nothing changes; with force the MR and sling are cancelled and the
    polecats escalated (rows kept), the bead closed, every change an event."""
    bead = store.create_bead(prefix="web", rig="web", title="t").id
    done = working_polecat(store, bead, with_mr=True)
    working = working_polecat(store, bead, force=True)
    store.queue_sling(bead, "web", agent=None, force=True)
    seq = store.last_event_seq()
    with pytest.raises(Refused) as refused:
        store.close_bead(bead)
    assert f"polecat web/{working} (working)" in refused.value.message
    assert "(queued)" in refused.value.message and "queued sling" in refused.value.message
    assert store.bead(bead).status == "hooked" and store.last_event_seq() == seq

    stop = store.close_bead(bead, reason="superseded", force=True)
    assert [p.name for p in stop] == [working]
    assert store.bead(bead).status == "closed" and store.bead(bead).reason == "superseded"
    for name in (done, working):
        polecat = store.polecat("web", name)
        assert polecat.state == "escalated" and "superseded" in (polecat.reason or "")
    assert {m.state for m in store.merge_requests("web")} == {"cancelled"}
    assert store.sling_queue() == []
    assert sorted(kinds_since(store, seq)) == sorted(
        ["sling_cancelled", "mr_cancelled", "polecat_escalated", "polecat_escalated",
         "bead_status_changed"])


def test_close_force_refuses_a_polecat_being_created(store: Store) -> None:
    bead = store.create_bead(prefix="web", rig="web", title="t").id
    sling = store.queue_sling(bead, "web", agent=None, force=False)
    store.reserve_polecat(sling.id, pool=["toast"], branch_template="polecat/{name}",
                          polecats_dir="/p", agent="script", rig_cap=5, town_cap=5)
    with pytest.raises(Refused, match="still being created"):
        store.close_bead(bead, force=True)
    assert store.bead(bead).status == "hooked"


def test_reopen_and_update_rules(store: Store) -> None:
    """reopen clears the landed commit; status edits are open<->blocked only; a new
    priority re-orders the bead's queued MRs."""
    bead = store.create_bead(prefix="web", rig="web", title="t").id
    store.close_bead(bead, commit="c" * 40)
    assert store.bead(bead).closed_commit == "c" * 40
    with pytest.raises(Refused, match="bead reopen"):
        store.update_bead(bead, status="open")
    store.reopen_bead(bead)
    assert (store.bead(bead).status, store.bead(bead).closed_commit) == ("open", None)
    working_polecat(store, bead, with_mr=True)
    with pytest.raises(Refused, match="follows the work"):
        store.update_bead(bead, status="blocked")
    store.update_bead(bead, priority=0, title="new")
    assert [m.priority for m in store.merge_requests("web")] == [0]
    assert store.bead(bead).title == "new"


def test_merge_steps_are_appended_with_times_and_rejection_keeps_the_tail(
        store: Store) -> None:
    bead = store.create_bead(prefix="web", rig="web", title="t").id
    working_polecat(store, bead, with_mr=True)
    mr = store.merge_requests("web")[0].id
    store.start_merge_requests([mr])
    store.set_merge_step([mr], "rebasing")
    store.set_merge_step([mr], "gating", log_path="/log")
    store.set_merge_step([mr], "gating", gate="unit")
    store.set_merge_step([mr], "gating", gate="unit")  # repeated: one entry
    store.merge_rejected(mr, "gate unit (exit 1)", tail="line 1\nFAILED test_x")
    found = store.merge_request(mr)
    assert [(s["step"], s["gate"]) for s in found.steps] == [
        ("rebasing", None), ("gating", None), ("gating", "unit")]
    ats = [s["at"] for s in found.steps]
    assert ats == sorted(ats)
    assert found.tail == "line 1\nFAILED test_x" and found.log_path == "/log"


def test_sling_queue_positions_follow_the_mayors_order(store: Store) -> None:
    beads = [store.create_bead(prefix="web", rig="web", title=f"t{i}").id for i in range(3)]
    for bead in beads:
        store.queue_sling(bead, "web", agent=None, force=False)
    assert [(q.position, q.sling.bead) for q in store.sling_queue()] == list(
        zip([1, 2, 3], beads, strict=True))
    work = store.bead_work(beads[2])
    assert [q.position for q in work.queued_slings] == [3]


def test_merge_requests_of_several_names_reads_only_theirs(store: Store) -> None:
    """The witness's settle pass asks for the MRs of its merging polecats by name, not for
    the rig's whole history."""
    names = [working_polecat(store, store.create_bead(prefix="web", rig="web",
                                                      title=f"t{i}").id, with_mr=True)
             for i in range(3)]
    asked = store.merge_requests_of("web", names[:2], ["queued"])
    assert sorted(m.polecat for m in asked) == sorted(names[:2])
    assert [m.polecat for m in store.merge_requests_of("web", names[2], ["queued"])] \
        == [names[2]]
    assert store.merge_requests_of("web", [], ["queued"]) == []
    assert store.merge_requests_of("web", names, ["merged"]) == []


def test_merge_requests_of_an_incarnation_leaves_out_other_lives_of_the_name(
        store: Store) -> None:
    """A reused name's earlier lives' MRs are not read for this one (rows that record no
    incarnation still are: submitted_by tells those apart by age)."""
    bead = store.create_bead(prefix="web", rig="web", title="t").id
    name = working_polecat(store, bead, with_mr=True)
    mine = store.polecat("web", name).incarnation
    assert mine is not None
    assert len(store.merge_requests_of("web", name, ["queued"], incarnations=[mine])) == 1
    assert store.merge_requests_of("web", name, ["queued"], incarnations=["other"]) == []
    # A polecat that records no incarnation matches by age: every row of its name.
    assert len(store.merge_requests_of("web", name, ["queued"], incarnations=[None])) == 1


def test_the_head_of_the_queue_is_read_in_queue_order(store: Store) -> None:
    """The refinery reads the first MRs of its queue only: the same ones, in the same
    order, as the whole queue's head."""
    for i in range(4):
        working_polecat(store, store.create_bead(prefix="web", rig="web", title=f"q{i}").id,
                        with_mr=True)
    whole = store.merge_requests_in("web", ["queued"])
    assert len(whole) == 4
    assert [m.id for m in store.merge_requests_in("web", ["queued"], 2)] == \
        [m.id for m in whole[:2]]
    assert store.merge_requests_in("web", ["queued"], 0) == []
