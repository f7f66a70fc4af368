"""The worktree setup with a warm pool (``polecats.pool_size`` and ``[polecats.setup]``)
through the real CLI and a real town: the setup runs when a pool tree is prepared, not
at sling.

The setup command appends one line per run to a file outside the worktrees (``runs``):
the folder it ran in and ``GASTOWN_SLOT`` (``-`` when unset), and takes a moment. A pool
tree's git directory is named ``-busy-<name>`` (see tests/e2e/test_worktree_pool.py).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, git
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.test_worktree_setup import (  # noqa: F401  (fixtures)
    alive,
    remote,
    setup_processes,
    setup_toml,
    source,
)
from tests.e2e.town_helpers import (
    beads,
    clone,
    configure,
    polecats,
    role_processes,
    script_town,
    tear_down_town,
    wait_until,
)


def recording(runs: Path, tail: str = "") -> str:
    """A setup command that records its run (folder and slot), takes a moment, and
    leaves an ignored file (``.venv/made``)."""
    return (f'echo "$PWD ${{GASTOWN_SLOT:--}}" >> {runs}; sleep 0.3; mkdir -p .venv; '
            f'echo made > .venv/made{tail}')


@pytest.fixture
def town(cli: Cli, remote: Path, tmp_path: Path) -> Iterator[Path]:  # noqa: F811
    cli.env["GASTOWN_FAULT_STATE"] = str(tmp_path)
    root = script_town(cli, remote, town_toml='max_polecats = 10\n[agents.sleeper]\n'
                                              'command = ["sleep", "600"]\n')
    yield root
    tear_down_town(cli, root)


def pool_config(source: Path, command: str, size: int = 2) -> str:  # noqa: F811
    return setup_toml(source, command=command).replace(
        "[polecats]\n", f"[polecats]\npool_size = {size}\n")


def ready(town: Path) -> list[Path]:
    folder = town / "web" / "pool"
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) \
        if folder.is_dir() else []


def in_flight(town: Path) -> list[str]:
    folder = town / "web" / "pool"
    return sorted(p.name for p in folder.glob(".busy-*")) if folder.is_dir() else []


def record(tree: Path) -> list[str]:
    """The tree's setup record: [head, fingerprint], or [] without one."""
    gitdir = Path((tree / ".git").read_text().split(":", 1)[1].strip())
    path = gitdir / "gastown-setup"
    return path.read_text().splitlines() if path.exists() else []


def lines(runs: Path) -> list[str]:
    return runs.read_text().splitlines() if runs.exists() else []


def prepared_pool(town: Path, size: int, head: str | None = None) -> list[Path] | None:
    """The pool's ready trees once it holds ``size``, all set up (at ``head``)."""
    trees = ready(town)
    if len(trees) != size or in_flight(town):
        return None
    records = [record(t) for t in trees]
    if not all(records) or (head is not None and any(r[0] != head for r in records)):
        return None
    return trees


def main_tip(town: Path) -> str:
    return git("rev-parse", "main", cwd=clone(town)).strip()


def test_the_pool_prepares_trees_with_the_setup_and_a_sling_does_not_run_it_again(
        cli: Cli, town: Path, source: Path, tmp_path: Path,  # noqa: F811
        feed: FeedWaiter) -> None:
    """pool_size = 2: both trees get the setup when prepared (no slot), the sling takes
    one and runs no setup, the agent has its own slot, port, env and the copied file;
    after the merge the pool follows the tip and the setup runs again there."""
    runs, seen = tmp_path / "runs", tmp_path / "seen"
    configure(town, pool_config(source, recording(runs)))
    cli.ok("up")
    trees = wait_until(lambda: prepared_pool(town, 2), what="the pool set up")
    before = lines(runs)
    assert len(before) == 2 and all(line.endswith(" -") and "/pool/.busy-" in line
                                    for line in before), before
    assert all((t / ".venv" / "made").exists() and (t / ".env").exists() for t in trees)
    bead = cli.ok("bead", "create", "x", "--rig", "web", "-d",
                  f'echo "$GASTOWN_SLOT $GASTOWN_PORT $APP_PORT $DATABASE_URL" > {seen}; '
                  "test -e .env && test -e .venv/made && echo 1 > one.txt").strip()
    name, path = cli.ok("sling", bead, "web").split()
    tree = Path(path)
    assert (tree / ".git").read_text().strip().rsplit("/", 1)[1].startswith("-busy-")
    merged = feed.wait("mr_merged", bead=bead, timeout=120)
    slot, port, app_port, url = seen.read_text().split()
    assert slot == "0" and port.isdigit() and app_port == port and url == "sqlite:///db_0"
    # No run at sling: every line so far is a preparation's (no slot), none in the
    # polecat's folder.
    assert all(line.endswith(" -") and "/pool/.busy-" in line for line in lines(runs))
    assert not any(str(tree) in line for line in lines(runs))
    # The merge moves the pool to the new tip; the setup runs again in each tree.
    tip = main_tip(town)
    assert merged["bead"] == bead
    followed = wait_until(lambda: prepared_pool(town, 2, head=tip), what="the pool at the tip",
                          timeout=120)
    assert len(lines(runs)) >= len(before) + 2
    assert all(git("rev-parse", "HEAD", cwd=t).strip() == tip for t in followed)
    assert beads(cli)[bead]["status"] == "closed" and name


