"""Speculative gating (``merge_queue.speculative = true``), end to end: a real town.

While batch k's gates run in the refinery's checkout, batch k+1 is gated on top of k's
candidate in a second checkout (``<rig>/refinery/speculative``). Each gate run records
where it ran and which MRs it tested, so the tests see which result was used, which run
was cancelled, and that no MR is gated twice on the same base.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, git, make_remote
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.test_refinery import (
    SLEEPER,
    commit_in,
    done_in,
    main_log,
    settled,
    sleeper_polecats,
)
from tests.e2e.town_helpers import (
    clone,
    configure,
    gate,
    role_processes,
    script_town,
    tear_down_town,
    wait_until,
)

SPECULATIVE = "[merge_queue]\nspeculative = true\n[polecats]\nmax = 20\n"


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remote.git", files={"README.md": "hello\n"})


@pytest.fixture
def town(cli: Cli, remote: Path, tmp_path: Path) -> Iterator[Path]:
    cli.env["GASTOWN_FAULT_STATE"] = str(tmp_path)
    root = script_town(cli, remote, town_toml="max_polecats = 40\n" + SLEEPER)
    yield root
    tear_down_town(cli, root)


def queue_mrs(cli: Cli, count: int, bad: int | None = None) -> list[str]:
    """``count`` MRs queued while the town is down (so the refinery sees them all at
    once), each adding ``good<i>.txt`` (``bad.txt`` for index ``bad``); their beads."""
    polecats = sleeper_polecats(cli, count)
    cli.ok("down")
    for i, (_bead, worktree) in enumerate(polecats):
        commit_in(worktree, "bad.txt" if i == bad else f"good{i}.txt", f"{i}\n")
        done_in(cli, worktree)
    return [bead for bead, _ in polecats]


def runs(path: Path) -> list[tuple[str, str]]:
    """(where: "main" or "ahead", the MRs tested) for each gate run so far."""
    out = []
    for line in path.read_text().splitlines():
        where, _, mrs = line.partition("|")
        out.append(("ahead" if where.endswith("/speculative") else "main", mrs))
    return out


def strays(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


def test_the_batch_gated_ahead_lands_without_a_second_run(cli: Cli, town: Path,
                                                          feed: FeedWaiter, tmp_path: Path,
                                                          remote: Path) -> None:
    """6 good MRs one at a time: every other one is gated ahead and lands on that result;
    6 gate runs in all, 3 of them in the second checkout."""
    log = tmp_path / "runs.txt"
    configure(town, SPECULATIVE + gate("test", f'echo "$PWD|$GASTOWN_MRS" >> {log}'))
    cli.ok("up")
    queue_mrs(cli, 6)
    cli.ok("up")
    found = settled(cli, feed, 6, timeout=120)
    assert {m["state"] for m in found} == {"merged"}
    done = runs(log)
    print(f"gate runs: {done}")
    assert len(done) == 6 and [w for w, _ in done].count("ahead") == 3
    assert len({mrs for _, mrs in done}) == 6  # no MR gated twice
    assert [s.split(" ", 1)[1] for s in main_log(remote)[:6]][::-1] == \
        [f"edit good{i}.txt" for i in range(6)]
    assert git("status", "--porcelain", cwd=clone(town)).strip() == ""


def test_a_failing_batch_cancels_the_run_ahead_and_only_the_good_land(
        cli: Cli, town: Path, feed: FeedWaiter, tmp_path: Path, remote: Path) -> None:
    """8 MRs, the 5th bad. The run ahead on top of the bad one hangs (its gate sleeps), so
    only the cancellation ends it: it is killed with its process group, the next MR is
    gated again on the real base, and exactly the 7 good land, in queue order."""
    log = tmp_path / "runs.txt"
    marker = "GASTOWN_TEST_SPEC=" + os.urandom(4).hex()
    started = tmp_path / "ahead-started"
    # On top of the bad MR: the run ahead hangs, and the batch's own run fails only once
    # the run ahead is in its gate (so the cancellation has a gate to kill).
    configure(town, SPECULATIVE + gate(
        "test", f'echo "$PWD|$GASTOWN_MRS" >> {log}; test ! -e bad.txt || case $PWD in '
                f'*speculative) touch {started}; export {marker}; sleep 600;; '
                f'*) while [ ! -e {started} ]; do sleep 0.05; done; exit 1;; esac',
        timeout="10m"))
    cli.ok("up")
    beads = queue_mrs(cli, 8, bad=4)
    cli.ok("up")
    found = {m["bead"]: m for m in settled(cli, feed, 8, timeout=180)}
    assert found[beads[4]]["state"] == "rejected"
    assert all(found[b]["state"] == "merged" for i, b in enumerate(beads) if i != 4)
    assert [s.split(" ", 1)[1] for s in main_log(remote)[:7]][::-1] == \
        [f"edit good{i}.txt" for i in range(8) if i != 4]
    done = runs(log)
    print(f"gate runs: {done}")
    ahead_on_bad = [mrs for where, mrs in done if where == "ahead"]
    mr_after_bad = str(found[beads[5]]["id"])
    # The run ahead of the bad batch was for the next MR; it ran again, in the main checkout.
    assert mr_after_bad in ahead_on_bad and ("main", mr_after_bad) in done
    wait_until(lambda: strays(marker) == [], what="the cancelled gate's processes gone")
    assert git("status", "--porcelain", cwd=clone(town)).strip() == ""


@pytest.mark.parametrize("when", ["fail_point", "gate_running"])
def test_kill_9_mid_speculation_converges(cli: Cli, town: Path, feed: FeedWaiter,
                                          tmp_path: Path, remote: Path, when: str) -> None:
    """kill -9 of the refinery while it gates ahead (paused at ``merge.speculating``, or
    with the run ahead's gate running): after the restart the stray gate is gone, every
    MR lands exactly once, gated, and the checkout is clean."""
    log, tested = tmp_path / "runs.txt", tmp_path / "tested.txt"
    marker = "GASTOWN_TEST_SPEC=" + os.urandom(4).hex()
    once = tmp_path / "ahead-once"
    hang = (f"case $PWD in *speculative) test -e {once} || "
            f"{{ touch {once}; export {marker}; sleep 600; }};; esac; "
            if when == "gate_running" else "")
    configure(town, SPECULATIVE + gate(
        "test", f'echo "$PWD|$GASTOWN_MRS" >> {log}; git rev-parse HEAD >> {tested}; {hang}',
        timeout="10m"))
    if when == "fail_point":
        cli.env["GASTOWN_FAULTS"] = "refinery:web@merge.speculating=pause:600:once"
    cli.ok("up")
    beads = queue_mrs(cli, 4)
    cli.ok("up")
    out = town / "logs" / "refinery-web.out"
    if when == "fail_point":
        wait_until(lambda: out.exists() and "pause at refinery:web@merge.speculating"
                   in out.read_text(), what="the refinery to pause while gating ahead")
    else:
        wait_until(lambda: strays(marker), what="the gate ahead to run")
    os.kill(role_processes(town)["refinery:web"], signal.SIGKILL)
    found = settled(cli, feed, 4, timeout=120)
    assert [m["state"] for m in found] == ["merged"] * 4
    subjects = [line.split(" ", 1)[1] for line in main_log(remote)]
    for i in range(4):
        assert subjects.count(f"edit good{i}.txt") == 1
    assert {line.split()[0] for line in main_log(remote)[:4]} <= \
        set(tested.read_text().split())
    wait_until(lambda: strays(marker) == [], what="the stray gate killed by recovery")
    assert git("status", "--porcelain", cwd=clone(town)).strip() == ""
    assert git("rev-parse", "main", cwd=clone(town)).strip() == \
        git("rev-parse", "main", cwd=remote).strip()
    ahead = clone(town).parent / "speculative"
    if ahead.exists():  # recreated after the restart: reused clean
        assert git("status", "--porcelain", cwd=ahead).strip() == ""
    assert len(beads) == 4
