"""Needs and priority in a running town: real rigs (bare remotes), ``script`` agents, real
gates, the real mayor. Read through the feed's event order (``tests/e2e/feed_waiter.py``):

- a bead of rig ``api`` that needs a bead of rig ``web`` is not dispatched until that bead
  merged: its ``polecat_spawning`` comes after the other's ``mr_merged``;
- with the town capped at one polecat, beads of priorities 3, 0, 1 slung in that order are
  dispatched 0, 1, 3;
- a bead whose need was rejected (a failing gate) stays waiting, ``bead show`` says which
  need blocks it and why, and it is dispatched by itself once a person closes that need.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, make_remote
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import script_town, tear_down_town

GATE = '[[merge_queue.gates]]\nname = "test"\ncommand = "sh check.sh"\n'
FILES = {"README.md": "hello\n", "check.sh": "test ! -e broken\n"}


@pytest.fixture
def town(cli: Cli, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    cap = getattr(request, "param", 20)
    root = script_town(cli, make_remote(tmp_path / "web.git", files=FILES),
                       town_toml=f"max_polecats = {cap}\n",
                       rig_toml="[polecats]\nmax = 20\n" + GATE)
    cli.ok("rig", "add", "api", str(make_remote(tmp_path / "api.git", files=FILES)))
    rig_toml = root / "api" / "rig.toml"
    rig_toml.write_text(rig_toml.read_text() + GATE)
    yield root
    tear_down_town(cli, root)


@pytest.fixture
def feed(cli: Cli, town: Path) -> Iterator[FeedWaiter]:
    with FeedWaiter(cli) as waiter:
        yield waiter


def bead(cli: Cli, title: str, rig: str, script: str, *args: str) -> str:
    return cli.ok("bead", "create", title, "--rig", rig, "-d", script, *args).strip()


def index_of(feed: FeedWaiter, kind: str, bead_id: str) -> int:
    return next(i for i, e in enumerate(feed.seen())
                if e.get("kind") == kind and e.get("bead") == bead_id)


def test_a_bead_is_dispatched_only_after_its_need_in_another_rig_merged(
        cli: Cli, town: Path, feed: FeedWaiter) -> None:
    cli.ok("up")
    first = bead(cli, "the API", "web", "echo api > api.txt")
    second = bead(cli, "use the API", "api", "echo client > client.txt", "--needs", first)
    cycle = cli("bead", "dep", "add", first, second)
    assert cycle.code == 1 and f"({first} -> {second} -> {first})" in cycle.err

    out = cli.ok("sling", second, "api")  # slung first: it waits
    assert f"waiting for {first} (open)" in out
    cli.ok("sling", first, "web")
    feed.wait("mr_merged", bead=first, timeout=120)
    spawned = feed.wait("polecat_spawning", bead=second, timeout=120)
    assert spawned["rig"] == "api"
    assert index_of(feed, "polecat_spawning", second) > index_of(feed, "mr_merged", first)
    feed.wait("mr_merged", bead=second, timeout=120)
    shown = json.loads(cli.ok("bead", "show", second, "--json"))
    assert shown["status"] == "closed" and shown["needs"][0]["status"] == "closed"


@pytest.mark.parametrize("town", [1], indirect=True)
def test_one_slot_dispatches_by_priority_not_by_sling_order(
        cli: Cli, town: Path, feed: FeedWaiter) -> None:
    """The slings are queued while the town is down, so all three are waiting when the
    mayor starts: by sling order it would take priority 3 first."""
    ids = {p: bead(cli, f"priority {p}", "web", f"echo {p} > p{p}.txt", "-p", str(p))
           for p in (3, 0, 1)}
    for p in (3, 0, 1):
        cli.ok("sling", ids[p], "web")
    queue = json.loads(cli.ok("status", "--json"))["queued_slings"]
    assert [q["bead"] for q in queue] == [ids[0], ids[1], ids[3]]
    cli.ok("up")
    spawned = feed.wait_count("polecat_spawning", 3, timeout=180)
    assert [e["bead"] for e in spawned] == [ids[0], ids[1], ids[3]]


def test_a_bead_whose_need_was_rejected_stays_waiting_and_says_why(
        cli: Cli, town: Path, feed: FeedWaiter) -> None:
    cli.ok("up")
    bad = bead(cli, "breaks the gate", "web", "touch broken")
    after = bead(cli, "after it", "web", "echo after > after.txt", "--needs", bad)
    cli.ok("sling", after, "web")
    cli.ok("sling", bad, "web")
    feed.wait("mr_rejected", bead=bad, timeout=120)
    feed.wait("polecat_rejected", bead=bad, timeout=60)
    shown = json.loads(cli.ok("bead", "show", after, "--json"))
    assert shown["state"] == "blocked" and shown["blocked"] is True
    assert shown["waiting"].startswith(f"blocked on {bad}: polecat web/"), shown["waiting"]
    assert "rejected" in shown["waiting"]
    assert shown["queued_slings"] and shown["queued_slings"][0]["waiting"] == shown["waiting"]
    text = cli.ok("bead", "show", after)
    assert f"blocked:  blocked on {bad}" in text
    listed = {b["id"]: b for b in json.loads(cli.ok("bead", "list", "--json"))}
    assert listed[after]["state"] == "blocked"
    assert not [e for e in feed.seen()
                if e.get("kind") == "polecat_spawning" and e.get("bead") == after]

    mark = feed.mark()
    cli.ok("bead", "close", bad, "--reason", "not needed after all")
    feed.wait("polecat_spawning", bead=after, after=mark, timeout=120)
    feed.wait("mr_merged", bead=after, timeout=120)
