"""Slinging beads into polecats, done, nuke, and crash recovery, through the real CLI.

The town runs for real (supervisor, mayor, roles); agents are real processes in real
sessions: the ``script`` agent, or custom ``[agents.*]`` commands defined per test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Cli, git, make_repo
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import (
    new_town_root,
    role_processes,
    tear_down_town,
    town_processes,
    wait_until,
)

SLEEPER = ('[agents.sleeper]\ncommand = ["sleep", "600"]\n'
           '[agents.talker]\ncommand = ["sh", "-c", "echo hello from {bead}; sleep 600"]\n')
ENV_DUMP = ('[agents.envdump]\ncommand = ["{python}", "-c", "import json, os, sys; '
            'json.dump(dict(os.environ, _argv=sys.argv[1:], _cwd=os.getcwd()), '
            'open(os.environ[\'GASTOWN_WORKTREE\'] + \'.env.json\', \'w\')); '
            'import time; time.sleep(600)", "{bead}", "{prompt_file}"]\n')


def write_town_config(town: Path, backend: str, extra: str = "") -> None:
    (town / "town.toml").write_text(
        f'default_agent = "script"\nmax_polecats = 40\n[sessions]\nbackend = "{backend}"\n'
        f'[supervisor]\nstop_timeout = "2s"\nrestart_delay = "0.05s"\n{extra}')


def set_rig_max(town: Path, rig: str, value: int) -> None:
    path = town / rig / "rig.toml"
    path.write_text(path.read_text() + f"[polecats]\nmax = {value}\n")


@pytest.fixture(params=["process", "tmux"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "tmux" and shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    return str(request.param)


@pytest.fixture
def town(cli: Cli, tmp_path: Path, backend: str) -> Iterator[Path]:
    """A town with rig ``web`` (script agent by default) in a short path; torn down hard."""
    root = new_town_root()
    cli.ok("install", str(root))
    write_town_config(root, backend, SLEEPER + ENV_DUMP)
    cli.env["GASTOWN_TOWN"] = str(root)
    src = make_repo(tmp_path / "web", files={"app.py": "x = 1\n"})
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(tmp_path / "web.git")],
                   check=True)
    cli.ok("rig", "add", "web", str(tmp_path / "web.git"))
    # These tests look at polecats before the merge queue lands them: a gate holds every
    # MR until teardown (the refinery's own tests cover what happens next).
    rig_toml = root / "web" / "rig.toml"
    rig_toml.write_text(rig_toml.read_text() + '[[merge_queue.gates]]\nname = "hold"\n'
                        f'command = "while [ ! -e {root}/release ]; do sleep 0.1; done"\n'
                        'timeout = "1h"\n')
    yield root
    tear_down_town(cli, root)


def polecats(cli: Cli) -> dict[str, dict[str, object]]:
    return {p["name"]: p for p in json.loads(cli.ok("polecat", "list", "--json"))}


def bead_status(cli: Cli, bead: str) -> str:
    return str(json.loads(cli.ok("bead", "show", bead, "--json"))["status"])


def clone_of(town: Path) -> Path:
    return town / "web" / "refinery" / "rig"


def test_script_bead_commits_and_records_an_mr(cli: Cli, town: Path, feed: FeedWaiter) -> None:
    """`echo hi > hello.txt` ends as a commit with hello.txt on polecat/<name> and an MR."""
    cli.ok("up")
    bead = cli.ok("bead", "create", "say hi", "--rig", "web", "-d", "echo hi > hello.txt")
    name, path = cli.ok("sling", bead.strip(), "web").split()
    assert Path(path) == town / "web" / "polecats" / name
    feed.wait("polecat_done", polecat=name, what="the polecat to be done")
    assert polecats(cli)[name]["state"] in ("done", "merging")
    files = git("show", "--name-only", "--format=", f"polecat/{name}", cwd=clone_of(town))
    assert files.split() == ["hello.txt"]
    assert bead_status(cli, bead.strip()) == "in_review"
    kinds = [json.loads(line)["kind"] for line in cli.ok("feed", "--json").splitlines()]
    assert kinds.index("polecat_spawning") < kinds.index("polecat_working") < \
        kinds.index("polecat_done") < kinds.index("mr_created")


def test_twenty_concurrent_slings(cli: Cli, town: Path) -> None:
    """20 slings from 20 processes: 20 names, worktrees, branches and live sessions."""
    set_rig_max(town, "web", 25)
    cli.ok("up")
    beads = [cli.ok("bead", "create", f"task {i}", "--rig", "web").strip() for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda b: cli("sling", b, "web", "--agent", "sleeper"), beads))
    assert all(r.code == 0 for r in results), [r.err for r in results if r.code]
    names = [r.out.split()[0] for r in results]
    assert len(set(names)) == 20
    listed = polecats(cli)
    assert set(listed) == set(names)
    assert all(p["state"] == "working" and p["session_alive"] for p in listed.values())
    worktrees = git("worktree", "list", "--porcelain", cwd=clone_of(town))
    paths = {line.split(" ", 1)[1] for line in worktrees.splitlines()
             if line.startswith("worktree ")}
    assert paths == {str(clone_of(town))} | {str(town / "web" / "polecats" / n) for n in names}
    branches = git("branch", "--list", "polecat/*", "--format=%(refname:short)",
                   cwd=clone_of(town)).split()
    assert sorted(branches) == sorted(f"polecat/{n}" for n in names)
    assert all(bead_status(cli, b) == "hooked" for b in beads)


def test_agent_sees_the_documented_environment(cli: Cli, town: Path) -> None:
    """A custom agent gets every DESIGN.md §4 variable and its placeholders filled in."""
    cli.ok("up")
    bead = cli.ok("bead", "create", "env", "--rig", "web").strip()
    name, path = cli.ok("sling", bead, "web", "--agent", "envdump").split()
    dump = Path(path + ".env.json")
    wait_until(dump.exists, what="the agent's environment dump")
    env = json.loads(wait_until(lambda: dump.read_text() or None, what="the dump's content"))
    assert env["GASTOWN_TOWN"] == str(town)
    assert env["GASTOWN_RIG"] == "web" and env["GASTOWN_POLECAT"] == name
    assert env["GASTOWN_BEAD"] == bead and env["GASTOWN_BRANCH"] == f"polecat/{name}"
    assert env["GASTOWN_ROLE"] == "polecat"
    assert env["GIT_CEILING_DIRECTORIES"] == str(town)
    assert env["GIT_AUTHOR_NAME"] == name
    assert env["_cwd"] == path
    assert env["_argv"][0] == bead
    prompt = Path(env["_argv"][1]).read_text()
    assert bead in prompt and "gastown done" in prompt
    assert "NOTIFY_SOCKET" not in env and "GASTOWN_LIFELINE_FD" not in env


def test_done_refuses_dirty_tree_and_empty_branch(cli: Cli, town: Path) -> None:
    """done in a dirty tree, or with no commits, fails with one line and records nothing."""
    cli.ok("up")
    bead = cli.ok("bead", "create", "idle", "--rig", "web").strip()
    name, path = cli.ok("sling", bead, "web", "--agent", "sleeper").split()
    polecat_cli = Cli(cwd=Path(path), env={k: v for k, v in cli.env.items()
                                           if k != "GASTOWN_TOWN"})
    result = polecat_cli("done")
    assert result.code == 1 and result.err.count("\n") == 1
    assert "no commits ahead of main" in result.err
    (Path(path) / "wip.txt").write_text("half done\n")
    result = polecat_cli("done")
    assert result.code == 1 and "1 uncommitted change" in result.err
    assert polecats(cli)[name]["state"] == "working"
    assert bead_status(cli, bead) == "hooked"
    assert json.loads(cli.ok("status", "--json"))["merge_requests"] == {}
    assert not (town / "web" / "polecats" / f".{name}.done").exists()
    outside = Cli(cwd=town, env=polecat_cli.env)
    result = outside("--town", str(town), "done")
    assert result.code == 2 and "not inside a polecat worktree" in result.err


def test_nuke_refuses_unmerged_work_and_force_frees_the_name(cli: Cli, town: Path,
                                                             feed: FeedWaiter) -> None:
    """nuke keeps unmerged commits unless --force; the name is reusable at once."""
    cli.ok("up")
    bead = cli.ok("bead", "create", "work", "--rig", "web", "-d", "echo x > x.txt").strip()
    name, path = cli.ok("sling", bead, "web").split()
    feed.wait("polecat_done", polecat=name, what="done")
    assert polecats(cli)[name]["state"] in ("done", "merging")
    result = cli("polecat", "nuke", f"web/{name}")
    assert result.code == 1 and "1 commit(s) on polecat/" in result.err
    assert Path(path).is_dir()
    cli.ok("polecat", "nuke", f"web/{name}", "--force")
    assert not Path(path).exists()
    assert git("branch", "--list", f"polecat/{name}", cwd=clone_of(town)).strip() == ""
    assert str(path) not in git("worktree", "list", cwd=clone_of(town))
    assert bead_status(cli, bead) == "open"
    again = cli.ok("bead", "create", "again", "--rig", "web").strip()
    assert cli.ok("sling", again, "web", "--agent", "sleeper").split()[0] == name


def test_sling_while_down_runs_at_up(cli: Cli, town: Path, feed: FeedWaiter) -> None:
    """A sling recorded while the town is down is dispatched when it comes up."""
    bead = cli.ok("bead", "create", "later", "--rig", "web").strip()
    out = cli.ok("sling", bead, "web", "--agent", "sleeper")
    assert "town is down" in out and bead_status(cli, bead) == "open"
    cli.ok("up")
    feed.wait("polecat_working", bead=bead, what="the queued sling")
    assert any(p["bead"] == bead and p["state"] == "working" for p in polecats(cli).values())
    assert bead_status(cli, bead) == "hooked"


def test_capacity_queues_in_order_and_frees_on_nuke(cli: Cli, town: Path,
                                                    feed: FeedWaiter) -> None:
    """Beyond polecats.max slings wait; a freed slot dispatches the oldest, without polling."""
    set_rig_max(town, "web", 2)
    cli.ok("up")
    beads = [cli.ok("bead", "create", f"b{i}", "--rig", "web").strip() for i in range(4)]
    first = [cli.ok("sling", b, "web", "--agent", "sleeper").split()[0] for b in beads[:2]]
    assert "position 1" in cli.ok("sling", beads[2], "web", "--agent", "sleeper")
    assert "position 2" in cli.ok("sling", beads[3], "web", "--agent", "sleeper")
    assert len(polecats(cli)) == 2
    cli.ok("polecat", "nuke", f"web/{first[0]}", "--force")
    feed.wait("polecat_spawning", bead=beads[2], what="the oldest queued sling to be dispatched")
    assert any(p["bead"] == beads[2] for p in polecats(cli).values())
    assert not any(p["bead"] == beads[3] for p in polecats(cli).values())
    assert bead_status(cli, beads[3]) == "open"


def test_one_sling_of_several_beads_queues_them_in_order(cli: Cli, town: Path,
                                                          feed: FeedWaiter) -> None:
    """`sling B1 B2 B3 RIG`: one line per bead, dispatched in the order given up to the cap,
    the rest queued with their positions."""
    set_rig_max(town, "web", 2)
    cli.ok("up")
    beads = [cli.ok("bead", "create", f"b{i}", "--rig", "web").strip() for i in range(3)]
    lines = cli.ok("sling", *beads, "web", "--agent", "sleeper").splitlines()
    assert len(lines) == 3, lines
    assert "position 1" in lines[2] and beads[2] in lines[2]
    working = {p["bead"]: name for name, p in polecats(cli).items()}
    assert set(working) == set(beads[:2])
    assert [line.split()[0] for line in lines[:2]] == [working[b] for b in beads[:2]]
    queued = feed.wait_count("sling_queued", 3)
    assert [e["bead"] for e in queued] == beads


def test_a_refused_bead_queues_none_of_the_others(cli: Cli, town: Path) -> None:
    """All or none: one unknown, closed or repeated bead refuses the whole sling."""
    cli.ok("up")
    good = cli.ok("bead", "create", "good", "--rig", "web").strip()
    closed = cli.ok("bead", "create", "closed", "--rig", "web").strip()
    cli.ok("bead", "close", closed)
    for bad in (["web-nope0"], [closed], [good]):
        result = cli("sling", good, *bad, "web", "--agent", "sleeper")
        assert result.code != 0 and result.err.startswith("gastown: "), result
        assert len(result.err.strip().splitlines()) == 1, result.err
    assert polecats(cli) == {}
    assert bead_status(cli, good) == "open"
    assert '"sling_queued"' not in cli.ok("feed", "--json")


def test_hooked_bead_needs_force(cli: Cli, town: Path) -> None:
    """Slinging a bead that is already hooked is refused unless --force."""
    cli.ok("up")
    bead = cli.ok("bead", "create", "once", "--rig", "web").strip()
    name = cli.ok("sling", bead, "web", "--agent", "sleeper").split()[0]
    result = cli("sling", bead, "web", "--agent", "sleeper")
    assert result.code == 1 and f"already hooked by polecat web/{name}" in result.err
    other = cli.ok("sling", bead, "web", "--agent", "sleeper", "--force").split()[0]
    assert other != name


def test_sessions_survive_mayor_kill_and_down_up(cli: Cli, town: Path, feed: FeedWaiter) -> None:
    """Agent sessions keep running across kill -9 of the mayor and across down/up."""
    cli.ok("up")
    bead = cli.ok("bead", "create", "long", "--rig", "web").strip()
    name = cli.ok("sling", bead, "web", "--agent", "sleeper").split()[0]
    killed = role_processes(town)["mayor"]
    os.kill(killed, signal.SIGKILL)
    feed.wait("role_ready", role="mayor", where=lambda e: e["pid"] != killed, what="a new mayor")
    assert "mayor" in role_processes(town)
    assert polecats(cli)[name]["session_alive"] is True
    cli.ok("down")
    assert polecats(cli)[name]["session_alive"] is True
    cli.ok("up")
    assert polecats(cli)[name]["session_alive"] is True
    assert "stopped 1 agent session" in cli.ok("down", "--all")
    # Nothing of the town runs once `down --all` returned: not even the tmux server,
    # which exits a moment after its last session (seen left over by the demo's check).
    assert town_processes(town) == {}
    assert polecats(cli)[name]["session_alive"] is False
    assert (town / "web" / "polecats" / name).is_dir()


@pytest.mark.parametrize("point", ["sling.after_reserve", "sling.after_worktree",
                                   "sling.after_session"])
def test_kill_9_mayor_mid_sling_leaves_nothing_half_made(cli: Cli, town: Path,
                                                         point: str) -> None:
    """kill -9 of the mayor at each sling step: after restart, a live polecat or nothing."""
    cli.env["GASTOWN_FAULTS"] = f"mayor@{point}=pause:600"
    cli.ok("up")
    bead = cli.ok("bead", "create", "crash", "--rig", "web").strip()
    slinger = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "sling", bead,
                                "web", "--agent", "sleeper"], env=cli.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Polled, not followed: the paused mayor has not woken the supervisor, so the
    # reservation's event reaches the feed only at its 30 s safety tick (issue 13).
    wait_until(lambda: any(p["bead"] == bead for p in polecats(cli).values()),
               what="the polecat to be reserved")
    mayor = role_processes(town)["mayor"]
    del cli.env["GASTOWN_FAULTS"]
    os.kill(mayor, signal.SIGKILL)
    slinger.communicate(timeout=60)
    # The restarted mayor inherits the fault from the supervisor's environment: restart
    # the whole town without it so that recovery runs cleanly.
    cli.ok("down")
    cli.ok("up")

    def settled() -> tuple[list[dict[str, object]]] | None:
        # A tuple, so that "no polecat at all" (rolled back: a valid outcome) is truthy.
        # No polecat is only an outcome once no sling for the bead waits either: a
        # rolled-back spawn's sling is queued again and dispatched a moment later.
        mine = [p for p in polecats(cli).values() if p["bead"] == bead]
        if mine:
            return (mine,) if all(p["state"] == "working" for p in mine) else None
        shown = json.loads(cli.ok("bead", "show", bead, "--json"))
        return None if shown["queued_slings"] or shown["status"] != "open" else (mine,)

    try:
        (mine,) = wait_until(settled, what="recovery to settle")
    except AssertionError:  # what a stuck recovery needs to be understood
        print(cli("bead", "show", bead).out, cli("polecat", "list").out,
              cli("feed").out[-5000:], (town / "logs" / "mayor.log").read_text()[-6000:])
        raise
    status = bead_status(cli, bead)
    clone = clone_of(town)
    worktrees = git("worktree", "list", "--porcelain", cwd=clone)
    branches = git("branch", "--list", "polecat/*", "--format=%(refname:short)",
                   cwd=clone).split()
    dirs = sorted(p.name for p in (town / "web" / "polecats").iterdir()
                  if not p.name.startswith("."))
    assert [p["name"] for p in mine] == dirs
    assert branches == [f"polecat/{d}" for d in dirs]
    assert worktrees.count("worktree ") == 1 + len(dirs)
    if mine:
        assert status == "hooked" and all(p["session_alive"] for p in mine)
    else:
        assert status == "open"


def test_forced_rig_remove_stops_its_agents(cli: Cli, town: Path) -> None:
    """rig remove --force takes the rig's live agent sessions down with its worktrees."""
    cli.ok("up")
    bead = cli.ok("bead", "create", "doomed", "--rig", "web").strip()
    name = cli.ok("sling", bead, "web", "--agent", "sleeper").split()[0]
    assert polecats(cli)[name]["session_alive"] is True
    result = cli("rig", "remove", "web")
    assert result.code == 1 and "live polecat" in result.err
    cli.ok("rig", "remove", "web", "--force")
    assert not (town / "web").exists()
    from gastown.roles.adapters.processes import processes_with_env

    wait_until(lambda: processes_with_env({"GASTOWN_TOWN": str(town),
                                           "GASTOWN_POLECAT": name}) == [],
               what="the agent to be stopped")


