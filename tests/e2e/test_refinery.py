"""The refinery's merge queue, end to end: a real town, a bare remote, real gates.

Merge requests come from real polecats (the ``script`` agent, or ``sleeper`` agents whose
worktrees the test commits in, then runs ``gastown done`` from the worktree).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, git, make_remote
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import (
    clone,
    configure,
    gate,
    role_processes,
    script_town,
    tear_down_town,
    wait_until,
)

SLEEPER = '[agents.sleeper]\ncommand = ["sleep", "600"]\n'


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A bare repository standing for the rig's remote, with one commit on main."""
    return make_remote(tmp_path / "remote.git",
                       files={"README.md": "hello\n", "shared.txt": "line\n"})


@pytest.fixture
def town(cli: Cli, remote: Path, tmp_path: Path) -> Iterator[Path]:
    cli.env["GASTOWN_FAULT_STATE"] = str(tmp_path)
    root = script_town(cli, remote, town_toml="max_polecats = 40\n" + SLEEPER)
    yield root
    tear_down_town(cli, root)


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


def main_log(repo: Path) -> list[str]:
    return git("log", "--first-parent", "--format=%H %s", "main", cwd=repo).splitlines()


def commit_in(worktree: Path, name: str, text: str) -> None:
    (worktree / name).write_text(text)
    git("add", "-A", cwd=worktree)
    git("commit", "-q", "-m", f"edit {name}", cwd=worktree)


def done_in(cli: Cli, worktree: Path) -> None:
    env = {k: v for k, v in cli.env.items() if k != "GASTOWN_TOWN"}
    Cli(cwd=worktree, env=env).ok("done")


def sleeper_polecats(cli: Cli, count: int) -> list[tuple[str, Path]]:
    """``count`` polecats with sleeping agents; returns (bead, worktree) pairs."""
    out = []
    for i in range(count):
        bead = cli.ok("bead", "create", f"task {i}", "--rig", "web").strip()
        _, path = cli.ok("sling", bead, "web", "--agent", "sleeper").split()
        out.append((bead, Path(path)))
    return out


def test_five_mrs_land_in_order_as_fast_forwards(cli: Cli, town: Path, feed: FeedWaiter,
                                                 tmp_path: Path, remote: Path) -> None:
    """Five MRs on different files land in queue order, each gated as rebased, no merges."""
    tested = tmp_path / "tested.txt"
    configure(town, gate("test", f"git rev-parse HEAD >> {tested}"))
    cli.ok("up")
    beads = []
    for i in range(5):
        bead = cli.ok("bead", "create", f"file {i}", "--rig", "web", "-d",
                      f"echo {i} > file{i}.txt").strip()
        cli.ok("sling", bead, "web")
        beads.append(bead)
        settled(cli, feed, i + 1)
    found = mrs(cli)
    assert {m["state"] for m in found} == {"merged"}
    by_created = sorted(found, key=lambda m: float(m["created_at"]))  # type: ignore[arg-type]
    log = main_log(clone(town))
    assert [line.split(" ", 1)[1].split(":")[0] for line in log[:5]][::-1] == \
        [str(m["bead"]) for m in by_created]
    assert git("log", "--merges", "--format=%H", "main", cwd=clone(town)).strip() == ""
    tips = {line.split()[0] for line in log[:5]}
    assert tips <= set(tested.read_text().split())
    assert git("rev-parse", "main", cwd=remote).strip() == log[0].split()[0]
    assert all(json.loads(cli.ok("bead", "show", b, "--json"))["status"] == "closed"
               for b in beads)
    assert git("status", "--porcelain", cwd=clone(town)).strip() == ""


def test_same_line_conflict_rejects_the_second(cli: Cli, town: Path, feed: FeedWaiter) -> None:
    """Two MRs editing one line: the first lands, the second is a conflict, work kept."""
    cli.ok("up")
    (b1, w1), (b2, w2) = sleeper_polecats(cli, 2)
    commit_in(w1, "shared.txt", "first\n")
    commit_in(w2, "shared.txt", "second\n")
    done_in(cli, w1)
    settled(cli, feed, 1)
    done_in(cli, w2)
    found = {m["bead"]: m for m in settled(cli, feed, 2)}
    assert found[b1]["state"] == "merged"
    assert found[b2]["state"] == "rejected"
    assert str(found[b2]["reason"]).startswith("conflict: shared.txt")
    bead = json.loads(cli.ok("bead", "show", b2, "--json"))
    assert bead["status"] == "open" and bead["reason"].startswith("conflict")
    assert w2.is_dir() and (w2 / "shared.txt").read_text() == "second\n"
    assert git("branch", "--list", f"polecat/{w2.name}", cwd=clone(town)).strip()
    assert (clone(town) / "shared.txt").read_text() == "first\n"
    assert git("status", "--porcelain", cwd=clone(town)).strip() == ""


