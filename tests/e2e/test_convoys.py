"""Convoys on a real town: two rigs on bare remotes, ``script`` agents, a real gate.

- a convoy over two rigs lands once both rigs merged theirs: one ``convoy_landed``;
- a bead rejected by its gate makes the convoy ``stuck`` naming it; fixed and slung
  again, the convoy lands, still one ``convoy_landed``;
- the issue's acceptance: 8 beads over 2 rigs with a chain of needs and priorities, one
  rejected, the supervisor and the mayor killed -9 mid-way: dispatched in order, stuck,
  fixed, landed, every convoy event in the feed exactly once.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, git, make_remote
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import (
    events,
    polecats,
    role_processes,
    script_town,
    status,
    tear_down_town,
    wait_until,
)

CONVOY_KINDS = ("convoy_created", "convoy_changed", "convoy_progress", "convoy_landed",
                "convoy_stuck")
GATE = '[[merge_queue.gates]]\nname = "test"\ncommand = "sh check.sh"\n'


@pytest.fixture
def remotes(tmp_path: Path) -> dict[str, Path]:
    files = {"README.md": "hello\n", "check.sh": "test ! -e broken\n"}
    return {rig: make_remote(tmp_path / f"{rig}.git", files=files) for rig in ("web", "api")}


@pytest.fixture
def town(cli: Cli, remotes: dict[str, Path], request: pytest.FixtureRequest) -> Iterator[Path]:
    caps = "[polecats]\nmax = 20\nmax_respawns = 1\n"
    cap = getattr(request, "param", 20)  # the town's polecat cap
    root = script_town(cli, remotes["web"], town_toml=f"max_polecats = {cap}\n",
                       rig_toml=caps + GATE)
    cli.ok("rig", "add", "api", str(remotes["api"]))
    api = root / "api" / "rig.toml"
    api.write_text(api.read_text() + caps + GATE)
    yield root
    tear_down_town(cli, root)


def bead(cli: Cli, rig: str, name: str, script: str | None = None, *extra: str) -> str:
    """A bead whose script writes ``<name>.txt`` (or runs ``script``)."""
    return cli.ok("bead", "create", name, "--rig", rig, "-d",
                  script or f"echo {name} > {name}.txt", *extra).strip()


def convoy_events(cli: Cli) -> list[dict[str, Any]]:
    return [e for e in events(cli) if e["kind"] in CONVOY_KINDS]


def shown(cli: Cli, convoy: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cli.ok("convoy", "show", convoy, "--json"))
    return result


def assert_each_once(found: list[dict[str, Any]]) -> None:
    """The convoy's events form one chain, each a real change from the one before: an
    event written twice (or relayed twice to the feed) would repeat its predecessor."""
    assert len({e["seq"] for e in found}) == len(found)
    for before, event in itertools.pairwise(found):
        if event["kind"] in ("convoy_progress", "convoy_landed", "convoy_stuck"):
            assert event["old"] == before["state"], (before, event)
        assert (before["state"], before["closed"], before.get("bead")) != (
            event["state"], event["closed"], event.get("bead")), (before, event)


def test_a_convoy_over_two_rigs_lands_once(cli: Cli, town: Path, feed: FeedWaiter,
                                           remotes: dict[str, Path]) -> None:
    cli.ok("up")
    beads = [bead(cli, "web", "w1"), bead(cli, "web", "w2"), bead(cli, "api", "a1")]
    convoy = cli.ok("convoy", "create", "feature X", *beads).strip()
    assert convoy.startswith("cv-")
    text = cli.ok("status")
    assert f"convoy:         {convoy} feature X: 0/3 merged" in text
    [listed] = status(cli)["convoys"]
    assert (listed["id"], listed["progress"], listed["state"]) == (convoy, "0/3 merged", "open")

    out = cli.ok("convoy", "sling", convoy)
    assert len(out.splitlines()) == 3, out
    feed.wait("convoy_landed", where=lambda e: e.get("convoy") == convoy, timeout=180,
              what="the convoy to land")
    detail = shown(cli, convoy)
    assert (detail["state"], detail["progress"]) == ("landed", "3/3 merged")
    for b in detail["beads"]:
        assert b["status"] == "closed" and b["mr_state"] == "merged" and b["merged_commit"]
        remote = remotes[b["rig"]]
        assert git("show", f"main:{b['title']}.txt", cwd=remote).strip() == b["title"]
    found = convoy_events(cli)
    assert [e["kind"] for e in found].count("convoy_landed") == 1
    assert [(e["kind"], e["closed"]) for e in found] == [
        ("convoy_created", 0), ("convoy_progress", 1), ("convoy_progress", 2),
        ("convoy_landed", 3)]
    assert_each_once(found)
    assert status(cli)["convoys"] == []  # landed: no longer in status
    assert "LANDED: feature X (3/3 merged)" in cli.ok("feed")
    listing = json.loads(cli.ok("convoy", "list", "--json"))
    assert [(c["id"], c["state"]) for c in listing] == [(convoy, "landed")]


def test_a_rejected_bead_makes_it_stuck_until_fixed(cli: Cli, town: Path,
                                                     feed: FeedWaiter) -> None:
    cli.ok("up")
    good = bead(cli, "api", "good")
    bad = bead(cli, "web", "bad", "echo oops > broken")
    convoy = cli.ok("convoy", "create", "feature Y", good, bad).strip()
    cli.ok("sling", "--convoy", convoy, "web")  # both into web: --convoy RIG wins
    stuck = feed.wait("convoy_stuck", where=lambda e: e.get("convoy") == convoy,
                      timeout=180, what="the convoy to be stuck on the rejected bead")
    assert stuck["bead"] == bad and "rejected" in stuck["reason"]
    detail = shown(cli, convoy)
    assert detail["state"] == "stuck" and detail["stuck_bead"] == bad
    assert f"stuck on {bad} (rejected: " in cli.ok("convoy", "list")
    assert f"stuck on {bad}" in cli.ok("status")

    # The fix: a script that passes the gate, then the convoy slung again (only `bad` is
    # open without a sling: `good` may still be in flight or merged).
    cli.ok("bead", "update", bad, "-d", "echo fixed > bad.txt")
    wait_until(lambda: shown(cli, convoy)["beads"][0]["status"] == "closed",
               what="the good bead to merge")
    out = cli.ok("convoy", "sling", convoy)
    assert len(out.splitlines()) == 1, out
    feed.wait("convoy_landed", where=lambda e: e.get("convoy") == convoy, timeout=180,
              what="the convoy to land after the fix")
    found = convoy_events(cli)
    kinds = [e["kind"] for e in found]
    assert kinds.count("convoy_landed") == 1 and kinds.count("convoy_stuck") == 1
    assert_each_once(found)
    assert shown(cli, convoy)["state"] == "landed"


def supervisor_pid(cli: Cli) -> int:
    pid = status(cli)["supervisor"]["pid"]
    assert isinstance(pid, int)
    return pid


def spawn_order(found: list[dict[str, Any]], ids: dict[str, str]) -> list[str]:
    """The beads' names in the order their first polecat spawned."""
    names = {bead_id: name for name, bead_id in ids.items()}
    out: list[str] = []
    for e in found:
        name = names.get(str(e.get("bead")))
        if e["kind"] == "polecat_spawning" and name is not None and name not in out:
            out.append(name)
    return out


