"""A whole town under its supervisor: up, status, restarts, give-up, down, kill -9.

Every test runs the real ``gastown`` CLI; the supervisor and the roles are real
processes, found in ``/proc``. Towns live in short ``/tmp`` paths because the bus socket's
path must fit ``sun_path`` (108 bytes).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, git, make_repo
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import (
    feed_kinds,
    new_town_root,
    role_processes,
    roles_by_name,
    status,
    tear_down_town,
    town_processes,
    wait_until,
)

ALL_ROLES = {"mayor", "witness:web", "refinery:web", "witness:api", "refinery:api"}

FAST_POLICY = """
[supervisor]
restart_delay = "0.05s"
restart_max_delay = "1s"
max_restarts = 3
restart_period = "60s"
stop_timeout = "2s"
"""


def bare_repo(path: Path) -> Path:
    """A bare repository (what a rig pushes to) cloned from a fresh one-commit repo."""
    make_repo(path.with_name(path.name + "-src"))
    git("clone", "-q", "--bare", str(path.with_name(path.name + "-src")), str(path),
        cwd=path.parent)
    return path


@pytest.fixture
def town(cli: Cli, tmp_path: Path) -> Iterator[Path]:
    """An installed town with rigs ``web`` and ``api`` in a short path; torn down hard."""
    root = new_town_root()
    cli.ok("install", str(root))
    (root / "town.toml").write_text((root / "town.toml").read_text() + FAST_POLICY)
    cli.env["GASTOWN_TOWN"] = str(root)
    cli.ok("rig", "add", "web", str(bare_repo(tmp_path / "web.git")))
    cli.ok("rig", "add", "api", str(bare_repo(tmp_path / "api.git")))
    yield root
    tear_down_town(cli, root)


def test_up_runs_five_role_processes_and_down_stops_them(cli: Cli, town: Path) -> None:
    """Two rigs give 5 role processes, all running; down leaves no process of the town."""
    out = cli.ok("up")
    assert "mayor" in out and "running" in out
    assert set(role_processes(town)) == ALL_ROLES
    roles = roles_by_name(cli)
    assert set(roles) == ALL_ROLES
    assert all(r["state"] == "running" and r["pid"] for r in roles.values())
    assert {r["pid"] for r in roles.values()} == set(role_processes(town).values())
    data = status(cli)
    assert data["supervisor"]["state"] == "running" and data["supervisor"]["pid"]
    assert [r["name"] for r in data["rigs"]] == ["api", "web"]
    assert "already up" in cli.ok("up")
    assert "town stopped" in cli.ok("down")
    assert town_processes(town) == {}
    events = [json.loads(line) for line in cli.ok("feed", "--json").splitlines()]
    stopped = [e["role"] for e in events if e["kind"] == "role_stopped"]
    start_order = ["mayor", "witness:api", "refinery:api", "witness:web", "refinery:web"]
    assert stopped == start_order[::-1]
    down = status(cli)
    assert down["supervisor"]["state"] == "down"
    assert {r["state"] for r in down["roles"]} == {"down"}
    assert "already down" in cli.ok("down")


def test_killed_role_is_replaced_and_the_restart_is_visible(cli: Cli, town: Path,
                                                            feed: FeedWaiter) -> None:
    """kill -9 of a role: a new pid runs, restarts goes to 1, logs and feed show it."""
    cli.ok("up")
    old = role_processes(town)["witness:web"]
    os.kill(old, signal.SIGKILL)

    feed.wait("role_ready", role="witness:web", where=lambda e: e["pid"] != old,
              what="witness:web to be running again")
    role = roles_by_name(cli)["witness:web"]
    assert role["state"] == "running" and role["pid"] != old
    assert role["restarts"] == 1 and role["last_exit"] == -signal.SIGKILL
    assert role_processes(town)["witness:web"] == role["pid"]
    kinds = feed_kinds(cli, "witness:web")
    assert kinds[-4:] == ["role_exited", "role_restarting", "role_started", "role_ready"]
    assert "killed by SIGKILL" in cli.ok("feed")
    logs = cli.ok("logs", "-n", "0", "--role", "supervisor")
    assert "role_restarting" in logs and "witness:web" in logs
    others = {name: pid for name, pid in role_processes(town).items() if name != "witness:web"}
    assert all(roles_by_name(cli)[name]["restarts"] == 0 for name in others)


def test_crash_looping_role_is_given_up_and_others_keep_running(cli: Cli, town: Path) -> None:
    """A role that exits at once every time is marked failed with its last exit."""
    cli.env["GASTOWN_FAULTS"] = "witness:api@start=exit:3"
    result = cli("up")
    assert result.code == 1 and "witness:api failed" in result.err
    roles = roles_by_name(cli)
    assert roles["witness:api"]["state"] == "failed"
    assert roles["witness:api"]["last_exit"] == 3
    assert "4 exits in 60s" in roles["witness:api"]["reason"]
    assert all(r["state"] == "running" for n, r in roles.items() if n != "witness:api")
    assert "witness:api" not in role_processes(town)
    assert "failed" in cli.ok("status")
    assert feed_kinds(cli, "witness:api")[-1] == "role_failed"


def test_critical_role_failure_stops_the_supervisor_non_zero(cli: Cli, town: Path) -> None:
    """When the mayor cannot be kept up, the foreground supervisor exits 1 (systemd restarts)."""
    env = {**cli.env, "GASTOWN_FAULTS": "mayor@start=exit:4"}
    proc = subprocess.run([sys.executable, "-m", "gastown.supervisor", "up", "--foreground"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "mayor failed" in proc.stderr
    assert town_processes(town) == {}


def test_kill_9_supervisor_takes_its_roles_down_and_up_recovers(cli: Cli, town: Path) -> None:
    """kill -9 of the supervisor: no orphaned role remains, and up works without clean-up."""
    cli.ok("up")
    supervisor = status(cli)["supervisor"]["pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: town_processes(town) == {}, what="the roles to follow the supervisor")
    assert status(cli)["supervisor"]["state"] == "down"
    cli.ok("up")
    assert set(role_processes(town)) == ALL_ROLES
    assert status(cli)["supervisor"]["pid"] != supervisor


def test_rigs_added_and_removed_while_up(cli: Cli, town: Path, feed: FeedWaiter,
                                         tmp_path: Path) -> None:
    """A new rig gets its roles, a removed rig loses them, and nobody else restarts."""
    cli.ok("up")
    before = role_processes(town)
    cli.ok("rig", "add", "docs", str(bare_repo(tmp_path / "docs.git")))
    feed.wait_each("role_ready", "role", ["witness:docs", "refinery:docs"],
                   what="the docs roles")
    assert {"witness:docs", "refinery:docs"} <= {
        n for n, r in roles_by_name(cli).items() if r["state"] == "running"}
    cli.ok("rig", "remove", "api")
    wait_until(lambda: "witness:api" not in roles_by_name(cli), what="api roles to stop")
    after = role_processes(town)
    assert set(after) == (set(before) - {"witness:api", "refinery:api"}) | {
        "witness:docs", "refinery:docs"}
    for name in ("mayor", "witness:web", "refinery:web"):
        assert after[name] == before[name]
    assert "rig_added" in feed_kinds(cli) and "rig_removed" in feed_kinds(cli)


def test_up_detaches_from_its_callers_descriptors(cli: Cli, town: Path) -> None:
    """`gastown up` (the executable) returns and its supervisor keeps nothing of the
    caller's: a pipe handed to `up` reaches EOF once `up` exits, while the town runs. `ps`
    shows the supervisor as the `up --foreground` it runs."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.run([sys.executable, "-m", "gastown.supervisor", "up"],
                              env=cli.env, capture_output=True, text=True, timeout=120,
                              pass_fds=(write_end,), check=False)
        assert proc.returncode == 0, proc.stderr
        os.close(write_end)
        write_end = -1
        ready, _, _ = select.select([read_end], [], [], 10)
        assert ready and os.read(read_end, 1) == b"", "the supervisor kept the caller's pipe"
        supervisor = status(cli)["supervisor"]["pid"]
        title = town_processes(town)[supervisor].split()
        assert title[1:] == ["-m", "gastown.supervisor", "--town", str(town), "up",
                             "--foreground", *title[7:]] and "--ready-fd" in title
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert "town stopped" in cli.ok("down")