def test_failing_gate_lands_nothing(cli: Cli, town: Path, feed: FeedWaiter, remote: Path) -> None:
    """A red gate rejects the MR with the gate's name and output; main does not move."""
    configure(town, gate("lint", "true") + gate("test", "echo 'boom: 1 failed'; exit 3"))
    before = git("rev-parse", "main", cwd=remote).strip()
    cli.ok("up")
    bead = cli.ok("bead", "create", "x", "--rig", "web", "-d", "echo x > x.txt").strip()
    cli.ok("sling", bead, "web")
    (mr,) = settled(cli, feed, 1)
    assert mr["state"] == "rejected" and mr["reason"] == "gate test (exit 3)"
    history = [json.loads(line) for line in cli.ok("feed", "--json").splitlines()]
    rejected = [e for e in history if e["kind"] == "mr_rejected"]
    assert "boom: 1 failed" in rejected[-1]["tail"]
    assert git("rev-parse", "main", cwd=remote).strip() == before
    assert git("rev-parse", "main", cwd=clone(town)).strip() == before
    assert "boom" in Path(str(mr["log"])).read_text()


def test_hanging_gate_is_killed_with_its_children(cli: Cli, town: Path, feed: FeedWaiter) -> None:
    """A gate past its timeout dies with its whole process group; nothing lands."""
    marker = "GASTOWN_TEST_HANG=" + os.urandom(4).hex()
    configure(town, gate("test", f"export {marker}; sleep 600 & sleep 600", timeout="2s"))
    cli.ok("up")
    bead = cli.ok("bead", "create", "x", "--rig", "web", "-d", "echo x > x.txt").strip()
    cli.ok("sling", bead, "web")
    (mr,) = settled(cli, feed, 1, timeout=60)
    assert mr["state"] == "rejected" and mr["reason"] == "gate test (timed out)"

    def strays() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/environ"
                                                               ).read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
        return found

    wait_until(lambda: strays() == [], what="no process of the gate")


def test_remote_moved_by_someone_else_is_rebased_on(cli: Cli, town: Path, feed: FeedWaiter,
                                                    remote: Path, tmp_path: Path) -> None:
    """A commit pushed to the remote while the MR is gated is kept; the MR lands on it."""
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(remote), str(other)], check=True)
    commit_in(other, "theirs.txt", "someone else\n")
    once = tmp_path / "pushed-once"
    configure(town, gate("test", f"test -e {once} || (touch {once} && git -C {other} push -q "
                                 "origin main)"))
    cli.ok("up")
    bead = cli.ok("bead", "create", "mine", "--rig", "web", "-d", "echo me > mine.txt").strip()
    cli.ok("sling", bead, "web")
    (mr,) = settled(cli, feed, 1)
    assert mr["state"] == "merged"
    files = git("ls-tree", "--name-only", "main", cwd=remote).split()
    assert "theirs.txt" in files and "mine.txt" in files
    assert git("rev-parse", "main", cwd=remote).strip() == \
        git("rev-parse", "main", cwd=clone(town)).strip()
    log = main_log(remote)
    assert log[0].split(" ", 1)[1].startswith(bead) and "edit theirs.txt" in log[1]
    kinds = [json.loads(line)["kind"] for line in cli.ok("feed", "--json").splitlines()]
    assert "mr_merged" in kinds