def test_attach_reaches_the_agent(cli: Cli, town: Path, backend: str) -> None:
    """attach joins the tmux session (tmux backend) or follows the agent's output (process)."""
    cli.ok("up")
    bead = cli.ok("bead", "create", "talk", "--rig", "web").strip()
    name = cli.ok("sling", bead, "web", "--agent", "talker").split()[0]
    if backend == "tmux":
        from gastown.roles.adapters.sessions import tmux_socket_name

        # A terminal for attach: a tmux session of the test's own server runs it.
        own = f"gt-test-{os.getpid()}"
        subprocess.run(["tmux", "-L", own, "new-session", "-d", "-x", "200", "-y", "50",
                        f"{sys.executable} -m gastown.supervisor attach web/{name}"],
                       env=cli.env, check=True)
        try:
            def attached() -> bool:
                out = subprocess.run(["tmux", "-L", tmux_socket_name(town), "list-clients"],
                                     capture_output=True, text=True, check=False).stdout
                return bool(out.strip())

            wait_until(attached, what="a client attached to the polecat's session")
            screen = subprocess.run(["tmux", "-L", own, "capture-pane", "-p"],
                                    capture_output=True, text=True, check=True).stdout
            assert f"hello from {bead}" in screen
        finally:
            subprocess.run(["tmux", "-L", own, "kill-server"], capture_output=True, check=False)
        return
    follower = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "attach",
                                 f"web/{name}"], env=cli.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        # The log starts with gastown's start mark, then the agent's own output.
        first = follower.stdout.readline()
        assert first.startswith("== gastown: agent session started")
        assert f"hello from {bead}" in follower.stdout.readline()
    finally:
        follower.kill()
        follower.wait()


