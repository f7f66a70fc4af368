"""Rigs on a local working copy: merged work is never lost, and status says where it is.

The rig's repository is a non-bare repository with ``main`` checked out. Git refuses
pushes to it (or, with ``--push-to-checkout``, refuses them while its tree is dirty), so
merged work lands in the refinery's clone first; ``main`` there only ever moves forward,
and the work reaches the working copy once it accepts a push. Every scenario's teardown
also checks ``tests/invariants.py`` (reflogs never backwards, every merged patch once).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, git, make_repo
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import feed_kinds, new_town_root, tear_down_town, wait_until
from tests.invariants import every_merged_patch_on_main, main_never_moved_backwards


@pytest.fixture
def working_copy(tmp_path: Path) -> Path:
    """A plain repository with ``main`` checked out, as a user's ``~/code/web``."""
    return make_repo(tmp_path / "web", files={"README.md": "hello\n", "notes.txt": "notes\n"})


@pytest.fixture
def town(cli: Cli, tmp_path: Path) -> Iterator[Path]:
    root = new_town_root()
    cli.ok("install", str(root))
    (root / "town.toml").write_text(
        'default_agent = "script"\nmax_polecats = 40\n[sessions]\nbackend = "process"\n'
        '[supervisor]\nstop_timeout = "3s"\nrestart_delay = "0.05s"\n')
    cli.env["GASTOWN_TOWN"] = str(root)
    cli.env["GASTOWN_FAULT_STATE"] = str(tmp_path)
    yield root
    tear_down_town(cli, root)


def clone(town: Path) -> Path:
    return town / "web" / "refinery" / "rig"


def mrs(cli: Cli) -> list[dict[str, object]]:
    return list(json.loads(cli.ok("mq", "list", "--json")))


def settled(cli: Cli, feed: FeedWaiter, count: int,
            timeout: float = 90.0) -> list[dict[str, object]]:
    """The MRs, once ``count`` of them ended (their merged/rejected/cancelled events were in
    the feed); there must be exactly ``count`` and none queued or running."""
    feed.wait_settled(count, timeout=timeout)
    found = mrs(cli)
    assert len(found) == count, found
    assert all(m["state"] not in ("queued", "running") for m in found), found
    return found


def rig_row(cli: Cli) -> dict[str, object]:
    (rig,) = json.loads(cli.ok("rig", "list", "--json"))
    assert isinstance(rig, dict)
    return rig


def sling_files(cli: Cli, names: list[str]) -> list[str]:
    beads = []
    for name in names:
        bead = cli.ok("bead", "create", f"add {name}", "--rig", "web", "-d",
                      f"echo {name} > {name}.txt").strip()
        cli.ok("sling", bead, "web")
        beads.append(bead)
    return beads


def head(repo: Path) -> str:
    return git("rev-parse", "main", cwd=repo).strip()


def files_on_main(repo: Path) -> set[str]:
    return set(git("ls-tree", "--name-only", "main", cwd=repo).split())


