"""Convoys in the store: each change of a convoy's state writes one event, in the
transaction of the bead change that caused it; none without a change."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from gastown.roles.adapters.store import Rig, Store, open_store
from gastown.roles.core.errors import NotFound, Refused
from gastown.roles.core.lifecycle import Done, SessionStarted

CONVOY_KINDS = ("convoy_created", "convoy_changed", "convoy_progress", "convoy_landed",
                "convoy_stuck")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = open_store(tmp_path / "state.db")
    for rig in ("web", "api"):
        s.add_rig(Rig(name=rig, prefix=rig, repo="/r", default_branch="main",
                      created_at=time.time()))
    return s


def convoy_events(store: Store, seq: int = 0) -> list[tuple[str, object]]:
    return [(e.kind, e.data.get("state")) for e in store.events_after(seq)
            if e.kind in CONVOY_KINDS]


def work(store: Store, bead: str, rig: str = "web") -> str:
    """Sling ``bead`` to ``rig``, start its polecat, ``done``: returns its MR's id."""
    sling = store.queue_sling(bead, rig, agent=None, force=False)
    polecat = store.reserve_polecat(sling.id, pool=["toast", "alpha", "bravo", "delta"],
                                    branch_template="polecat/{name}", polecats_dir="/p",
                                    agent="script", rig_cap=9, town_cap=9)
    assert polecat is not None
    store.apply_polecat_event(rig, polecat.name, SessionStarted())
    mr = store.record_done(rig, polecat.name, Done("completed"), head="h" * 40,
                           base="b" * 40, with_mr=True)
    assert mr is not None
    store.start_merge_requests([mr.id])
    return mr.id


def test_a_convoy_over_two_rigs_lands_once(store: Store) -> None:
    one = store.create_bead(prefix="web", rig="web", title="one").id
    two = store.create_bead(prefix="api", rig="api", title="two").id
    convoy = store.create_convoy("feature X", [one, two])
    assert convoy.id.startswith("cv-") and convoy.state.progress == "0/2 merged"
    assert convoy_events(store) == [("convoy_created", "open")]
    seq = store.last_event_seq()
    store.merge_landed(work(store, one), "c" * 40)
    assert convoy_events(store, seq) == [("convoy_progress", "open")]
    assert store.convoy(convoy.id).state.progress == "1/2 merged"
    seq = store.last_event_seq()
    store.merge_landed(work(store, two, "api"), "d" * 40)
    assert convoy_events(store, seq) == [("convoy_landed", "landed")]
    landed = store.convoy(convoy.id)
    assert (landed.state.state, landed.state.progress) == ("landed", "2/2 merged")
    shown = {b.id: b for b in store.convoy_beads(convoy.id)}
    assert shown[two].merged_commit == "d" * 40 and shown[two].mr_state == "merged"
    # Landing again (a second merge of the same MR is refused) writes nothing more.
    seq = store.last_event_seq()
    store.merge_landed(shown[two].mr or "", "d" * 40)
    assert convoy_events(store, seq) == []


def test_a_rejected_bead_makes_it_stuck_and_a_re_sling_unsticks_it(store: Store) -> None:
    one = store.create_bead(prefix="web", rig="web", title="one").id
    two = store.create_bead(prefix="web", rig="web", title="two").id
    convoy = store.create_convoy("feature Y", [one, two]).id
    seq = store.last_event_seq()
    store.merge_rejected(work(store, one), "gate test failed")
    assert convoy_events(store, seq) == [("convoy_stuck", "stuck")]
    stuck = store.convoy(convoy).state
    assert stuck.stuck_bead == one and stuck.stuck_reason == "rejected: gate test failed"
    [event] = [e for e in store.events_after(seq) if e.kind == "convoy_stuck"]
    assert event.bead == one
    seq = store.last_event_seq()
    mr = work(store, one)  # fixed and slung again: hooked, then in review
    assert convoy_events(store, seq) == [("convoy_progress", "open")]
    store.merge_landed(mr, "e" * 40)
    store.merge_landed(work(store, two), "f" * 40)
    kinds = [k for k, _ in convoy_events(store)]
    assert kinds.count("convoy_landed") == 1 and kinds.count("convoy_stuck") == 1


def test_reopened_and_closed_again_lands_twice_once_each(store: Store) -> None:
    bead = store.create_bead(prefix="web", rig="web", title="one").id
    convoy = store.create_convoy("Z", [bead]).id
    store.close_bead(bead, reason="done elsewhere")
    with pytest.raises(Refused):
        store.close_bead(bead)
    store.reopen_bead(bead)
    store.close_bead(bead)
    assert convoy_events(store) == [("convoy_created", "open"), ("convoy_landed", "landed"),
                                    ("convoy_progress", "open"), ("convoy_landed", "landed")]
    assert store.convoy(convoy).state.state == "landed"


def test_a_blocked_bead_removed_from_a_stuck_convoy(store: Store) -> None:
    one = store.create_bead(prefix="web", rig="web", title="one").id
    two = store.create_bead(prefix="web", rig="web", title="two").id
    convoy = store.create_convoy("W", [one, two]).id
    store.update_bead(one, status="blocked")
    assert store.convoy(convoy).state.stuck_reason == "blocked: set by hand"
    store.close_bead(two)
    seq = store.last_event_seq()
    store.remove_from_convoy(convoy, [one])
    # One event for the membership change; the landing it caused is its own event.
    assert convoy_events(store, seq) == [("convoy_changed", "landed"),
                                         ("convoy_landed", "landed")]
    seq = store.last_event_seq()
    store.add_to_convoy(convoy, [one])  # back: stuck again, named
    assert convoy_events(store, seq) == [("convoy_changed", "stuck"),
                                         ("convoy_stuck", "stuck")]
    seq = store.last_event_seq()
    store.update_bead(one, title="renamed")  # no status change: no convoy event
    store.update_bead(one, status="open")
    assert convoy_events(store, seq) == [("convoy_progress", "open")]


