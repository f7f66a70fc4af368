"""Bead dependencies through the real CLI and the store (the town is not running): needs
in both directions, cycles refused with the cycle named, waiting and blocked beads, the
queue's dispatch order, and one domain event per change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gastown.roles.adapters.store import open_store
from tests.conftest import Cli, git, make_repo


@pytest.fixture
def two_rigs(tmp_path: Path, cli: Cli, town: Path) -> Path:
    for rig in ("web", "api"):
        src = make_repo(tmp_path / f"{rig}-src")
        git("clone", "-q", "--bare", str(src), str(tmp_path / f"{rig}.git"), cwd=tmp_path)
        cli.ok("rig", "add", rig, str(tmp_path / f"{rig}.git"))
    return town


def _create(cli: Cli, title: str, *args: str) -> str:
    return cli.ok("bead", "create", title, *args).strip()


def _kinds(town: Path, kind: str) -> list[tuple[str | None, object]]:
    with open_store(town / "state.db") as store:
        return [(e.bead, e.data.get("need")) for e in store.events_after(0) if e.kind == kind]


def test_needs_across_rigs_show_both_ways_and_the_bead_waits(cli: Cli, two_rigs: Path) -> None:
    a = _create(cli, "API first", "--rig", "api")
    b = _create(cli, "schema", "--rig", "web")
    c = _create(cli, "use it", "--rig", "web", "--needs", f"{a},{b}")
    shown = json.loads(cli.ok("bead", "show", c, "--json"))
    assert [n["id"] for n in shown["needs"]] == sorted([a, b])
    assert {n["rig"] for n in shown["needs"]} == {"api", "web"}
    assert shown["state"] == "waiting" and shown["status"] == "open"
    assert shown["waiting"].startswith("waiting for ") and a in shown["waiting"]
    assert json.loads(cli.ok("bead", "show", a, "--json"))["needed_by"][0]["id"] == c
    text = cli.ok("bead", "show", c)
    assert f"needs:    {sorted([a, b])[0]} (open)" in text and "waiting:" in text
    assert f"needed by: {c} (open)" in cli.ok("bead", "show", b)
    listed = {row["id"]: row for row in json.loads(cli.ok("bead", "list", "--json"))}
    assert listed[c]["state"] == "waiting" and listed[c]["needs"] == sorted([a, b])
    assert listed[a]["state"] == "open" and listed[a]["waiting"] is None
    assert any(line.split()[0] == c and " waiting " in line
               for line in cli.ok("bead", "list").splitlines()[1:])
    assert sorted(_kinds(two_rigs, "bead_need_added")) == sorted([(c, a), (c, b)])
    deps = json.loads(cli.ok("bead", "dep", "list", "--json"))
    assert {(d["bead"], d["need"]) for d in deps} == {(c, a), (c, b)}

    cli.ok("bead", "close", a)
    cli.ok("bead", "dep", "remove", c, b)
    assert _kinds(two_rigs, "bead_need_removed") == [(c, b)]
    shown = json.loads(cli.ok("bead", "show", c, "--json"))
    assert shown["state"] == "open" and shown["waiting"] is None
    assert [(n["id"], n["status"]) for n in shown["needs"]] == [(a, "closed")]


def test_refusals_are_one_line_and_change_nothing(cli: Cli, two_rigs: Path) -> None:
    a = _create(cli, "a", "--rig", "web")
    b = _create(cli, "b", "--rig", "web", "--needs", a)
    c = _create(cli, "c", "--rig", "api", "--needs", b)
    before = _kinds(two_rigs, "bead_need_added")

    cycle = cli("bead", "dep", "add", a, c)
    assert cycle.code == 1
    assert cycle.err == f"gastown: bead {a} cannot need {c}: that would be a cycle " \
                        f"({a} -> {c} -> {b} -> {a})\n"
    itself = cli("bead", "dep", "add", a, a)
    assert (itself.code, itself.err) == (1, f"gastown: bead {a} cannot need itself\n")
    unknown = cli("bead", "dep", "add", a, "web-zzzzz")
    assert unknown.code == 1 and unknown.err.startswith("gastown: no bead 'web-zzzzz'")
    assert cli("bead", "dep", "add", "web-zzzzz", a).code == 1
    created = cli("bead", "create", "d", "--rig", "web", "--needs", f"{a},web-zzzzz")
    assert created.code == 1 and "no bead 'web-zzzzz'" in created.err
    assert [r["title"] for r in json.loads(cli.ok("bead", "list", "--json"))] == \
        ["a", "b", "c"]  # the refused create left no bead
    not_there = cli("bead", "dep", "remove", a, b)
    assert (not_there.code, not_there.err) == (1, f"gastown: bead {a} does not need {b}\n")

    assert cli.ok("bead", "dep", "add", b, a).strip() == f"{b} already needs {a}"
    assert _kinds(two_rigs, "bead_need_added") == before  # the duplicate is a no-op


def test_a_need_that_a_person_must_unblock_says_why(cli: Cli, two_rigs: Path) -> None:
    a = _create(cli, "a", "--rig", "web")
    b = _create(cli, "b", "--rig", "api", "--needs", a)
    cli.ok("bead", "update", a, "--status", "blocked")
    shown = json.loads(cli.ok("bead", "show", b, "--json"))
    assert shown["blocked"] is True and shown["state"] == "blocked"
    assert shown["waiting"] == f"blocked on {a}: blocked: set by hand"
    assert f"blocked:  blocked on {a}" in cli.ok("bead", "show", b)


def test_the_queue_goes_by_priority_and_waits_for_needs(cli: Cli, two_rigs: Path) -> None:
    """Slings queued while the town is down: the queue (``status``, ``bead show``) is in the
    mayor's order: ready beads by priority, then the ones waiting for their needs."""
    low = _create(cli, "low", "--rig", "web", "-p", "3")
    urgent = _create(cli, "urgent", "--rig", "web", "-p", "0")
    mid = _create(cli, "mid", "--rig", "web", "-p", "1")
    after = _create(cli, "after", "--rig", "api", "-p", "0", "--needs", low)
    for bead, rig in ((low, "web"), (urgent, "web"), (mid, "web"), (after, "api")):
        cli.ok("sling", bead, rig)
    with open_store(two_rigs / "state.db") as store:
        queue = store.sling_queue()
        assert [(q.position, q.sling.bead) for q in queue] == \
            [(1, urgent), (2, mid), (3, low), (4, after)]
        assert queue[3].waiting == f"waiting for {low} (open)"
        planned = store.dispatch_plan()
        assert [s.bead for s in planned.ready] == [urgent, mid, low]
        assert [(s.bead, w.needs) for s, w in planned.waiting] == [(after, (low,))]
        store.close_bead(low, force=True)  # cancels low's sling; its need is met
        assert [s.bead for s in store.dispatch_plan().ready] == [urgent, after, mid]
    slung = json.loads(cli.ok("bead", "show", after, "--json"))["queued_slings"]
    assert slung[0]["position"] == 2 and slung[0]["waiting"] is None