def test_a_push_by_someone_else_between_two_batches_is_built_on(
        cli: Cli, town: Path, feed: FeedWaiter, remote: Path, tmp_path: Path) -> None:
    """Between two batches of a busy queue the refinery does not fetch again (at most every
    FETCH_EVERY seconds): a commit someone else pushed meanwhile is found by the next push,
    which the remote refuses; the batch is rebuilt on it and lands, nothing rejected."""
    cli.ok("up")
    first = cli.ok("bead", "create", "first", "--rig", "web", "-d", "echo 1 > first.txt").strip()
    cli.ok("sling", first, "web")
    settled(cli, feed, 1)
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(remote), str(other)], check=True)
    commit_in(other, "theirs.txt", "someone else\n")
    git("push", "-q", "origin", "main", cwd=other)
    second = cli.ok("bead", "create", "second", "--rig", "web", "-d",
                    "echo 2 > second.txt").strip()
    cli.ok("sling", second, "web")
    found = {m["bead"]: m["state"] for m in settled(cli, feed, 2)}
    assert found == {first: "merged", second: "merged"}
    log = main_log(remote)
    assert [line.split(" ", 1)[1].split(":")[0] for line in log[:3]] == \
        [second, "edit theirs.txt", first]
    assert git("rev-parse", "main", cwd=remote) == git("rev-parse", "main", cwd=clone(town))


def test_batch_of_16_with_one_bad_bisects_within_budget(cli: Cli, town: Path, feed: FeedWaiter,
                                                        tmp_path: Path) -> None:
    """16 MRs, one bad, a gate that takes a moment: the good 15 land, the bad one is
    rejected, ≤ 10 runs."""
    runs = tmp_path / "runs.txt"
    configure(town, "[merge_queue]\nbatch_size = 16\n[polecats]\nmax = 20\n" +
              gate("test", f"echo run >> {runs}; sleep 0.5; test ! -e bad.txt"))
    cli.ok("up")
    polecats = sleeper_polecats(cli, 16)
    cli.ok("down")  # record all 16 MRs while the refinery is away: one batch at the next up
    for i, (_bead, worktree) in enumerate(polecats):
        commit_in(worktree, "bad.txt" if i == 9 else f"good{i}.txt", f"{i}\n")
        done_in(cli, worktree)
    cli.ok("up")
    found = {m["bead"]: m for m in settled(cli, feed, 16, timeout=180)}
    bad = polecats[9][0]
    assert found[bad]["state"] == "rejected"
    assert all(m["state"] == "merged" for b, m in found.items() if b != bad)
    print(f"gate runs for 16 MRs with 1 bad: {len(runs.read_text().split())}")
    assert len(runs.read_text().split()) <= 2 + 2 * 4
    files = git("ls-tree", "--name-only", "main", cwd=clone(town)).split()
    assert "bad.txt" not in files and sum(f.startswith("good") for f in files) == 15
    # Each MR is recorded at its own commit on main, not at its batch's last.
    subjects = dict(line.split(" ", 1) for line in main_log(clone(town)))
    assert all(subjects[str(found[bead]["merged_commit"])] == f"edit good{i}.txt"
               for i, (bead, _) in enumerate(polecats) if i != 9)


def test_auto_batch_size_grows_and_bisects_out_the_bad_one(cli: Cli, town: Path,
                                                           feed: FeedWaiter,
                                                           tmp_path: Path) -> None:
    """batch_size = "auto", 8 MRs, one bad: batches of 1, 2, then 4 (which fails and is
    bisected); exactly the 7 good land, in queue order, and the bad one is rejected."""
    runs = tmp_path / "runs.txt"
    configure(town, '[merge_queue]\nbatch_size = "auto"\n[polecats]\nmax = 20\n' +
              gate("test", f"echo $GASTOWN_MRS >> {runs}; test ! -e bad.txt"))
    cli.ok("up")
    polecats = sleeper_polecats(cli, 8)
    cli.ok("down")  # all 8 MRs queued before the refinery looks
    for i, (_bead, worktree) in enumerate(polecats):
        commit_in(worktree, "bad.txt" if i == 5 else f"good{i}.txt", f"{i}\n")
        done_in(cli, worktree)
    cli.ok("up")
    found = {m["bead"]: m for m in settled(cli, feed, 8, timeout=180)}
    bad = polecats[5][0]
    assert found[bad]["state"] == "rejected"
    assert all(m["state"] == "merged" for b, m in found.items() if b != bad)
    sizes = [len(line.split()) for line in runs.read_text().splitlines()]
    print(f"gate runs (MRs per candidate): {sizes}")
    assert sizes[:3] == [1, 2, 4]  # grew while batches passed; the third one failed
    subjects = [line.split(" ", 1)[1] for line in main_log(clone(town))]
    assert subjects[:7][::-1] == [f"edit good{i}.txt" for i in range(8) if i != 5]
    files = git("ls-tree", "--name-only", "main", cwd=clone(town)).split()
    assert "bad.txt" not in files and sum(f.startswith("good") for f in files) == 7


