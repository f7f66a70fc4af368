"""Work is kept whatever the interleaving, and people can bring kept work back.

Real town, bare remote, real gates, real agents (``script`` or custom commands):
- ``done`` racing the mayor's last spawn step (forced with a fail point);
- the mayor killed after the session started, its agent's commit surviving the recovery;
- escalation stopping what is left of a dead session;
- ``done`` by a person in an escalated or rejected worktree: a new merge request;
- why a polecat escalated (its reason, its last output) kept in the store and the feed;
- a sling that cannot be dispatched fails once and leaves the queue.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, git, make_remote
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import (
    beads,
    clone,
    configure,
    events,
    gate,
    polecats,
    role_processes,
    script_town,
    tear_down_town,
    wait_until,
)

AGENTS = (
    '[agents.quitter]\ncommand = ["sh", "-c", "echo wip >> wip.txt; git add -A; '
    'git commit -qm wip; exit 0"]\n'
    '[agents.forker]\ncommand = ["sh", "-c", "sleep 600 & sleep 600 & '
    'echo forked two sleepers; exit 0"]\n'
    '[agents.mybot]\ncommand = ["sleep", "600"]\n'
)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remote.git", files={"README.md": "hello\n",
                                                       "check.sh": "test ! -e broken\n"})


@pytest.fixture
def town(cli: Cli, remote: Path) -> Iterator[Path]:
    root = script_town(cli, remote, town_toml="max_polecats = 20\n" + AGENTS,
                       rig_toml="[polecats]\nmax = 20\nmax_respawns = 2\n"
                                '[[merge_queue.gates]]\nname = "test"\ncommand = "sh check.sh"\n')
    yield root
    tear_down_town(cli, root)


def polecat_of(cli: Cli, bead: str) -> dict[str, object] | None:
    return next((p for p in polecats(cli).values() if p["bead"] == bead), None)


def settled(cli: Cli, feed: FeedWaiter, bead: str, after: int = 0) -> str:
    """The bead's status once it was closed or blocked (its event in the feed, from index
    ``after``)."""
    feed.wait("bead_status_changed", bead=bead, after=after, timeout=120,
              where=lambda e: e.get("new") in ("closed", "blocked"),
              what=f"bead {bead} to be closed or blocked")
    return str(beads(cli)[bead]["status"])


def sling_in_background(cli: Cli, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "sling", *args],
                            env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def never_blocked(cli: Cli, bead: str) -> bool:
    return not any(e["kind"] == "bead_status_changed" and e.get("bead") == bead
                   and e.get("new") == "blocked" for e in events(cli))


def test_done_while_the_polecat_is_still_spawning(cli: Cli, town: Path, feed: FeedWaiter,
                                                  remote: Path) -> None:
    """The agent runs `done` before the mayor marks it working: accepted, merged, never
    blocked; the mayor's late last step changes nothing."""
    hold = town.parent / "hold-mayor"
    hold.touch()
    cli.env["GASTOWN_FAULTS"] = f"mayor@sling.after_session=hang-while:{hold}"
    cli.ok("up")
    del cli.env["GASTOWN_FAULTS"]
    bead = cli.ok("bead", "create", "fast", "--rig", "web", "-d", "echo fast > fast.txt").strip()
    slinger = sling_in_background(cli, bead, "web")
    logs = town / "logs" / "sessions"

    def done_ran() -> bool:  # the script agent prints what `gastown done` answered
        return any(line.startswith(("done:", "gastown:"))
                   for log in logs.glob("web-*.log")
                   for line in log.read_text(errors="replace").splitlines())

    wait_until(done_ran, what="the agent to run `gastown done` while the mayor is held")
    polecat = polecat_of(cli, bead)
    assert polecat is None or polecat["state"] in ("done", "merging"), polecat
    hold.unlink()
    _out, err = slinger.communicate(timeout=120)
    assert slinger.returncode == 0, err
    assert settled(cli, feed, bead) == "closed"
    assert never_blocked(cli, bead)
    assert git("show", "main:fast.txt", cwd=remote) == "fast\n"
    assert not any(e["kind"] == "sling_failed" for e in events(cli))
    feed.wait("polecat_nuked", bead=bead, what="the merged polecat to be nuked")
    assert not polecats(cli)


def test_spawn_recovery_keeps_committed_work(cli: Cli, town: Path, feed: FeedWaiter,
                                             remote: Path) -> None:
    """kill -9 of the mayor after the session started; the agent commits and exits without
    done; the restarted mayor keeps the commit (submitted as an MR) and it lands."""
    hold = town.parent / "hold-mayor"
    hold.touch()
    cli.env["GASTOWN_FAULTS"] = f"mayor@sling.after_session=hang-while:{hold}"
    cli.ok("up")
    del cli.env["GASTOWN_FAULTS"]
    bead = cli.ok("bead", "create", "commits then quits", "--rig", "web").strip()
    slinger = sling_in_background(cli, bead, "web", "--agent", "quitter")

    def committed_and_exited() -> bool:
        polecat = polecat_of(cli, bead)
        if polecat is None or polecat["state"] != "spawning" or polecat["session_alive"]:
            return False
        ahead = subprocess.run(["git", "rev-list", "--count", f"main..{polecat['branch']}"],
                               cwd=clone(town), capture_output=True, text=True, check=False)
        return ahead.stdout.strip() == "1"

    wait_until(committed_and_exited, what="the agent to commit and exit while spawning")
    os.kill(role_processes(town)["mayor"], signal.SIGKILL)
    hold.unlink()  # the restarted mayor recovers; a re-sling (the old bug) would run on
    slinger.communicate(timeout=120)
    assert settled(cli, feed, bead) == "closed"
    assert git("show", "main:wip.txt", cwd=remote) == "wip\n"
    assert "wip" in git("log", "--format=%s", "main", cwd=remote).splitlines()
    assert never_blocked(cli, bead)