def test_session_logs_are_per_incarnation(cli: Cli, town: Path, backend: str) -> None:
    """Two polecats in turn with the same name: the second's attach (process backend)
    follows only its own output, from a log file of its own."""
    if backend != "process":
        pytest.skip("attach follows the session log on the process backend only")
    cli.ok("up")
    first = cli.ok("bead", "create", "first", "--rig", "web").strip()
    name = cli.ok("sling", first, "web", "--agent", "talker").split()[0]
    logs = town / "logs" / "sessions"
    wait_until(lambda: any(f"hello from {first}" in log.read_text() for log in logs.iterdir()),
               what="the first agent's output")
    earlier = polecats(cli)[name].get("incarnation")
    cli.ok("polecat", "nuke", f"web/{name}", "--force")
    second = cli.ok("bead", "create", "second", "--rig", "web").strip()
    assert cli.ok("sling", second, "web", "--agent", "talker").split()[0] == name
    follower = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "attach",
                                 f"web/{name}"], env=cli.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        lines = [follower.stdout.readline().strip() for _ in range(2)]
        assert lines == ["== gastown: agent session started", f"hello from {second}"]
    finally:
        follower.kill()
        follower.wait()
    current = polecats(cli)[name]["incarnation"]
    assert current and earlier and current != earlier
    log = logs / f"web-{name}-{current}.log"
    assert f"hello from {first}" not in log.read_text()
