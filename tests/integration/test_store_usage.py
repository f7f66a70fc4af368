"""The store's record of what agents spent: ``record_turn`` and ``usage_totals``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gastown.roles.adapters.store import Rig, Store, open_store
from gastown.roles.core.errors import NotFound
from gastown.roles.core.lifecycle import Nuke, SessionStarted


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = open_store(tmp_path / "state.db")
    s.add_rig(Rig(name="web", prefix="web", repo="/r", default_branch="main",
                  created_at=time.time()))
    return s


def polecat_for(store: Store, bead: str, *, force: bool = False) -> str:
    sling = store.queue_sling(bead, "web", agent=None, force=force)
    polecat = store.reserve_polecat(sling.id, pool=["toast", "alpha"],
                                    branch_template="polecat/{name}", polecats_dir="/p",
                                    agent="claude", rig_cap=5, town_cap=5)
    assert polecat is not None
    store.apply_polecat_event("web", polecat.name, SessionStarted())
    return polecat.name


def test_turns_add_up_on_the_polecat_and_its_bead_with_one_event_each(store: Store) -> None:
    bead = store.create_bead(prefix="web", rig="web", title="t", priority=2).id
    name = polecat_for(store, bead)
    seq = store.last_event_seq()
    store.record_turn("web", name, tokens_in=1200, tokens_out=80, cost_usd=0.25,
                      agent_session="sess-1")
    after = store.record_turn("web", name, tokens_in=300, tokens_out=20, cost_usd=0.5)
    assert (after.turns, after.tokens_in, after.tokens_out) == (2, 1500, 100)
    assert after.cost_usd == pytest.approx(0.75)
    assert after.agent_session == "sess-1"  # kept when a later turn names none
    assert store.polecat("web", name) == after
    b = store.bead(bead)
    assert (b.tokens_in, b.tokens_out, b.cost_usd) == (1500, 100, 0.75)
    events = store.events_after(seq)
    assert [e.kind for e in events] == ["agent_turn_ended", "agent_turn_ended"]
    first, second = (e.as_json() for e in events)
    assert first["rig"] == "web" and first["polecat"] == name and first["bead"] == bead
    assert (first["turn"], first["tokens_in"], first["tokens_out"]) == (1, 1200, 80)
    assert first["agent_session"] == "sess-1"
    assert (second["turn"], second["tokens_in"], second["tokens_out"]) == (2, 300, 20)
    assert (second["total_tokens_in"], second["total_tokens_out"]) == (1500, 100)
    assert second["total_cost_usd"] == pytest.approx(0.75)


def test_a_new_session_id_replaces_the_old_and_negative_deltas_count_as_zero(
        store: Store) -> None:
    bead = store.create_bead(prefix="web", rig="web", title="t", priority=2).id
    name = polecat_for(store, bead)
    store.record_turn("web", name, tokens_in=10, agent_session="a")
    after = store.record_turn("web", name, tokens_in=-5, tokens_out=-1, cost_usd=-1.0,
                              agent_session="b")
    assert (after.turns, after.tokens_in, after.tokens_out, after.cost_usd) == (2, 10, 0, 0.0)
    assert after.agent_session == "b"


def test_an_unknown_polecat_is_refused_and_nothing_is_recorded(store: Store) -> None:
    seq = store.last_event_seq()
    with pytest.raises(NotFound):
        store.record_turn("web", "ghost", tokens_in=5)
    assert store.events_after(seq) == []


def test_town_totals_keep_the_turns_of_polecats_that_are_gone(store: Store) -> None:
    """Tokens are summed over beads and turns over events: a nuked polecat's spending
    stays in the total, and two polecats on one bead both count."""
    assert store.usage_totals() == {"turns": 0, "tokens_in": 0, "tokens_out": 0,
                                    "cost_usd": 0.0}
    one = store.create_bead(prefix="web", rig="web", title="one", priority=2).id
    two = store.create_bead(prefix="web", rig="web", title="two", priority=2).id
    first = polecat_for(store, one)
    store.record_turn("web", first, tokens_in=100, tokens_out=20, cost_usd=0.1)
    second = polecat_for(store, one, force=True)
    store.record_turn("web", second, tokens_in=100, tokens_out=20, cost_usd=0.1)
    store.record_turn("web", second, tokens_in=100, tokens_out=20)
    store.apply_polecat_event("web", first, Nuke(force=True))
    third = polecat_for(store, two)
    store.record_turn("web", third, tokens_in=1, tokens_out=2, cost_usd=1.0)
    totals = store.usage_totals()
    assert totals["turns"] == 4
    assert (totals["tokens_in"], totals["tokens_out"]) == (301, 62)
    assert totals["cost_usd"] == pytest.approx(1.2)