def _foreground(cli: Cli, **extra_env: str) -> subprocess.Popen[str]:
    env = {**cli.env, **extra_env}
    return subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "up", "--foreground"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_sigterm_during_start_up(cli: Cli, town: Path) -> None:
    """SIGTERM while a role is still starting: the supervisor stops everything and exits 0."""
    proc = _foreground(cli, GASTOWN_FAULTS="mayor@start=pause:60")
    wait_until(lambda: "mayor" in role_processes(town), what="the mayor process")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert town_processes(town) == {}


def test_sigterm_during_restart_backoff(cli: Cli, town: Path, feed: FeedWaiter) -> None:
    """SIGTERM while a role waits out a long back-off: no wait, no process left."""
    (town / "town.toml").write_text((town / "town.toml").read_text().replace(
        'restart_delay = "0.05s"', 'restart_delay = "60s"').replace(
        'restart_max_delay = "1s"', 'restart_max_delay = "60s"'))
    proc = _foreground(cli)
    feed.wait_each("role_ready", "role", ALL_ROLES, what="all roles running")
    assert len(role_processes(town)) == 5
    assert all(r["state"] == "running" for r in roles_by_name(cli).values())
    os.kill(role_processes(town)["refinery:web"], signal.SIGKILL)
    feed.wait("role_restarting", role="refinery:web", what="refinery:web in back-off")
    assert roles_by_name(cli)["refinery:web"]["state"] == "backoff"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert town_processes(town) == {}


