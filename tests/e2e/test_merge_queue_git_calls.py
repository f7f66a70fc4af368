"""The merge queue's git calls, counted: one ``clean_checkout`` per batch, not two per merge.

A ``git`` wrapper first on the town's ``PATH`` logs every call made in the refinery's
clone (its working directory), then runs the real git. Five MRs, one batch each: the
refinery's checkout is cleaned (``git reset --hard``) once per batch plus once at start
(recovery), and the figures are printed for the record.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, git, make_remote
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import (
    clone,
    configure,
    gate,
    script_town,
    tear_down_town,
    wait_until,
)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remote.git", files={"README.md": "hello\n"})


@pytest.fixture
def calls(tmp_path: Path) -> Path:
    return tmp_path / "git-calls.log"


@pytest.fixture
def town(cli: Cli, remote: Path, tmp_path: Path, calls: Path) -> Iterator[Path]:
    real = shutil.which("git")
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\nparent=$(tr "\\\\000" " " < /proc/$PPID/cmdline)\n'
                       f'printf "%s\\t%s\\t%s\\n" "$PWD" "$parent" "$*" >> {calls}\n'
                       f'exec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    cli.env["PATH"] = f"{bin_dir}{os.pathsep}{cli.env['PATH']}"
    root = script_town(cli, remote)
    yield root
    tear_down_town(cli, root)


def refinery_calls(calls: Path, checkout: Path) -> list[str]:
    """The git commands the refinery ran in its checkout (its working directory)."""
    out = []
    for line in calls.read_text().splitlines():
        cwd, parent, args = line.split("\t", 2)
        if Path(cwd).resolve() == checkout.resolve() and "gastown.roles refinery:" in parent:
            out.append(args)
    return out


def _land_one_file_each(cli: Cli, feed: FeedWaiter, count: int) -> None:
    """Start the town, then sling ``count`` beads one after the other, each adding a file,
    each settled (merged or rejected) before the next."""
    cli.ok("up")
    for i in range(count):
        bead = cli.ok("bead", "create", f"file {i}", "--rig", "web", "-d",
                      f"echo {i} > file{i}.txt").strip()
        cli.ok("sling", bead, "web")
        feed.wait_settled(i + 1, timeout=90)


def test_one_clean_checkout_per_batch(cli: Cli, town: Path, feed: FeedWaiter,
                                      calls: Path, remote: Path) -> None:
    configure(town, gate("test", "true"))
    _land_one_file_each(cli, feed, 5)
    seen = refinery_calls(calls, clone(town))
    by_command = Counter(args.split()[0] for args in seen)
    resets = sum(args.startswith("reset") for args in seen)
    print(f"git calls in the refinery's checkout for 5 MRs: {len(seen)} "
          f"({dict(sorted(by_command.items()))}); clean_checkouts: {resets}")
    # Recovery at start resets once; a batch's clean is a forced checkout and a clean.
    assert resets <= 1
    # The candidate rebased into the pristine checkout is gated where it is (no second
    # checkout and clean); the push is verified by the remote-tracking branch (no
    # ls-remote) and the branch moved by update-ref (no checkout of the old tip and
    # merge): about 10 commands per MR, 18 before.
    assert not [a for a in seen if a.startswith(("ls-remote", "merge "))], seen
    assert sum(a.startswith("update-ref") for a in seen) == 5
    # The rebase starts from the pristine checkout (``rebase ONTO HEAD``): no checkout of
    # the polecat's head first, which rewrote every file changed since it branched.
    assert sum(a.startswith("checkout") for a in seen) <= 1 + 5, seen
    assert not [a for a in seen if a.startswith("checkout") and "--detach" in a], seen
    # The start's recovery, then each MR (git's maintenance check, after each batch
    # here since the queue empties each time, aside).
    work = [a for a in seen if not a.startswith("maintenance")]
    assert len(work) <= 12 + 11 * 5, work
    assert git("status", "--porcelain", cwd=clone(town)).strip() == ""
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=clone(town)).strip() == "main"
    assert git("rev-parse", "main", cwd=clone(town)) == git("rev-parse", "main", cwd=remote)
    assert git("rev-list", "--count", "main", cwd=remote).strip() == "6"


def _maintenance_runs(trace: Path) -> list[list[str]]:
    """The ancestry (nearest first) of every ``git maintenance run`` in a trace2 log."""
    starts: dict[str, bool] = {}
    found: list[list[str]] = []
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "start":
            starts[event["sid"]] = event["argv"][1:3] == ["maintenance", "run"]
        elif event["event"] == "cmd_ancestry" and starts.get(event["sid"]):
            found.append(list(event["ancestry"]))
    return found


def test_git_maintenance_is_the_refinerys_not_every_commands(
        cli: Cli, town: Path, feed: FeedWaiter, tmp_path: Path) -> None:
    """The clone's commands (agents' commits in the worktrees, the queue's fetch, rebase
    and merge) start no ``git maintenance run`` of their own: the refinery turned that off
    at its start and runs the check itself between batches."""
    trace = tmp_path / "trace2.json"
    cli.env["GIT_TRACE2_EVENT"] = str(trace)
    configure(town, gate("test", "true"))
    _land_one_file_each(cli, feed, 3)
    assert git("config", "maintenance.auto", cwd=clone(town)).strip() == "false"
    runs = wait_until(lambda: _maintenance_runs(trace) or None,
                      what="the refinery's maintenance check")
    # Each run's parent is the refinery (a Python process), never a git command.
    by_git = [ancestry for ancestry in runs if not ancestry or ancestry[0] == "git"]
    assert by_git == [], by_git