def first_index(found: list[dict[str, Any]], kind: str, bead_id: str) -> int:
    return next(i for i, e in enumerate(found) if e["kind"] == kind and e.get("bead") == bead_id)


@pytest.mark.parametrize("town", [1], indirect=True)
def test_acceptance_needs_priority_stuck_fixed_landed_with_kill_9(
        cli: Cli, town: Path, feed: FeedWaiter, remotes: dict[str, Path]) -> None:
    """The issue's acceptance: a convoy of 8 beads over 2 rigs, a chain of needs (w0 <- w1
    <- w2 <- a0, the last across rigs), priorities, one bead (a3) rejected by its gate; the
    town has one polecat slot, so the mayor's order shows. Slung while the town is down;
    mid-way the mayor is held inside a spawn and killed -9 with the supervisor. The convoy
    goes stuck naming a3, is fixed and slung again, and lands: every convoy event in the
    feed exactly once, one ``convoy_landed``."""
    specs = [("web", "w0", "2", ()), ("web", "w1", "2", ("w0",)), ("web", "w2", "1", ("w1",)),
             ("web", "w3", "0", ()), ("api", "a0", "3", ("w2",)), ("api", "a1", "1", ()),
             ("api", "a2", "2", ()), ("api", "a3", "0", ())]
    ids: dict[str, str] = {}
    for rig, name, priority, needs in specs:
        script = "echo oops > broken" if name == "a3" else None
        extra = ["-p", priority] + (["--needs", ",".join(ids[n] for n in needs)] if needs
                                    else [])
        ids[name] = bead(cli, rig, name, script, *extra)
    convoy = cli.ok("convoy", "create", "feature Z", *ids.values()).strip()
    out = cli.ok("convoy", "sling", convoy)
    assert out.count("the town is down") == 8, out

    hold = town.parent / "hold-mayor"  # absent: the fail point lets spawns pass
    cli.env["GASTOWN_FAULTS"] = f"mayor@sling.after_session=hang-while:{hold}"
    cli.ok("up")
    del cli.env["GASTOWN_FAULTS"]
    feed.wait("convoy_progress", where=lambda e: e.get("convoy") == convoy
              and int(e.get("closed", 0)) >= 2, timeout=240, what="two beads merged")
    hold.touch()  # a spawn from now on holds the mayor after its agent's session started
    wait_until(lambda: any(p["state"] == "spawning" and p["session_alive"]
                           for p in polecats(cli).values()), timeout=240,
               what="the mayor to be held inside a spawn")
    os.kill(role_processes(town)["mayor"], signal.SIGKILL)
    os.kill(supervisor_pid(cli), signal.SIGKILL)
    wait_until(lambda: role_processes(town) == {}, what="the roles to follow the supervisor")
    hold.unlink()
    cli.ok("up")

    wait_until(lambda: shown(cli, convoy)["closed"] == 7, timeout=300,
               what="the seven good beads to merge")
    detail = shown(cli, convoy)
    assert (detail["state"], detail["stuck_bead"]) == ("stuck", ids["a3"]), detail
    assert "rejected" in detail["stuck_reason"]
    cli.ok("bead", "update", ids["a3"], "-d", "echo fixed > a3.txt")
    assert len(cli.ok("convoy", "sling", convoy).splitlines()) == 1
    feed.wait("convoy_landed", where=lambda e: e.get("convoy") == convoy, timeout=240,
              what="the convoy to land after the fix")

    found = events(cli)
    mine = [e for e in found if e["kind"] in CONVOY_KINDS]
    kinds = [e["kind"] for e in mine]
    assert kinds.count("convoy_landed") == 1 and kinds.count("convoy_stuck") == 1, kinds
    assert_each_once(mine)
    assert [e["kind"] for e in found].count("supervisor_started") == 2
    order = spawn_order(found, ids)
    # One slot: the ready beads by priority, then age (w3 and a3 at 0, a1 at 1, w0 at 2) ...
    names = {bead_id: name for name, bead_id in ids.items()}
    assert order[:4] == ["w3", "a3", "a1", "w0"], (order, [
        f"{e['seq']} {e['kind']} {names.get(str(e.get('bead')), '')} {e.get('polecat', '')} "
        f"{e.get('reason') or ''}"[:160] for e in found
        if str(e["kind"]).startswith(("polecat_", "sling_", "mr_", "supervisor_", "role_ready"))])
    # ... and no bead before its need merged (the chain, across rigs for a0).
    for _rig, name, _priority, needs in specs:
        for need in needs:
            assert first_index(found, "polecat_spawning", ids[name]) > first_index(
                found, "mr_merged", ids[need]), (name, need)
    for rig, name, _priority, _needs in specs:
        assert git("show", f"main:{name}.txt", cwd=remotes[rig]).strip() in (name, "fixed")