def test_role_ignoring_sigterm_is_killed_after_its_timeout(cli: Cli, town: Path) -> None:
    """A role that ignores SIGTERM is SIGKILLed after stop_timeout; down still completes."""
    cli.env["GASTOWN_FAULTS"] = "refinery:web@sigterm=ignore"
    cli.ok("up")
    # Stopped during its start, the refinery's git commands would die of the group's
    # SIGTERM and it would crash of that before its SIGKILL: stop it once it is open.
    log = town / "logs" / "refinery-web.log"
    wait_until(lambda: log.exists() and "merge_queue_open" in log.read_text(),
               what="the refinery's queue open")
    assert "town stopped" in cli.ok("down")
    assert town_processes(town) == {}
    assert roles_by_name(cli)["refinery:web"]["last_exit"] == -signal.SIGKILL
    assert roles_by_name(cli)["witness:web"]["last_exit"] == 0


def test_roles_answer_ping_and_status_over_the_bus(cli: Cli, town: Path) -> None:
    """Each role process serves ping and status requests addressed to its name."""
    from gastown.supervisor.bus.sync_client import request_sync

    cli.ok("up")
    sock = town / ".runtime" / "bus.sock"
    pids = role_processes(town)
    for name in ALL_ROLES:
        assert request_sync(sock, name, "ping") == {"pong": name, "pid": pids[name]}
        answer = request_sync(sock, name, "status")
        assert answer["name"] == name and answer["state"] == "running"


def test_feed_follow_prints_new_events(cli: Cli, town: Path) -> None:
    """feed -f keeps printing: a bead created afterwards shows up in the stream."""
    cli.ok("up")
    follower = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "feed", "-f",
                                 "--json", "--since", "1m"], env=cli.env,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        bead = cli.ok("bead", "create", "followed").strip()
        for line in follower.stdout:
            event = json.loads(line)
            if event["kind"] == "bead_created" and event.get("bead") == bead:
                break
    finally:
        follower.kill()
        follower.wait()


def test_status_watch_refreshes_in_place(cli: Cli, town: Path) -> None:
    """status --watch rewrites the screen (cursor home + clear) with fresh status."""
    cli.ok("up")
    watcher = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "status",
                                "--watch", "0.5"], env=cli.env, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert watcher.stdout is not None
        frames = 0
        for line in watcher.stdout:
            if line.startswith("\x1b[H\x1b[J"):
                frames += 1
                assert line.endswith(f"town:       {town}\n")
            if frames == 2:
                break
    finally:
        watcher.kill()
        watcher.wait()
    result = cli("status", "--watch", "--json")
    assert result.code == 2
