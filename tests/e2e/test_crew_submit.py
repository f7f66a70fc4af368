"""Crew work into the merge queue: ``gastown done`` in a crew workspace, through a real town.

The MR (kind ``crew``) is gated and landed like a polecat's; nothing is nuked for it (not
even a polecat that happens to share the crew member's name); afterwards the workspace is
brought up to date when its tree is clean, else left as it is with the reason in the feed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, git, make_remote
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import script_town, tear_down_town


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remote.git", files={"README.md": "hello\n",
                                                       "check.sh": "test ! -e broken\n"})


@pytest.fixture
def town(cli: Cli, remote: Path) -> Iterator[Path]:
    root = script_town(cli, remote, town_toml='[agents.sleeper]\ncommand = ["sleep", "600"]\n')
    hold = root.parent / "hold-gate"
    rig_toml = root / "web" / "rig.toml"
    rig_toml.write_text(rig_toml.read_text() + '[[merge_queue.gates]]\nname = "test"\n'
                        f'command = "while [ -e {hold} ]; do sleep 0.1; done; sh check.sh"\n')
    yield root
    tear_down_town(cli, root)


def events(cli: Cli, kind: str) -> list[dict[str, object]]:
    found = [json.loads(line) for line in cli.ok("feed", "--json").splitlines()]
    return [e for e in found if e["kind"] == kind]


def mr_state(cli: Cli, mr: str) -> str:
    return next((str(m["state"]) for m in json.loads(cli.ok("mq", "list", "--json"))
                 if m["id"] == mr), "?")


def test_crew_done_lands_the_branch_and_keeps_the_workspace(cli: Cli, town: Path,
                                                            feed: FeedWaiter,
                                                            remote: Path) -> None:
    """Two submissions from crew 'toast' (a polecat 'toast' works meanwhile): both land;
    the first leaves the workspace on main, the second finds it dirty and leaves it."""
    cli.ok("up")
    busy = cli.ok("bead", "create", "busy", "--rig", "web").strip()
    polecat = cli.ok("sling", busy, "web", "--agent", "sleeper").split()[0]
    assert polecat == "toast"
    workspace = Path(cli.ok("crew", "add", "toast", "--rig", "web").strip())

    nothing = cli("done", cwd=workspace)
    assert nothing.code == 1 and "nothing to merge" in nothing.err
    hold = town.parent / "hold-gate"
    hold.touch()  # the MR stays in the queue until the second `done` has been refused
    (workspace / "crew.txt").write_text("by hand\n")
    git("add", "crew.txt", cwd=workspace)
    git("commit", "-qm", "crew change", cwd=workspace)
    out = cli.ok("done", cwd=workspace)
    mr = out.split()[3]
    assert out.startswith("done: merge request mr-") and "crew/toast" in out
    again = cli("done", cwd=workspace)
    assert again.code == 1 and "already in the merge queue" in again.err
    hold.unlink()

    feed.wait("crew_updated", crew="toast",
              what="the crew workspace to be updated after the merge")
    assert mr_state(cli, mr) == "merged"
    assert git("show", "main:crew.txt", cwd=remote) == "by hand\n"
    (updated,) = events(cli, "crew_updated")
    assert str(updated["detail"]).startswith("updated to main")
    assert git("rev-parse", "HEAD", cwd=workspace) == git("rev-parse", "main", cwd=remote)
    mine = json.loads(cli.ok("polecat", "list", "--json"))
    assert [(p["name"], p["state"], p["session_alive"]) for p in mine] == \
        [(polecat, "working", True)]

    bead = cli.ok("bead", "create", "second crew change", "--rig", "web").strip()
    hold.touch()
    (workspace / "more.txt").write_text("more\n")
    git("add", "more.txt", cwd=workspace)
    git("commit", "-qm", "more crew work", cwd=workspace)
    second = cli.ok("done", "--bead", bead, cwd=workspace).split()[3]
    (workspace / "scratch.txt").write_text("not committed\n")
    before = git("rev-parse", "HEAD", cwd=workspace)
    hold.unlink()
    feed.wait_count("crew_updated", 2, what="the second update")
    assert len(events(cli, "crew_updated")) == 2
    assert mr_state(cli, second) == "merged"
    assert json.loads(cli.ok("bead", "show", bead, "--json"))["status"] == "closed"
    assert "left as it is: 1 uncommitted" in str(events(cli, "crew_updated")[-1]["detail"])
    assert git("rev-parse", "HEAD", cwd=workspace) == before
    assert (workspace / "scratch.txt").read_text() == "not committed\n"
    assert [p["state"] for p in json.loads(cli.ok("polecat", "list", "--json"))] == ["working"]