def test_escalation_stops_what_is_left_of_the_session(cli: Cli, town: Path,
                                                      feed: FeedWaiter) -> None:
    """An agent that forks `sleep 600` children and exits without done: after the witness
    escalates it, none of its processes remain; its reason and last output are kept."""
    from gastown.roles.adapters.processes import processes_with_env

    cli.ok("up")
    bead = cli.ok("bead", "create", "forks", "--rig", "web").strip()
    name = cli.ok("sling", bead, "web", "--agent", "forker").split()[0]
    feed.wait("polecat_escalated", polecat=name, what="the polecat to be escalated")
    assert polecats(cli)[name]["state"] == "escalated"
    assert processes_with_env({"GASTOWN_TOWN": str(town), "GASTOWN_POLECAT": name}) == []
    polecat = polecats(cli)[name]
    assert "forked two sleepers" in str(polecat["output_tail"])
    assert "without `gastown done`" in str(polecat["reason"])
    (escalated,) = [e for e in events(cli)
                    if e["kind"] == "polecat_escalated" and e.get("polecat") == name]
    assert "forked two sleepers" in str(escalated["tail"])
    listing = cli.ok("polecat", "list")
    assert "without `gastown done`" in listing and "| forked two sleepers" in listing


def test_escalated_work_fixed_by_hand_is_resubmitted(cli: Cli, town: Path, feed: FeedWaiter,
                                                     remote: Path) -> None:
    """The agent escalates with a reason (kept on polecat, bead and feed, with its output);
    a person fixes the work in the worktree and runs `done` there: a new MR, merged."""
    cli.ok("up")
    bead = cli.ok("bead", "create", "fails", "--rig", "web", "-d",
                  "echo trying; exit 3").strip()
    name, path = cli.ok("sling", bead, "web").split()
    worktree = Path(path)
    feed.wait("polecat_escalated", polecat=name, what="the escalation")
    polecat = polecats(cli)[name]
    assert polecat["state"] == "escalated"
    assert "the script failed with exit 3" in str(polecat["reason"])
    assert "trying" in str(polecat["output_tail"])
    shown = beads(cli)[bead]
    assert shown["status"] == "blocked"
    detail = json.loads(cli.ok("bead", "show", bead, "--json"))
    assert detail["reason"] == "escalated by polecat: the script failed with exit 3"
    (escalated,) = [e for e in events(cli)
                    if e["kind"] == "polecat_escalated" and e.get("polecat") == name]
    assert "exit 3" in str(escalated["reason"]) and "trying" in str(escalated["tail"])

    nothing = cli("done", cwd=worktree)
    assert nothing.code == 1 and "nothing to merge" in nothing.err
    assert f"polecat nuke web/{name} --force" in nothing.err
    (worktree / "fixed.txt").write_text("fixed by hand\n")
    dirty = cli("done", cwd=worktree)
    assert dirty.code == 1 and "uncommitted" in dirty.err
    git("add", "fixed.txt", cwd=worktree)
    git("commit", "-qm", "fixed by hand", cwd=worktree)
    mark = feed.mark()
    out = cli.ok("done", cwd=worktree)
    assert "merge request" in out
    assert settled(cli, feed, bead, after=mark) == "closed"
    assert git("show", "main:fixed.txt", cwd=remote) == "fixed by hand\n"
    feed.wait("polecat_nuked", polecat=name, what="the polecat to be nuked")
    assert name not in polecats(cli)