def test_a_changed_setup_runs_at_sling_in_a_tree_prepared_with_the_old_one(
        cli: Cli, town: Path, source: Path, tmp_path: Path) -> None:  # noqa: F811
    runs = tmp_path / "runs"
    configure(town, pool_config(source, recording(runs), size=1))
    cli.ok("up")
    (old,) = wait_until(lambda: prepared_pool(town, 1), what="the pool set up")
    old_record = record(old)
    rig_toml = town / "web" / "rig.toml"
    rig_toml.write_text(rig_toml.read_text().replace("echo made > .venv/made",
                                                     "echo v2 > .venv/made"))
    bead = cli.ok("bead", "create", "x", "--rig", "web").strip()
    name, path = cli.ok("sling", bead, "web", "--agent", "sleeper").split()
    tree = Path(path)
    assert (tree / ".git").read_text().strip().rsplit("/", 1)[1].startswith("-busy-")
    assert (tree / ".venv" / "made").read_text() == "v2\n"  # the new setup, at sling
    assert f"{tree} 0" in lines(runs)
    listed = polecats(cli)[name]
    assert listed["state"] == "working"
    # polecat list shows the slot and the port (--json) and a PORT column (text).
    assert listed["slot"] == 0 and isinstance(listed["port"], int)
    table = cli.ok("polecat", "list").splitlines()
    assert "PORT" in table[0].split() and str(listed["port"]) in table[1].split()
    # The pool is refilled with trees set up with the new settings.
    (new,) = wait_until(lambda: prepared_pool(town, 1), what="the pool set up again")
    assert record(new)[1] != old_record[1] and (new / ".venv" / "made").read_text() == "v2\n"


def test_a_failing_pool_setup_leaves_no_tree_and_no_process_and_stops_after_three(
        cli: Cli, town: Path, source: Path, tmp_path: Path,  # noqa: F811
        feed: FeedWaiter) -> None:
    runs, bg = tmp_path / "runs", tmp_path / "bg"
    configure(town, pool_config(source, f"echo run >> {runs}; sleep 300 & echo $! >> {bg}; "
                                        "echo boom >&2; exit 3"))
    mayor_log = town / "logs" / "mayor.log"
    cli.ok("up")
    wait_until(lambda: (len(lines(runs)) >= 2 and mayor_log.read_text().count(
        "pool_setup_failed") >= 2) or None, what="both fills to fail")
    wait_until(lambda: (not ready(town) and not in_flight(town)) or None, what="no tree left")
    assert not [pid for pid in map(int, lines(bg)) if alive(pid)]
    assert not setup_processes(town)
    failures = json.loads((town / "web" / "pool" / ".setup-failed").read_text())
    assert failures["count"] == 2 and "setup failed (exit 3)" in failures["reason"]
    assert "boom" in mayor_log.read_text()  # the tail, in the log
    assert "boom" in (town / "logs" / "pool" / "web-setup.log").read_text()
    # Without a prepared tree the sling runs the setup itself, and fails as without a pool.
    bead = cli.ok("bead", "create", "x", "--rig", "web").strip()
    cli("sling", bead, "web", "--agent", "sleeper")
    feed.wait("polecat_setup_failed", bead=bead, timeout=60)
    # The tending after that build fails a third time and stops preparing trees.
    wait_until(lambda: "pool_setup_given_up" in mayor_log.read_text() or None,
               what="the pool to stop preparing", timeout=60)
    count, skips = len(lines(runs)), mayor_log.read_text().count("pool setup stopped")
    mark = feed.mark()
    cli("sling", bead, "web", "--agent", "sleeper")
    feed.wait("polecat_setup_failed", bead=bead, timeout=60, after=mark)
    wait_until(lambda: mayor_log.read_text().count("pool setup stopped") > skips or None,
               what="the next tending to skip the fills", timeout=60)
    # The failed sling's tree may still be recycled and dropped meanwhile (no setup run).
    wait_until(lambda: (not ready(town) and not in_flight(town)) or None, what="no tree left")
    assert len(lines(runs)) == count + 1  # the sling's own run, none for the pool
    assert not [pid for pid in map(int, lines(bg)) if alive(pid)]
    assert not setup_processes(town)
    # doctor says the pool stopped, why, and what to do; --fix cannot fix it.
    doctor = cli("doctor", "--fix")
    assert "pool_setup_stopped" in doctor.out and "failed 3 times" in doctor.out, doctor
    assert "exit 3" in doctor.out and "fix [polecats.setup]" in doctor.out, doctor


