"""Roles forked from the town's fork server: what ``ps``, ``status`` and the feed show.

The supervisor starts each role by asking the fork server (the CLI server, which has
imported every module) to fork it; ``exec`` is the fallback. Real towns, real
processes: the exit statuses come from the kernel through the template, the command
lines from ``/proc``.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import (
    bare_remote_town,
    role_processes,
    roles_by_name,
    status,
    tear_down_town,
    town_processes,
    wait_until,
)

TOWN_CONFIG = """[supervisor]
restart_delay = "0.05s"
restart_max_delay = "1s"
max_restarts = 5
restart_period = "60s"
stop_timeout = "2s"
"""


@pytest.fixture
def town(cli: Cli, tmp_path: Path) -> Iterator[Path]:
    """A town with one rig ``web`` on a bare remote, in a short path; torn down hard."""
    root = bare_remote_town(cli, tmp_path, TOWN_CONFIG)
    yield root
    tear_down_town(cli, root)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def fork_server(town: Path) -> int:
    (pid,) = [pid for pid, cmd in town_processes(town).items()
              if "gastown.supervisor.cli_server" in cmd.split()]
    return pid


def test_roles_are_forked_and_show_their_own_command(cli: Cli, town: Path) -> None:
    """Each role is a child of the fork server, its command line is the role's command,
    and its pid is the one ``status`` reports (and the bus accepted: it is ready)."""
    cli.ok("up")
    roles = role_processes(town)
    assert set(roles) == {"mayor", "witness:web", "refinery:web"}
    server = fork_server(town)
    assert {parent_of(pid) for pid in roles.values()} == {server}
    listed = roles_by_name(cli)
    assert {name: row["pid"] for name, row in listed.items()} == roles
    assert all(row["state"] == "running" for row in listed.values())
    cmd = Path(f"/proc/{roles['witness:web']}/cmdline").read_bytes()
    assert b"-m gastown.roles witness:web --town " + str(town).encode() in cmd


def test_a_forked_role_exit_status_reaches_status_and_feed(cli: Cli, town: Path,
                                                           tmp_path: Path,
                                                           feed: FeedWaiter) -> None:
    """An exit code and a signal death of a forked role are reported as for an exec'd one."""
    state = tmp_path / "faults"
    state.mkdir()
    cli.env["GASTOWN_FAULTS"] = "witness:web@start=exit:3:once"
    cli.env["GASTOWN_FAULT_STATE"] = str(state)
    cli.ok("up")
    feed.wait("role_exited", role="witness:web", last_exit=3)
    witness = wait_until(lambda: role_processes(town).get("witness:web"),
                         what="the witness to run again")
    assert parent_of(witness) == fork_server(town)
    mark = feed.mark()
    os.kill(witness, signal.SIGKILL)
    feed.wait("role_exited", role="witness:web", last_exit=-9, after=mark)
    feed.wait("role_started", role="witness:web", after=mark)
    row = roles_by_name(cli)["witness:web"]
    assert row["last_exit"] == -9 and row["restarts"] == 2


def test_roles_outlive_a_killed_fork_server_and_still_restart(cli: Cli, town: Path,
                                                              feed: FeedWaiter) -> None:
    """kill -9 of the fork server leaves the roles it forked running; a role that dies
    afterwards is still seen to die and is started again (forked from the next server, or
    exec'd until it is ready); down leaves nothing behind."""
    cli.ok("up")
    # The first readiness of each role, before the mark: the feed may not have printed
    # them yet when `up` returns, and they would pass for the restarted one's.
    feed.wait_each("role_ready", "role", ("mayor", "witness:web", "refinery:web"))
    before = role_processes(town)
    server = fork_server(town)
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: server not in town_processes(town), what="the fork server to go")
    assert role_processes(town) == before
    mark = feed.mark()
    os.kill(before["refinery:web"], signal.SIGKILL)
    feed.wait("role_exited", role="refinery:web", after=mark)
    feed.wait("role_ready", role="refinery:web", after=mark)
    after = role_processes(town)
    assert after["refinery:web"] != before["refinery:web"]
    assert after["mayor"] == before["mayor"]
    row = roles_by_name(cli)["refinery:web"]
    assert row["state"] == "running" and row["pid"] == after["refinery:web"]
    cli.ok("down")
    wait_until(lambda: town_processes(town) == {}, what="the whole town to stop")


def test_with_forks_switched_off_roles_are_execd(cli: Cli, town: Path) -> None:
    cli.env["GASTOWN_ROLE_FORKS"] = "0"
    cli.ok("up")
    roles = role_processes(town)
    supervisor = [pid for pid, cmd in town_processes(town).items()
                  if "up" in cmd.split() and "gastown.supervisor" in cmd.split()]
    assert {parent_of(pid) for pid in roles.values()} == set(supervisor)
    assert len(roles) == 3


def test_up_forks_the_first_server_which_keeps_nothing_of_the_supervisor(
        cli: Cli, town: Path) -> None:
    """`up` forks the town's first CLI server from its supervisor before trio starts; it
    keeps neither the lifeline's write end nor the start-up lock: after a kill -9 of the
    supervisor it goes with the roles, and the next `up` starts at once."""
    cli.ok("up")
    server = fork_server(town)
    log = [json.loads(line) for line in (town / "logs" / "supervisor.log").read_text()
           .splitlines()]
    assert [(e["pid"], e["how"]) for e in log if e["event"] == "cli_server_started"] == [
        (server, "fork")]
    supervisor = status(cli)["supervisor"]["pid"]
    assert parent_of(server) == supervisor
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: town_processes(town) == {}, what="the server and roles to follow")
    cli.ok("up")
    assert "town stopped" in cli.ok("down")