def test_conflict_resolved_by_hand_is_resubmitted(cli: Cli, town: Path, feed: FeedWaiter,
                                                  remote: Path) -> None:
    """Two beads write the same file: one merges, the other is rejected (conflict); a
    person rebases and resolves it in the rejected worktree, runs `done`: merged."""
    # The merge queue waits until both MRs exist: a second polecat spawned after the first
    # merge would start from it and merge cleanly (seen in a fast run).
    configure(town, gate("hold", f"while [ ! -e {town}/release ]; do sleep 0.05; done"))
    cli.ok("up")
    one = cli.ok("bead", "create", "one", "--rig", "web", "-d", "echo one > same.txt").strip()
    two = cli.ok("bead", "create", "two", "--rig", "web", "-d", "echo two > same.txt").strip()
    slung = {bead: cli.ok("sling", bead, "web").split() for bead in (one, two)}
    feed.wait_each("mr_created", "bead", (one, two), what="both MRs")
    (town / "release").touch()

    rejected = feed.wait("polecat_rejected", where=lambda e: e.get("bead") in slung,
                         what="the second MR to be rejected (conflict)")
    bead, name = str(rejected["bead"]), str(rejected["polecat"])
    assert slung[bead][0] == name and polecats(cli)[name]["state"] == "rejected"
    other = two if bead == one else one
    assert settled(cli, feed, other) == "closed"
    worktree = Path(slung[bead][1])
    rebase = subprocess.run(["git", "rebase", "main"], cwd=worktree, capture_output=True,
                            text=True, check=False)
    assert rebase.returncode != 0  # the conflict, now in a person's hands
    (worktree / "same.txt").write_text("one\ntwo\n")
    git("add", "same.txt", cwd=worktree)
    git("-c", "core.editor=true", "rebase", "--continue", cwd=worktree)
    mark = feed.mark()
    out = cli.ok("done", cwd=worktree)
    assert "merge request" in out
    assert settled(cli, feed, bead, after=mark) == "closed"
    assert git("show", "main:same.txt", cwd=remote) == "one\ntwo\n"
    resubmitted = [e for e in events(cli) if e["kind"] == "polecat_done"
                   and e.get("polecat") == name and e.get("old") == "rejected"]
    assert len(resubmitted) == 1


def test_undispatchable_sling_fails_once_and_leaves_the_queue(cli: Cli, town: Path) -> None:
    """A queued sling whose agent is gone by dispatch time is failed (one sling_failed
    event), not kept queued: the bead can be slung again and is dispatched once."""
    bead = cli.ok("bead", "create", "for mybot", "--rig", "web").strip()
    cli.ok("sling", bead, "web", "--agent", "mybot")  # queued: the town is down
    config = town / "town.toml"
    with_agent = config.read_text()
    config.write_text(with_agent.replace('[agents.mybot]\ncommand = ["sleep", "600"]\n', ""))
    cli.ok("up")
    other = cli.ok("bead", "create", "after it", "--rig", "web", "-d", "true").strip()
    cli.ok("sling", other, "web")  # dispatched in order, so the first was tried before

    def failed() -> list[dict[str, object]]:
        return [e for e in events(cli) if e["kind"] == "sling_failed" and e.get("bead") == bead]

    first = failed()
    assert len(first) == 1 and "mybot" in str(first[0]["error"])
    assert beads(cli)[bead]["status"] == "open"
    config.write_text(with_agent)
    cli.ok("down")
    cli.ok("up")
    name = cli.ok("sling", bead, "web", "--agent", "mybot").split()[0]
    assert polecats(cli)[name]["bead"] == bead
    assert len(failed()) == 1
    assert [p["bead"] for p in polecats(cli).values()].count(bead) == 1


def test_a_session_started_but_never_recorded_is_adopted(cli: Cli, town: Path,
                                                         feed: FeedWaiter,
                                                         remote: Path) -> None:
    """kill -9 of the mayor between starting an agent and recording its session: the
    restarted mayor finds the live agent by its identity (incarnation included) and adopts
    it instead of killing it; the agent finishes its turn and its own `done` lands."""
    from gastown.roles.adapters.processes import processes_with_env

    hold_mayor, hold_agent = town.parent / "hold-mayor", town.parent / "hold-agent"
    hold_mayor.touch()
    hold_agent.touch()
    cli.env["GASTOWN_FAULTS"] = f"mayor@sling.before_session_recorded=hang-while:{hold_mayor}"
    cli.ok("up")
    del cli.env["GASTOWN_FAULTS"]
    bead = cli.ok("bead", "create", "slow agent", "--rig", "web", "-d",
                  f"while [ -e {hold_agent} ]; do sleep 0.1; done; echo adopted > adopted.txt"
                  ).strip()
    slinger = sling_in_background(cli, bead, "web")

    def agent_leader() -> int | None:
        for pid in processes_with_env({"GASTOWN_TOWN": str(town), "GASTOWN_BEAD": bead}):
            try:
                if os.getpgid(pid) == pid:
                    return pid
            except ProcessLookupError:
                continue
        return None

    agent = wait_until(agent_leader, what="the agent's session to start")
    polecat = polecat_of(cli, bead)
    assert polecat is not None and polecat["state"] == "spawning", polecat
    os.kill(role_processes(town)["mayor"], signal.SIGKILL)
    hold_mayor.unlink()
    feed.wait("polecat_working", bead=bead, what="the restarted mayor to adopt the session")
    assert (polecat_of(cli, bead) or {}).get("state") == "working"
    os.kill(agent, 0)  # the very agent it started lives on: adopted, not killed
    assert (polecat_of(cli, bead) or {}).get("session_alive") is True
    hold_agent.unlink()
    slinger.communicate(timeout=120)
    assert settled(cli, feed, bead) == "closed"
    assert never_blocked(cli, bead)
    assert git("show", "main:adopted.txt", cwd=remote) == "adopted\n"
    kinds = [e["kind"] for e in events(cli) if e.get("bead") == bead]
    assert kinds.count("polecat_spawning") == 1, kinds  # no rollback, no second polecat