@pytest.mark.parametrize("point", ["merge.before_rebase", "merge.before_gates",
                                   "merge.after_gates", "merge.after_ff", "merge.after_push"])
def test_kill_9_refinery_at_each_step(cli: Cli, town: Path, feed: FeedWaiter, tmp_path: Path,
                                      remote: Path, point: str) -> None:
    """kill -9 mid-merge: after restart every MR lands exactly once, gated, checkout clean."""
    tested = tmp_path / "tested.txt"
    configure(town, gate("test", f"git rev-parse HEAD >> {tested}"))
    cli.env["GASTOWN_FAULTS"] = f"refinery:web@{point}=pause:600:once"
    cli.ok("up")
    beads = [cli.ok("bead", "create", f"f{i}", "--rig", "web", "-d",
                    f"echo {i} > f{i}.txt").strip() for i in range(2)]
    for bead in beads:
        cli.ok("sling", bead, "web")
    out = town / "logs" / "refinery-web.out"
    wait_until(lambda: out.exists() and f"pause at refinery:web@{point}" in out.read_text(),
               what="the refinery to reach the fail point")
    os.kill(role_processes(town)["refinery:web"], signal.SIGKILL)
    found = settled(cli, feed, 2, timeout=60)
    assert [m["state"] for m in found] == ["merged", "merged"]
    log = main_log(remote)
    subjects = [line.split(" ", 1)[1] for line in log]
    for bead in beads:
        assert sum(s.startswith(bead) for s in subjects) == 1
    landed = {line.split()[0] for line in log[:-1]}
    assert landed <= set(tested.read_text().split())
    assert git("status", "--porcelain", cwd=clone(town)).strip() == ""
    assert git("rev-parse", "main", cwd=clone(town)).strip() == log[0].split()[0]


def test_resling_on_conflict_gives_the_bead_a_new_polecat(cli: Cli, town: Path,
                                                          feed: FeedWaiter) -> None:
    """With on_conflict = "resling" a conflicted bead goes to a fresh polecat, told why."""
    configure(town, '[merge_queue]\non_conflict = "resling"\n')
    cli.ok("up")
    (_b1, w1), (b2, w2) = sleeper_polecats(cli, 2)
    commit_in(w1, "shared.txt", "first\n")
    commit_in(w2, "shared.txt", "second\n")
    done_in(cli, w1)
    settled(cli, feed, 1)
    done_in(cli, w2)
    settled(cli, feed, 2)

    working = feed.wait("polecat_working", bead=b2, where=lambda e: e["polecat"] != w2.name,
                        what="the re-slung polecat")
    listed = json.loads(cli.ok("polecat", "list", "--json"))
    (fresh,) = [p for p in listed if p["name"] == working["polecat"] and p["bead"] == b2
                and p["state"] == "working"]
    assert fresh["agent"] == "sleeper"  # the same agent as the attempt that conflicted
    prompt = (town / "web" / "polecats" / f".{fresh['name']}.prompt").read_text()
    assert "conflicted" in prompt and "shared.txt" in prompt
    assert w2.is_dir()  # the first attempt's work is kept


def test_mq_list_shows_the_running_gate(cli: Cli, town: Path, feed: FeedWaiter,
                                        tmp_path: Path) -> None:
    """While a gate runs, mq list says which; afterwards the MR shows as merged."""
    release = tmp_path / "release"
    configure(town, gate("lint", "true") +
              gate("slow-test", f"while [ ! -e {release} ]; do sleep 0.05; done"))
    cli.ok("up")
    bead = cli.ok("bead", "create", "x", "--rig", "web", "-d", "echo x > x.txt").strip()
    cli.ok("sling", bead, "web")
    running = wait_until(lambda: next((m for m in mrs(cli) if m["gate"] == "slow-test"), None),
                         what="the MR to reach the slow gate")
    assert running["state"] == "running" and running["step"] == "gating"
    assert "running: gating (slow-test)" in cli.ok("mq", "list")
    release.touch()
    (mr,) = settled(cli, feed, 1)
    assert mr["state"] == "merged"
    assert "merged as" in cli.ok("mq", "list", "web")