def test_dirty_working_copy_keeps_every_merge_then_receives_it(
        cli: Cli, town: Path, feed: FeedWaiter, working_copy: Path) -> None:
    """The issue's scenario: 12 beads merged while the working copy refuses pushes (its
    tree is dirty): all 12 on the clone's main, which never moved back; status says
    where they are; once the tree is clean, one push brings all of them to the copy."""
    cli.ok("rig", "add", "web", str(working_copy), "--push-to-checkout")
    assert git("config", "receive.denyCurrentBranch", cwd=working_copy).strip() == \
        "updateInstead"
    assert "push_to_checkout = true" in (town / "web" / "rig.toml").read_text()
    initial = head(working_copy)
    (working_copy / "notes.txt").write_text("my unsaved notes\n")  # refuses updateInstead
    (town / "web" / "rig.toml").write_text(
        (town / "web" / "rig.toml").read_text() + "[polecats]\nmax = 12\n")
    cli.ok("up")
    names = [f"file{i:02}" for i in range(12)]
    sling_files(cli, names)
    found = settled(cli, feed, 12, timeout=300)
    assert {m["state"] for m in found} == {"merged"}, found

    main_never_moved_backwards(clone(town), "main")
    every_merged_patch_on_main(town, "web")
    assert {f"{n}.txt" for n in names} <= files_on_main(clone(town))
    assert head(working_copy) == initial  # refused: nothing reached the copy yet
    row = rig_row(cli)
    assert row["unpushed"] == 12 and row["landed_head"] == head(clone(town))
    assert "Working directory has unstaged changes" in str(row["push_error"])
    status = cli.ok("status")
    assert f"web: 12 merged commit(s) in {clone(town)} not on the remote yet" in status
    rigs = json.loads(cli.ok("status", "--json"))["rigs"]
    assert rigs[0]["unpushed"] == 12
    assert "push_refused" in feed_kinds(cli)

    # The user saves their notes elsewhere and cleans the tree: the next push lands it all.
    git("checkout", "--", "notes.txt", cwd=working_copy)
    mark = feed.mark()
    cli.ok("mq", "resume", "web")
    feed.wait("push_caught_up", rig="web", after=mark, timeout=120,
              what="the working copy to receive the merged work")
    assert head(working_copy) == head(clone(town))
    assert {f"{n}.txt" for n in names} <= set(p.name for p in working_copy.iterdir())
    assert git("status", "--porcelain", cwd=working_copy).strip() == ""
    assert rig_row(cli)["push_error"] is None
    assert "not on the remote yet" not in cli.ok("status")
    assert "push_caught_up" in feed_kinds(cli)
    every_merged_patch_on_main(town, "web", repo=working_copy)
    main_never_moved_backwards(working_copy, "main")


def test_rig_add_refuses_a_working_copy_with_the_branch_checked_out(
        cli: Cli, town: Path, working_copy: Path, tmp_path: Path) -> None:
    """One line showing the bare set-up, exit 1, and nothing left behind; a copy whose
    default branch is not checked out is accepted; --push-to-checkout needs a copy."""
    result = cli("rig", "add", "web", str(working_copy))
    assert result.code == 1
    assert result.err == (
        f"gastown: {working_copy} is a working copy with main checked out, which git "
        f"refuses pushes to; use a bare repository (git clone --bare {working_copy} "
        f"{working_copy}.git && gastown rig add web {working_copy}.git) or pass "
        "--push-to-checkout to let gastown update that checkout when it is clean\n")
    assert not (town / "web").exists()
    assert json.loads(cli.ok("rig", "list", "--json")) == []
    staging = town / ".runtime" / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    config = git("config", "--list", "--local", cwd=working_copy)
    assert "receive.denycurrentbranch" not in config.lower()

    # The suggested set-up works.
    bare = Path(f"{working_copy}.git")
    git("clone", "-q", "--bare", str(working_copy), str(bare), cwd=tmp_path)
    result = cli("rig", "add", "web", str(bare), "--push-to-checkout")
    assert result.code == 2 and "--push-to-checkout is for a local working copy" in result.err
    cli.ok("rig", "add", "web", str(bare))
    assert "the town is down" in cli.ok("mq", "resume", "web")
    result = cli("mq", "resume", "nope")
    assert result.code == 1 and result.err.startswith("gastown: no rig named 'nope'")

    # A working copy on another branch: pushes to main work, so it is accepted.
    git("switch", "-q", "-c", "dev", cwd=working_copy)
    cli.ok("rig", "add", "api", str(working_copy), "--branch", "main")
    assert {r["name"] for r in json.loads(cli.ok("rig", "list", "--json"))} == {"web", "api"}


def _git_unless_locked(repo: Path, *args: str) -> bool:
    """Run git in ``repo``: True once it ran, False when another git held the index lock
    (try again); any other failure fails the test."""
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0 and "index.lock" in result.stderr:
        return False
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return True