def test_bad_input_is_one_line_and_exit_1(cli: Cli, town: Path) -> None:
    """Unknown convoys and beads: one ``gastown:`` line, exit 1, nothing written; a
    sling with both beads and --convoy is a usage error (exit 2). The town is down."""
    one = bead(cli, "web", "one")
    assert json.loads(cli.ok("convoy", "list", "--json")) == []
    assert cli.ok("convoy", "list").strip() == "no convoys"
    for args, message in [
            (("convoy", "show", "cv-zzzzz"), "gastown: no convoy 'cv-zzzzz'"),
            (("convoy", "create", "X", one, "web-zzzzz"), "gastown: no bead 'web-zzzzz'"),
            (("convoy", "create", "X", one, one), f"gastown: bead {one} is named twice"),
            (("convoy", "add", "cv-zzzzz", one), "gastown: no convoy 'cv-zzzzz'"),
            (("convoy", "sling", "cv-zzzzz"), "gastown: no convoy 'cv-zzzzz'"),
            (("sling", "--convoy", "cv-zzzzz", "web"), "gastown: no convoy 'cv-zzzzz'")]:
        result = cli(*args)
        assert (result.code, result.err.strip()) == (1, message), args
    assert json.loads(cli.ok("convoy", "list", "--json")) == []
    convoy = cli.ok("convoy", "create", "X", one).strip()
    result = cli("convoy", "remove", convoy, "web-zzzzz")
    assert (result.code, result.err.strip()) == (
        1, f"gastown: bead 'web-zzzzz' is not in convoy {convoy}")
    both = cli("sling", one, "web", "--convoy", convoy)
    assert both.code == 2 and both.err.startswith("gastown: name the beads to sling, or")
    assert "the town is down" in cli.ok("sling", "--convoy", convoy, "web")
    assert "nothing to sling" in cli.ok("convoy", "sling", convoy)