def test_list_filters_waiting_beads_and_status_says_what_a_sling_waits_for(
        cli: Cli, two_rigs: Path) -> None:
    a = _create(cli, "a", "--rig", "web")
    b = _create(cli, "b", "--rig", "api", "--needs", a)
    cli.ok("sling", b, "api")
    assert [r["id"] for r in json.loads(cli.ok("bead", "list", "--status", "waiting",
                                               "--json"))] == [b]
    assert {r["id"] for r in json.loads(cli.ok("bead", "list", "--status", "open",
                                               "--json"))} == {a, b}
    assert cli("bead", "list", "--status", "later").code == 2
    queued = json.loads(cli.ok("status", "--json"))["queued_slings"]
    assert [(q["bead"], q["waiting"]) for q in queued] == [(b, f"waiting for {a} (open)")]
    assert f"waiting for {a} (open)" in cli.ok("status")


def test_a_sling_whose_bead_gained_a_need_after_the_plan_is_not_reserved(
        cli: Cli, two_rigs: Path) -> None:
    """The store's reservation checks the needs again in its transaction: a plan read just
    before ``bead dep add`` cannot dispatch the bead."""
    a = _create(cli, "a", "--rig", "web")
    b = _create(cli, "b", "--rig", "web")
    cli.ok("sling", b, "web")
    with open_store(two_rigs / "state.db") as store:
        planned = store.dispatch_plan()
        assert [s.bead for s in planned.ready] == [b]
        store.add_need(b, a)

        def reserve() -> object:
            return store.reserve_polecat(planned.ready[0].id, pool=["toast"],
                                         branch_template="polecat/{name}",
                                         polecats_dir="web/polecats", agent="script",
                                         rig_cap=5, town_cap=5)

        assert reserve() is None
        assert store.bead(b).status == "open"
        store.close_bead(a)
        assert reserve() is not None