def test_kill_9_of_the_mayor_during_a_pool_setup_converges(
        cli: Cli, town: Path, source: Path, tmp_path: Path) -> None:  # noqa: F811
    """The first pool setup blocks on a fifo (with a child in the background); the mayor
    is killed -9; the next mayor stops that setup's processes, removes its tree and
    prepares the pool again."""
    fifo, pid, bg, once = (tmp_path / n for n in ("fifo", "pid", "bg", "once"))
    os.mkfifo(fifo)
    configure(town, pool_config(source, (
        f"if [ ! -e {once} ]; then touch {once}; sleep 300 & echo $! > {bg}; "
        f"echo $$ > {pid}; cat {fifo}; fi; mkdir -p .venv; echo made > .venv/made"), size=1))
    cli.ok("up")
    wait_until(lambda: (pid.exists() and pid.read_text().strip()) or None,
               what="the pool setup to block")
    first, child = int(pid.read_text()), int(bg.read_text())
    mayor = role_processes(town)["mayor"]
    os.kill(mayor, signal.SIGKILL)
    (tree,) = wait_until(lambda: prepared_pool(town, 1), what="the pool set up again",
                         timeout=90)
    assert role_processes(town)["mayor"] != mayor
    assert not alive(first) and not alive(child)
    assert not setup_processes(town)
    assert (tree / ".venv" / "made").exists()
    assert cli("doctor").out == "all clear\n"


def _up_with_a_blocked_pool_setup(cli: Cli, town: Path, source: Path,  # noqa: F811
                                  tmp_path: Path) -> int:
    """Start the town with a one-tree pool whose setup blocks (on a FIFO nobody writes)
    and appends its pid to a file; the pid of the first setup once it blocks."""
    fifo, pid = tmp_path / "fifo", tmp_path / "pid"
    os.mkfifo(fifo)
    configure(town, pool_config(source, f"echo $$ >> {pid}; cat {fifo}", size=1))
    cli.ok("up")
    wait_until(lambda: (pid.exists() and pid.read_text().strip()) or None,
               what="the pool setup to block")
    return int(pid.read_text().split()[0])


def test_down_all_stops_a_running_pool_setup_and_drains_the_pool(
        cli: Cli, town: Path, source: Path, tmp_path: Path) -> None:  # noqa: F811
    first = _up_with_a_blocked_pool_setup(cli, town, source, tmp_path)
    cli.ok("down", "--all")
    assert not alive(first)
    assert not setup_processes(town)
    assert not (town / "web" / "pool").exists()


def test_a_plain_down_does_not_wait_for_a_pool_setup_and_the_next_up_stops_it(
        cli: Cli, town: Path, source: Path, tmp_path: Path) -> None:  # noqa: F811
    """The mayor leaves at once on SIGTERM while its tend waits for a blocked pool setup
    (it would otherwise be killed at ``stop_timeout``); the setup left running in its busy
    folder is stopped, and its tree removed, by the next ``up``'s tend."""
    first = _up_with_a_blocked_pool_setup(cli, town, source, tmp_path)
    pid = tmp_path / "pid"  # where each setup appends its pid
    (leftover,) = [name for name in in_flight(town) if not name.endswith(".lock")]
    cli.ok("down")
    stopped = [e for e in map(json.loads, cli.ok("feed", "--json").splitlines())
               if e["kind"] == "role_stopped" and e.get("role") == "mayor"]
    assert stopped and stopped[-1]["last_exit"] != -signal.SIGKILL, stopped[-1]
    assert alive(first)  # a plain down leaves it, as it leaves agents' sessions
    cli.ok("up")
    wait_until(lambda: not alive(first) or None, what="the next tend to stop the setup")
    wait_until(lambda: len(pid.read_text().split()) > 1 or None,
               what="the pool prepared again")
    assert leftover not in in_flight(town)  # removed; the new setup has its own tree


def test_in_pool_false_keeps_the_setup_at_sling(
        cli: Cli, town: Path, source: Path, tmp_path: Path) -> None:  # noqa: F811
    runs = tmp_path / "runs"
    configure(town, pool_config(source, recording(runs), size=1).replace(
        "[polecats.setup]\n", "[polecats.setup]\nin_pool = false\n"))
    cli.ok("up")
    (pooled,) = wait_until(lambda: (len(ready(town)) == 1 and not in_flight(town)
                                    and ready(town)) or None, what="the pool to fill")
    assert not record(pooled) and not runs.exists()
    bead = cli.ok("bead", "create", "x", "--rig", "web").strip()
    _, path = cli.ok("sling", bead, "web", "--agent", "sleeper").split()
    assert (Path(path) / ".git").read_text().strip().rsplit("/", 1)[1].startswith("-busy-")
    assert lines(runs) == [f"{path} 0"]