def test_diverged_remote_pauses_the_queue_until_the_user_merges(
        cli: Cli, town: Path, feed: FeedWaiter, working_copy: Path) -> None:
    """Someone commits on the remote while merged work is unpushed: the queue stops with
    the reason (no reset), the new MR stays queued; after the user merges and resumes,
    everything lands exactly once, on the clone and on the working copy."""
    cli.ok("rig", "add", "web", str(working_copy), "--push-to-checkout")
    (working_copy / "notes.txt").write_text("my unsaved notes\n")
    cli.ok("up")
    sling_files(cli, ["a", "b", "c"])
    settled(cli, feed, 3, timeout=180)
    assert rig_row(cli)["unpushed"] == 3
    landed = head(clone(town))

    # Someone else commits on the remote's main (their notes stay uncommitted). The
    # refinery pushes its unpushed work into this checkout after each wake, which holds
    # its index.lock for a moment: a person's git would say so and they would try again.
    (working_copy / "theirs.txt").write_text("someone else\n")
    wait_until(lambda: _git_unless_locked(working_copy, "add", "theirs.txt"),
               what="git add in the working copy")
    wait_until(lambda: _git_unless_locked(working_copy, "commit", "-q", "-m", "their change"),
               what="git commit in the working copy")
    (late,) = sling_files(cli, ["d"])

    def paused() -> dict[str, object] | None:
        row = rig_row(cli)
        queued = [m for m in mrs(cli) if m["bead"] == late and m["state"] == "queued"]
        return row if row["mq_paused"] and queued else None

    feed.wait("mr_created", bead=late, timeout=120)
    feed.wait("mq_paused", rig="web", timeout=120, what="the queue to pause")
    row = paused()
    assert row is not None, (rig_row(cli), mrs(cli))
    reason = str(row["mq_paused"])
    assert reason.startswith("origin/main diverged from 3 landed commit(s) not yet pushed (")
    assert f"git -C {working_copy} pull {clone(town)} main" in reason
    assert "gastown mq resume web" in reason
    assert head(clone(town)) == landed  # nothing reset, nothing landed on top
    main_never_moved_backwards(clone(town), "main")
    assert "merge queue paused: origin/main diverged" in cli.ok("status")
    assert feed_kinds(cli).count("mq_paused") == 1

    # The user does what the reason says (and cleans the tree), then resumes.
    git("checkout", "--", "notes.txt", cwd=working_copy)
    git("pull", "-q", "--no-rebase", "--no-edit", str(clone(town)), "main", cwd=working_copy)
    cli.ok("mq", "resume", "web")
    found = settled(cli, feed, 4, timeout=120)
    assert {m["state"] for m in found} == {"merged"}
    wait_until(lambda: head(working_copy) == head(clone(town)), timeout=60,
               what="the working copy to receive the last merge")
    assert rig_row(cli)["mq_paused"] is None and rig_row(cli)["push_error"] is None
    assert {"a.txt", "b.txt", "c.txt", "d.txt", "theirs.txt"} <= files_on_main(working_copy)
    assert "mq_resumed" in feed_kinds(cli)
    every_merged_patch_on_main(town, "web")
    every_merged_patch_on_main(town, "web", repo=working_copy)
    main_never_moved_backwards(clone(town), "main")
    main_never_moved_backwards(working_copy, "main")


def test_branch_checked_out_later_keeps_the_work_and_start_pushes_it(
        cli: Cli, town: Path, feed: FeedWaiter, working_copy: Path) -> None:
    """A copy on another branch is accepted and pushed to; when the user checks main out,
    merges stay in the clone; after they switch away, the refinery's start pushes them."""
    git("switch", "-q", "-c", "dev", cwd=working_copy)
    cli.ok("rig", "add", "web", str(working_copy), "--branch", "main")
    cli.ok("up")
    sling_files(cli, ["one", "two"])
    settled(cli, feed, 2, timeout=120)
    assert head(working_copy) == head(clone(town))

    git("switch", "-q", "main", cwd=working_copy)
    pushed = head(working_copy)
    sling_files(cli, ["three", "four"])
    found = settled(cli, feed, 4, timeout=120)
    assert {m["state"] for m in found} == {"merged"}
    assert head(working_copy) == pushed
    row = rig_row(cli)
    assert row["unpushed"] == 2 and "branch is currently checked out" in str(row["push_error"])
    every_merged_patch_on_main(town, "web")

    cli.ok("down")
    git("switch", "-q", "dev", cwd=working_copy)
    mark = feed.mark()
    cli.ok("up")
    feed.wait("push_caught_up", rig="web", after=mark, timeout=120,
              what="the refinery's start to push the waiting merges")
    assert head(working_copy) == head(clone(town))
    assert rig_row(cli)["push_error"] is None
    assert {"one.txt", "two.txt", "three.txt", "four.txt"} <= files_on_main(working_copy)