def test_bad_input_is_refused_and_nothing_written(store: Store) -> None:
    bead = store.create_bead(prefix="web", rig="web", title="one").id
    seq = store.last_event_seq()
    with pytest.raises(NotFound, match="no bead 'web-zzzzz'"):
        store.create_convoy("X", [bead, "web-zzzzz"])
    with pytest.raises(Refused, match="named twice"):
        store.create_convoy("X", [bead, bead])
    with pytest.raises(NotFound, match="no convoy 'cv-nope1'"):
        store.add_to_convoy("cv-nope1", [bead])
    convoy = store.create_convoy("X", [bead]).id
    with pytest.raises(Refused, match="already in convoy"):
        store.add_to_convoy(convoy, [bead])
    other = store.create_bead(prefix="web", rig="web", title="two").id
    with pytest.raises(NotFound, match="is not in convoy"):
        store.remove_from_convoy(convoy, [other])
    assert [k for k, _ in convoy_events(store, seq)] == ["convoy_created"]
    assert store.convoys()[0].beads == (bead,)


def test_convoy_sling_queues_every_open_bead_without_a_sling(store: Store) -> None:
    slung = store.create_bead(prefix="web", rig="web", title="queued already").id
    free = store.create_bead(prefix="api", rig="api", title="free").id
    no_rig = store.create_bead(prefix="gt", rig=None, title="no rig").id
    blocked = store.create_bead(prefix="web", rig="web", title="blocked").id
    store.update_bead(blocked, status="blocked")
    store.queue_sling(slung, "web", agent=None, force=False)
    convoy = store.create_convoy("S", [slung, free, no_rig, blocked]).id
    with pytest.raises(Refused, match=f"bead {no_rig} has no rig"):
        store.queue_convoy_slings(convoy)
    assert len(store.queued_slings()) == 1  # all or none
    with_rig = store.create_convoy("S2", [free, no_rig], rig="web").id
    slings = store.queue_convoy_slings(with_rig)
    assert [(s.bead, s.rig) for s in slings] == [(free, "api"), (no_rig, "web")]
    assert store.queue_convoy_slings(convoy) == []  # every open bead has its sling
    into = store.create_bead(prefix="web", rig="web", title="into api").id
    store.add_to_convoy(convoy, [into])
    assert [(s.bead, s.rig) for s in store.queue_convoy_slings(convoy, "api")] == [
        (into, "api")]


def test_a_crash_mid_transaction_leaves_neither_the_bead_change_nor_its_event(
        store: Store) -> None:
    """The convoy's row and event are written in the bead change's transaction: a
    transaction that fails after them keeps neither (as a kill -9 would)."""
    bead = store.create_bead(prefix="web", rig="web", title="one").id
    convoy = store.create_convoy("K", [bead]).id
    seq = store.last_event_seq()
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as conn:
        store._set_bead(conn, bead, "closed", "merged")
        assert conn.execute("SELECT state FROM convoys").fetchone()[0] == "landed"
        conn.execute("INSERT INTO convoys (id, title, created_at, updated_at) "
                     "VALUES (?, 'dup', 0, 0)", (convoy,))
    assert store.convoy(convoy).state.state == "open" and store.events_after(seq) == []
    store.close_bead(bead)
    assert [k for k, _ in convoy_events(store, seq)] == ["convoy_landed"]


def test_a_bead_waiting_on_a_rejected_need_outside_the_convoy(store: Store) -> None:
    """The convoy's bead needs a bead of another rig, not in the convoy: that need's
    rejection makes the convoy stuck on its bead (saying which need, why); the need slung
    again unsticks it; a need added or removed by hand is followed too."""
    need = store.create_bead(prefix="web", rig="web", title="the API").id
    user = store.create_bead(prefix="api", rig="api", title="uses it", needs=[need]).id
    convoy = store.create_convoy("client", [user]).id
    seq = store.last_event_seq()
    store.merge_rejected(work(store, need), "gate test failed")
    assert convoy_events(store, seq) == [("convoy_stuck", "stuck")]
    state = store.convoy(convoy).state
    assert (state.stuck_bead, state.stuck_reason) == (
        user, f"needs {need}, rejected: gate test failed")
    seq = store.last_event_seq()
    store.remove_need(user, need)
    store.add_need(user, need)
    assert convoy_events(store, seq) == [("convoy_progress", "open"),
                                         ("convoy_stuck", "stuck")]
    seq = store.last_event_seq()
    store.merge_landed(work(store, need), "a" * 40)  # fixed and slung again: merged
    store.merge_landed(work(store, user, "api"), "b" * 40)
    assert convoy_events(store, seq) == [("convoy_progress", "open"),
                                         ("convoy_landed", "landed")]


def test_every_bead_status_write_calls_the_convoy_hook() -> None:
    """Each function of the store that writes a bead's status also calls ``_bead_moved``
    (in its transaction): a new writer without it would leave convoys behind."""
    import ast

    folder = Path(__file__).resolve().parents[2] / "roles" / "adapters"
    writers, missing = [], []
    for path in sorted(folder.glob("_store*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            text = ast.unparse(node)
            if "UPDATE beads SET status" in text:
                writers.append(node.name)
                if "_bead_moved(" not in text:
                    missing.append(f"{path.name}:{node.name}")
    assert len(writers) >= 6 and missing == []
