"""The CLI for people recovering kept work: editing and closing beads, seeing why work was
kept (bead show, mq list, mq show), queued slings, commands run from a removed directory,
logs by role kind, and checking a rig's gates on a clean checkout (mq check).

Real towns, a bare remote, real gates and agents; the town runs only where the test needs
a polecat or the merge queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, git, make_remote
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import (
    clone,
    configure,
    events,
    gate,
    script_town,
    tear_down_town,
    wait_until,
)

SLEEPER = '[agents.sleeper]\ncommand = ["sleep", "600"]\n'


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remote.git", files={"README.md": "hello\n", "ok.txt": "yes\n"})


@pytest.fixture
def town(cli: Cli, remote: Path) -> Iterator[Path]:
    """A town with rig ``web`` on a bare remote (not started: tests ``up`` when needed)."""
    root = script_town(cli, remote, town_toml="max_polecats = 10\n" + SLEEPER)
    yield root
    tear_down_town(cli, root)


def bead_json(cli: Cli, bead: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cli.ok("bead", "show", bead, "--json"))
    return found


def one_line_error(result: object, code: int, *needles: str) -> None:
    from tests.conftest import CliResult

    assert isinstance(result, CliResult)
    assert result.code == code, (result.code, result.out, result.err)
    assert result.err.startswith("gastown: ") and result.err.count("\n") == 1, result.err
    for needle in needles:
        assert needle in result.err, result.err


# -- item 4: a removed cwd ------------------------------------------------------------------


def run_in_removed_dir(tmp_path: Path, env: dict[str, str],
                       *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``gastown *args`` from a directory removed after the shell entered it."""
    gone = tmp_path / "gone"
    gone.mkdir()
    argv = " ".join(f"'{a}'" for a in [sys.executable, "-m", "gastown.supervisor", *args])
    return subprocess.run(["sh", "-c", f"cd '{gone}' && rmdir '{gone}' && exec {argv}"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_commands_work_from_a_removed_directory(cli: Cli, town: Path, tmp_path: Path) -> None:
    """With --town or $GASTOWN_TOWN a removed cwd does not matter; without, one line."""
    bead = cli.ok("bead", "create", "still here").strip()
    no_env = {k: v for k, v in cli.env.items() if k != "GASTOWN_TOWN"}
    result = run_in_removed_dir(tmp_path, no_env, "--town", str(town), "bead", "show", bead)
    assert result.returncode == 0, result.stderr
    assert "still here" in result.stdout and "Traceback" not in result.stderr
    for command in (["bead", "list"], ["status"], ["mq", "list"], ["feed"], ["rig", "list"]):
        result = run_in_removed_dir(tmp_path, cli.env, *command)
        assert result.returncode == 0 and "Traceback" not in result.stderr, \
            (command, result.stderr)
    for command in (["bead", "list"], ["done"], ["reload"]):
        result = run_in_removed_dir(tmp_path, no_env, *command)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("gastown: ") and result.stderr.count("\n") == 1
        assert "current directory no longer exists" in result.stderr


# -- item 1: bead update, close, reopen (town down) ---------------------------------------


def test_bead_update_edits_fields_and_status_with_events(cli: Cli, town: Path) -> None:
    """update changes title/description/priority and open<->blocked; each change is an
    event; bad input is exit 2, a status that follows the work is refused (exit 1)."""
    bead = cli.ok("bead", "create", "first title", "--rig", "web").strip()
    cli.ok("bead", "update", bead, "--title", "second title", "-d", "echo hi", "-p", "0")
    shown = bead_json(cli, bead)
    assert (shown["title"], shown["description"], shown["priority"]) == (
        "second title", "echo hi", 0)
    cli.ok("bead", "update", bead, "--status", "blocked")
    assert bead_json(cli, bead)["status"] == "blocked"
    cli.ok("bead", "update", bead, "--status", "open")
    kinds = [(e["kind"], e.get("new")) for e in events(cli) if e.get("bead") == bead]
    assert ("bead_updated", None) in kinds
    assert ("bead_status_changed", "blocked") in kinds and ("bead_status_changed", "open") in kinds
    updated = next(e for e in events(cli) if e["kind"] == "bead_updated")
    assert updated["fields"] == ["description", "priority", "title"]
    assert "updated (description, priority, title)" in cli.ok("feed")

    one_line_error(cli("bead", "update", bead), 2, "nothing to update")
    one_line_error(cli("bead", "update", bead, "-p", "7"), 2, "priority")
    one_line_error(cli("bead", "update", bead, "--status", "closed"), 2)
    one_line_error(cli("bead", "update", bead, "--title", "  "), 2, "non-empty title")
    one_line_error(cli("bead", "update", "web-zzzzz", "-p", "1"), 1, "no bead")
    cli.ok("bead", "close", bead)
    one_line_error(cli("bead", "update", bead, "--status", "open"), 1, "bead reopen")


def test_bead_close_refuses_queued_work_and_force_cancels_it(cli: Cli, town: Path) -> None:
    """A queued sling stops a plain close (exit 1, nothing changed); --force cancels the
    sling in the same step; reopen brings the bead back to open; each an event."""
    bead = cli.ok("bead", "create", "later", "--rig", "web").strip()
    cli.ok("sling", bead, "web")  # the town is down: the sling waits in the queue
    one_line_error(cli("bead", "close", bead), 1, "queued sling", "--force")
    assert bead_json(cli, bead)["status"] == "open"
    assert len(bead_json(cli, bead)["queued_slings"]) == 1
    cli.ok("bead", "close", bead, "--force", "--reason", "not needed")
    shown = bead_json(cli, bead)
    assert (shown["status"], shown["reason"], shown["queued_slings"]) == (
        "closed", "not needed", [])
    assert json.loads(cli.ok("status", "--json"))["queued_slings"] == []
    one_line_error(cli("bead", "close", bead), 1, "already closed")
    cli.ok("bead", "reopen", bead)
    assert bead_json(cli, bead)["status"] == "open"
    one_line_error(cli("bead", "reopen", bead), 1, "not closed")
    kinds = [(e["kind"], e.get("new")) for e in events(cli) if e.get("bead") == bead]
    assert ("sling_cancelled", None) in kinds
    assert ("bead_status_changed", "closed") in kinds and ("bead_status_changed", "open") in kinds


def test_bead_close_with_a_commit_verifies_it_is_on_the_default_branch(
        cli: Cli, town: Path, tmp_path: Path) -> None:
    """--commit records a commit of the rig's default branch; a commit elsewhere, or not in
    the repository, is refused in one line and the bead stays open."""
    bead = cli.ok("bead", "create", "done elsewhere", "--rig", "web").strip()
    on_main = git("rev-parse", "main", cwd=clone(town)).strip()
    git("switch", "-q", "-c", "side", cwd=clone(town))
    (clone(town) / "side.txt").write_text("side\n")
    git("add", "-A", cwd=clone(town))
    git("commit", "-q", "-m", "side", cwd=clone(town))
    off_main = git("rev-parse", "HEAD", cwd=clone(town)).strip()
    git("switch", "-q", "main", cwd=clone(town))
    one_line_error(cli("bead", "close", bead, "--commit", off_main[:12]), 1, "not on main")
    one_line_error(cli("bead", "close", bead, "--commit", "deadbeef" * 5), 1,
                   "not in rig web's repository")
    one_line_error(cli("bead", "close", bead, "--commit", "--oops"), 2)
    one_line_error(cli("bead", "close", bead, "--commit", "main~1"), 2, "commit id")
    assert bead_json(cli, bead)["status"] == "open"
    out = cli.ok("bead", "close", bead, "--commit", on_main[:8], "--reason", "landed by hand")
    assert on_main[:10] in out
    shown = bead_json(cli, bead)
    assert (shown["status"], shown["closed_commit"]) == ("closed", on_main)
    assert f"landed:   {on_main}" in cli.ok("bead", "show", bead)
    closed = [e for e in events(cli) if e.get("bead") == bead and e.get("new") == "closed"]
    assert closed and closed[0]["commit"] == on_main
    loose = cli.ok("bead", "create", "no rig").strip()
    one_line_error(cli("bead", "close", loose, "--commit", on_main), 1, "has no rig")


# -- item 3: queued slings with their position ----------------------------------------------


def test_status_and_bead_show_list_queued_slings_with_positions(cli: Cli, town: Path) -> None:
    """Slings queued while the town is down are listed in queue order, position 1 first;
    closing one moves the others up."""
    beads = [cli.ok("bead", "create", f"task {i}", "--rig", "web").strip() for i in range(3)]
    for bead in beads:
        cli.ok("sling", bead, "web")
    queued = json.loads(cli.ok("status", "--json"))["queued_slings"]
    assert [(q["bead"], q["position"], q["rig"]) for q in queued] == [
        (beads[0], 1, "web"), (beads[1], 2, "web"), (beads[2], 3, "web")]
    text = cli.ok("status")
    assert "QUEUED" in text and beads[2] in text
    assert "position 3 in the queue" in cli.ok("bead", "show", beads[2])
    assert [q["position"] for q in bead_json(cli, beads[1])["queued_slings"]] == [2]
    cli.ok("bead", "close", beads[0], "--force")
    assert "position 2 in the queue" in cli.ok("bead", "show", beads[2])


# -- item 5: logs by role kind, feed lists ----------------------------------------------------


def test_logs_accept_a_role_kind_and_list_valid_names(cli: Cli, town: Path) -> None:
    """--role refinery means every rig's refinery; an unknown role lists the names."""
    logs = town / "logs"
    for name, event in (("refinery-web", "from web"), ("refinery-api", "from api"),
                        ("witness-web", "witness line")):
        (logs / f"{name}.log").write_text(json.dumps(
            {"timestamp": "2026-01-01T00:00:00Z", "level": "info", "event": event,
             "role": name.replace("-", ":", 1)}) + "\n")
    out = cli.ok("logs", "--role", "refinery")
    assert "from web" in out and "from api" in out and "witness line" not in out
    out = cli.ok("logs", "--role", "refinery:web")
    assert "from web" in out and "from api" not in out
    result = cli("logs", "--role", "refinary")
    one_line_error(result, 2, "no log for role 'refinary'", "refinery", "refinery:web",
                   "witness:web", "mayor")


def test_feed_prints_lists_as_the_cli_does(cli: Cli, town: Path) -> None:
    """A list in an event (e.g. the fields of bead_updated) reads comma-separated."""
    bead = cli.ok("bead", "create", "x").strip()
    cli.ok("bead", "update", bead, "--title", "y", "-p", "1")
    out = cli.ok("feed")
    assert "updated (priority, title)" in out and "['" not in out


# -- item 6: mq check ------------------------------------------------------------------------


def worktrees(town: Path) -> list[str]:
    return [line.split()[1] for line in git("worktree", "list", "--porcelain",
                                             cwd=clone(town)).splitlines()
            if line.startswith("worktree ")]


def test_mq_check_runs_the_gates_on_the_default_branch_in_a_scratch_worktree(
        cli: Cli, town: Path, tmp_path: Path) -> None:
    """Passing gates: exit 0, each gate's result and the log path; they ran in a scratch
    worktree at main (not the refinery's checkout), which is gone afterwards."""
    where = tmp_path / "where.txt"
    configure(town, gate("where", f"pwd > {where}; git rev-parse HEAD >> {where}; "
                                  "test -f ok.txt") + gate("lint", "echo lint ok"))
    result = cli("mq", "check", "web")
    assert result.code == 0, result.err
    assert "where" in result.out and "lint" in result.out and "passed" in result.out
    log = town / "logs" / "mq" / "web-check.log"
    assert f"gate log: {log}" in result.out and "lint ok" in log.read_text()
    ran_in, commit = where.read_text().split()
    assert Path(ran_in) != clone(town) and not Path(ran_in).exists()
    assert commit == git("rev-parse", "main", cwd=clone(town)).strip()
    assert worktrees(town) == [str(clone(town))]
    assert list((town / "web" / ".check").iterdir()) == []
    assert git("status", "--porcelain", cwd=clone(town)) == ""
    assert json.loads(cli.ok("mq", "check", "web", "--json"))["ok"] is True


def test_mq_check_fails_with_the_tail_and_cleans_up_after_a_failure_or_timeout(
        cli: Cli, town: Path) -> None:
    """A failing gate: exit 1 with its output tail; a gate past its timeout: exit 1; the
    scratch worktree is removed in both cases. rig add --check runs the same check."""
    configure(town, gate("unit", "echo FAILING-TEST-42; exit 3") + gate("never", "true"))
    result = cli("mq", "check", "web")
    assert result.code == 1
    assert "FAILED (exit 3)" in result.out and "| FAILING-TEST-42" in result.out
    assert "never" in result.out and "not run" in result.out
    assert worktrees(town) == [str(clone(town))]
    path = town / "web" / "rig.toml"
    path.write_text(path.read_text().split("[[merge_queue.gates]]")[0]
                    + gate("slow", "echo started; sleep 60", timeout="1s"))
    result = cli("mq", "check", "web")
    assert result.code == 1 and "timed out" in result.out
    assert worktrees(town) == [str(clone(town))]
    assert list((town / "web" / ".check").iterdir()) == []
    one_line_error(cli("mq", "check", "nope"), 1, "no rig")


def test_mq_check_killed_is_cleaned_up_by_the_next_check(cli: Cli, town: Path,
                                                          tmp_path: Path) -> None:
    """kill -9 of a check mid-gate leaves its worktree and gate; the next check stops the
    gate and removes the worktree."""
    from gastown.roles.adapters.processes import is_same_process, process_start_time

    started = tmp_path / "started"
    path = town / "web" / "rig.toml"
    original = path.read_text()
    path.write_text(original + gate("slow", f"echo $$ > {started}; exec sleep 300"))
    check = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "mq", "check", "web"],
                             env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid = int(wait_until(lambda: started.read_text().strip() if started.exists() else None,
                             what="the gate to start"))
    finally:
        check.kill()
        check.wait()
    start_time = process_start_time(pid)
    assert start_time is not None and len(worktrees(town)) == 2
    path.write_text(original + gate("quick", "true"))
    assert cli("mq", "check", "web").code == 0
    assert worktrees(town) == [str(clone(town))]
    assert list((town / "web" / ".check").iterdir()) == []
    wait_until(lambda: not is_same_process(pid, start_time), what="the stray gate to stop")


def test_rig_add_check_reports_gates_of_the_new_rig(cli: Cli, town: Path, remote: Path) -> None:
    """rig add --check adds the rig and runs its gates (none yet: it says how to add them)."""
    result = cli("rig", "add", "api", str(remote), "--check")
    assert result.code == 0, result.err
    assert "added rig api" in result.out and "no gates" in result.out
    assert "mq check api" in result.out


# -- items 1 and 2 with a running town -----------------------------------------------------------


def test_rejected_mr_shows_its_log_tail_and_steps(cli: Cli, town: Path,
                                                  feed: FeedWaiter) -> None:
    """A gate rejection: bead show, mq list and mq show print the gate log path and the
    failing tail; mq show lists the steps with their timings."""
    configure(town, gate("unit", "echo FAILING-TEST-7; exit 1"))
    cli.ok("up")
    bead = cli.ok("bead", "create", "breaks", "--rig", "web", "-d", "echo x > x.txt").strip()
    cli.ok("sling", bead, "web")

    feed.wait("mr_rejected", bead=bead, what="the MR to be rejected")
    (mr,) = [m for m in json.loads(cli.ok("mq", "list", "--json")) if m["bead"] == bead]
    assert mr["state"] == "rejected"
    log = town / "logs" / "mq" / f"web-{mr['id']}.log"
    assert mr["log"] == str(log) and "FAILING-TEST-7" in str(mr["tail"])
    listed = cli.ok("mq", "list")
    assert f"gate log: {log}" in listed and "| FAILING-TEST-7" in listed
    shown = cli.ok("bead", "show", bead)
    assert f"merge request {mr['id']}: rejected" in shown and f"gate log: {log}" in shown
    assert "| FAILING-TEST-7" in shown
    assert bead_json(cli, bead)["merge_requests"][0]["tail"]
    out = cli.ok("mq", "show", str(mr["id"]))
    assert f"{mr['id']}  rejected" in out and f"gate log: {log}" in out
    assert "rebasing" in out and "gating (unit)" in out and "| FAILING-TEST-7" in out
    full = json.loads(cli.ok("mq", "show", str(mr["id"]), "--json"))
    steps = [(s["step"], s["gate"]) for s in full["timings"]]
    assert ("rebasing", None) in steps and ("gating", "unit") in steps
    assert all(s["seconds"] is not None and s["seconds"] >= 0 for s in full["timings"])
    one_line_error(cli("mq", "show", "mr-nope"), 1, "no merge request")


def test_bead_close_force_keeps_the_work_of_live_polecats(cli: Cli, town: Path,
                                                          feed: FeedWaiter) -> None:
    """A bead with a working polecat, and one with a queued MR: close is refused; --force
    stops the agent, cancels the MR, escalates the polecats with the reason, and keeps
    their worktrees and branches; the cancelled MR never lands."""
    cli.ok("up")
    working = cli.ok("bead", "create", "in progress", "--rig", "web").strip()
    name, path = cli.ok("sling", working, "web", "--agent", "sleeper").split()
    one_line_error(cli("bead", "close", working), 1, f"polecat web/{name} (working)")
    (Path(path) / "wip.txt").write_text("wip\n")
    git("add", "-A", cwd=Path(path))
    git("commit", "-q", "-m", "wip", cwd=Path(path))
    pid = json.loads(cli.ok("polecat", "list", "--json"))[0]
    out = cli.ok("bead", "close", working, "--force", "--reason", "superseded")
    assert f"stopped polecat web/{name}" in out and path in out
    polecat = {p["name"]: p for p in json.loads(cli.ok("polecat", "list", "--json"))}[name]
    assert polecat["state"] == "escalated" and "superseded" in str(polecat["reason"])
    wait_until(lambda: not json.loads(cli.ok("polecat", "list", "--json"))[0]["session_alive"],
               what="the agent to be stopped")
    assert pid["session_alive"] is True
    assert (Path(path) / "wip.txt").exists()
    assert git("rev-parse", f"polecat/{name}", cwd=clone(town)).strip() == \
        git("rev-parse", "HEAD", cwd=Path(path)).strip()
    assert bead_json(cli, working)["status"] == "closed"
    shown = cli.ok("bead", "show", working)
    assert f"polecat web/{name}: escalated" in shown and "superseded" in shown

    # A queued MR: made while the refinery is down, so that it stays queued.
    reviewed = cli.ok("bead", "create", "in review", "--rig", "web").strip()
    other, other_path = cli.ok("sling", reviewed, "web", "--agent", "sleeper").split()
    cli.ok("down", "--all")
    (Path(other_path) / "done.txt").write_text("done\n")
    git("add", "-A", cwd=Path(other_path))
    git("commit", "-q", "-m", "done", cwd=Path(other_path))
    env = {k: v for k, v in cli.env.items() if k != "GASTOWN_TOWN"}
    Cli(cwd=Path(other_path), env=env).ok("done")
    mr = json.loads(cli.ok("mq", "list", "--json"))[0]
    assert mr["state"] == "queued"
    one_line_error(cli("bead", "close", reviewed), 1, f"merge request {mr['id']} (queued)")
    out = cli.ok("bead", "close", reviewed, "--force")
    assert f"polecat web/{other} (escalated) keeps its work in {other_path}" in out
    assert json.loads(cli.ok("mq", "show", mr["id"], "--json"))["state"] == "cancelled"
    assert {p["name"]: p["state"] for p in json.loads(cli.ok("polecat", "list", "--json"))
            }[other] == "escalated"
    main_before = git("rev-parse", "main", cwd=clone(town)).strip()
    cli.ok("up")
    bead = cli.ok("bead", "create", "after", "--rig", "web", "-d", "echo a > a.txt").strip()
    cli.ok("sling", bead, "web")
    feed.wait("mr_merged", bead=bead, what="a later bead to merge")
    assert bead_json(cli, bead)["status"] == "closed"
    assert json.loads(cli.ok("mq", "show", mr["id"], "--json"))["state"] == "cancelled"
    landed = git("log", "--format=%s", f"{main_before}..main", cwd=clone(town))
    assert "done" not in landed.split("\n")
    assert Path(other_path, "done.txt").exists() and Path(path, "wip.txt").exists()
    kinds = [e["kind"] for e in events(cli) if e.get("bead") in (working, reviewed)]
    assert "mr_cancelled" in kinds and kinds.count("polecat_escalated") == 2
    assert os.path.isdir(path) and os.path.isdir(other_path)


def test_bead_show_says_why_a_polecat_escalated_with_its_last_output(
        cli: Cli, town: Path, feed: FeedWaiter) -> None:
    """An agent that exits without done, past max_respawns: bead show prints the polecat's
    state, the reason it escalated and the last lines of its session output."""
    (town / "town.toml").write_text((town / "town.toml").read_text() + (
        '[agents.quitter]\ncommand = ["sh", "-c", "echo LAST-WORDS-99; exit 0"]\n'))
    configure(town, "[polecats]\nmax_respawns = 0\n")
    cli.ok("up")
    bead = cli.ok("bead", "create", "gives up", "--rig", "web").strip()
    name, _ = cli.ok("sling", bead, "web", "--agent", "quitter").split()
    feed.wait("bead_status_changed", bead=bead, new="blocked", what="the escalation")
    assert bead_json(cli, bead)["status"] == "blocked"
    shown = cli.ok("bead", "show", bead)
    polecat = bead_json(cli, bead)["polecats"][0]
    assert polecat["state"] == "escalated" and polecat["reason"]
    assert f"polecat web/{name}: escalated ({polecat['reason']})" in shown
    assert "LAST-WORDS-99" in str(polecat["output_tail"])
    assert "| LAST-WORDS-99" in shown
