"""The worktree bootstrap (``[polecats.setup]``, ``polecats.ports``, ``[polecats.teardown]``,
``[merge_queue.setup]``) through the real CLI and a real town.

The generated project's check (``check.py``) needs what a bare checkout lacks: an
installed dependency (``dep``, vendored, put on the path of a ``.venv`` by the setup: a
``.pth`` file, no network), a ``.env`` that only the ``source`` folder holds (gitignored),
and a port to bind (``GASTOWN_PORT``; any free one in a gate).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, git, make_remote
from tests.e2e.feed_waiter import FeedWaiter
from tests.e2e.town_helpers import (
    beads,
    clone,
    configure,
    gate,
    polecats,
    role_processes,
    script_town,
    tear_down_town,
    wait_until,
)

CHECK = '''\
import os, socket, sys, time
import dep
assert open(".env").read().strip() == "SECRET=42", "no .env"
assert dep.VALUE == 7
port = int(os.environ.get("GASTOWN_PORT") or 0)
with socket.socket() as s:
    s.bind(("127.0.0.1", port))
    s.listen()
    if len(sys.argv) > 2:  # record the port, hold it until all N have bound theirs
        folder, n = sys.argv[1], int(sys.argv[2])
        open(os.path.join(folder, str(s.getsockname()[1])), "w").close()
        end = time.monotonic() + 90
        while len(os.listdir(folder)) < n and time.monotonic() < end:
            time.sleep(0.05)
    print("check passed on port", s.getsockname()[1])
'''

SETUP = (f"{sys.executable} -m venv --without-pip .venv && .venv/bin/python -c "
         "\"import os, sysconfig; open(os.path.join(sysconfig.get_paths()['purelib'], "
         "'dep.pth'), 'w').write(os.path.abspath('vendor'))\"")


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remote.git", files={
        "README.md": "project\n", ".gitignore": ".venv/\n.env\n__pycache__/\n",
        "check.py": CHECK, "vendor/dep.py": "VALUE = 7\n"})


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / ".env").write_text("SECRET=42\n")
    return folder


def ports_base() -> int:
    return random.Random(os.getpid() ^ time.monotonic_ns()).randrange(20000, 60000, 100)


def setup_toml(source: Path, command: str = SETUP, timeout: str = "60s",
               base: int | None = None) -> str:
    base = ports_base() if base is None else base
    return (f'[polecats]\nmax = 5\nports = "{base}-{base + 49}"\n'
            f'[polecats.setup]\ncommand = {json.dumps(command)}\ntimeout = "{timeout}"\n'
            f'copy = [".env", "missing.txt"]\nsource = {json.dumps(str(source))}\n'
            'env = { APP_PORT = "{port}", DATABASE_URL = "sqlite:///db_{slot}" }\n')


@pytest.fixture
def town(cli: Cli, remote: Path, tmp_path: Path) -> Iterator[Path]:
    cli.env["GASTOWN_FAULT_STATE"] = str(tmp_path)
    root = script_town(cli, remote, town_toml='max_polecats = 10\n[agents.sleeper]\n'
                                              'command = ["sleep", "600"]\n')
    yield root
    tear_down_town(cli, root)


def setup_processes(town: Path) -> list[int]:
    """Live processes that carry a setup's mark for this town."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"GASTOWN_TOWN={town}".encode() in env and b"GASTOWN_SETUP=1" in env:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def polecat_branches(town: Path) -> list[str]:
    return git("for-each-ref", "--format=%(refname:short)", "refs/heads/polecat/",
               cwd=clone(town)).split()


def nothing_left(town: Path, name: str | None = None) -> None:
    """No polecat, no worktree, no polecat branch, no setup process."""
    assert not polecats(Cli(cwd=town, env={**os.environ, "GASTOWN_TOWN": str(town)}))
    assert not [p for p in (town / "web" / "polecats").iterdir()
                if not p.name.startswith(".") or p.name.endswith(".setup")]
    assert polecat_branches(town) == []
    assert not setup_processes(town)


def test_five_polecats_set_up_run_on_their_own_ports_and_merge(
        cli: Cli, town: Path, source: Path, tmp_path: Path, feed: FeedWaiter) -> None:
    """With the setup (and merge_queue.setup in the gate): 5 polecats run the project's
    check at once, each on a port of its own inside the range, and all 5 merge."""
    base = ports_base()
    configure(town, setup_toml(source, base=base)
              + f'[merge_queue.setup]\ncommand = {json.dumps(SETUP)}\ncopy = [".env"]\n'
              f'source = {json.dumps(str(source))}\n'
              + gate("check", ".venv/bin/python check.py"))
    record = tmp_path / "ports"
    record.mkdir()
    cli.ok("up")
    ids = five_beads(cli, record)
    cli.ok("sling", *ids, "web")
    ends = feed.wait_each(("mr_merged", "polecat_escalated", "mr_rejected"), "bead", ids,
                          timeout=180)
    assert all(e["kind"] == "mr_merged" for e in ends.values()), \
        "\n".join(str(e.get("tail") or e.get("reason")) for e in ends.values())
    ports = sorted(int(p.name) for p in record.iterdir())
    assert len(ports) == 5 and len(set(ports)) == 5
    assert all(base <= p <= base + 49 for p in ports)
    # One block of 10 per slot: the five ports are in five different blocks.
    assert len({(p - base) // 10 for p in ports}) == 5
    feed.wait_each("polecat_nuked", "bead", ids, timeout=120)
    assert all(beads(cli)[b]["status"] == "closed" for b in ids)
    main_files = set(git("ls-tree", "--name-only", "main", cwd=clone(town)).split())
    assert {f"change{i}.txt" for i in range(5)} <= main_files
    assert ".env" not in main_files and ".venv" not in main_files


def test_without_the_setup_the_same_beads_fail_their_gate_with_the_reason(
        cli: Cli, town: Path, tmp_path: Path, feed: FeedWaiter) -> None:
    """No setup: the same five beads' work is submitted (their agents find no .venv to
    run the check with), and every gate fails (no .venv, no .env); the bead says why."""
    configure(town, gate("check", ".venv/bin/python check.py"))
    record = tmp_path / "ports"
    record.mkdir()
    cli.ok("up")
    ids = five_beads(cli, record)
    cli.ok("sling", *ids, "web")
    rejected = feed.wait_each("mr_rejected", "bead", ids, timeout=180)
    assert all("gate check" in str(e["reason"]) for e in rejected.values())
    assert not list(record.iterdir())  # no polecat could run the check
    for bead in ids:
        shown = json.loads(cli.ok("bead", "show", bead, "--json"))
        assert "gate check" in json.dumps(shown)
    assert "gate check" in cli.ok("bead", "show", ids[0])


def five_beads(cli: Cli, record: Path) -> list[str]:
    """Five beads whose agents run the project's check (when a .venv exists: without the
    setup the agent's work still reaches the gate), holding their port until all five
    bound theirs, then commit a change of their own."""
    return [cli.ok("bead", "create", f"change {i}", "--rig", "web", "-d",
                   f"if [ -x .venv/bin/python ]; then .venv/bin/python check.py {record} 5 "
                   f"&& test \"$APP_PORT\" = \"$GASTOWN_PORT\"; fi; echo {i} > change{i}.txt"
                   ).strip() for i in range(5)]


def test_down_all_stops_a_running_setup(
        cli: Cli, town: Path, source: Path, tmp_path: Path) -> None:
    fifo, pid = tmp_path / "fifo", tmp_path / "setup.pid"
    os.mkfifo(fifo)
    configure(town, setup_toml(source, command=f"echo $$ > {pid}; cat {fifo}"))
    cli.ok("up")
    bead = cli.ok("bead", "create", "x", "--rig", "web").strip()
    slinger = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "sling", bead,
                                "web", "--agent", "sleeper"], env=cli.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (pid.exists() and pid.read_text().strip()) or None,
               what="the setup to block")
    first = int(pid.read_text())
    cli.ok("down", "--all")
    slinger.communicate(timeout=60)
    assert not alive(first)
    assert not setup_processes(town)


def test_a_failing_setup_leaves_nothing_behind_and_the_bead_says_why(
        cli: Cli, town: Path, source: Path, tmp_path: Path, feed: FeedWaiter) -> None:
    bg = tmp_path / "bg.pid"
    configure(town, setup_toml(source, command=f"echo preparing; sleep 300 & echo $! > {bg};"
                                               " echo boom >&2; exit 3"))
    cli.ok("up")
    bead = cli.ok("bead", "create", "x", "--rig", "web").strip()
    result = cli("sling", bead, "web", "--agent", "sleeper")
    failed = feed.wait("polecat_setup_failed", bead=bead, timeout=60)
    assert "setup failed (exit 3)" in str(failed["reason"]) and "boom" in str(failed["tail"])
    wait_until(lambda: beads(cli)[bead]["status"] == "open" or None, what="bead open")
    shown = beads(cli)[bead]
    assert "setup failed (exit 3)" in str(shown["reason"]) and "boom" in str(shown["reason"])
    assert result.code == 1 and result.err.count("\n") == 1, result.err
    assert "setup failed (exit 3): boom" in result.err
    assert "preparing\nboom" in str(shown["reason"])  # the output tail, in the bead
    assert not alive(int(bg.read_text()))
    nothing_left(town)


def test_a_setup_past_its_timeout_is_killed_and_rolled_back(
        cli: Cli, town: Path, source: Path, tmp_path: Path, feed: FeedWaiter) -> None:
    pid = tmp_path / "setup.pid"
    configure(town, setup_toml(source, command=f"echo $$ > {pid}; exec sleep 300",
                               timeout="1s"))
    cli.ok("up")
    bead = cli.ok("bead", "create", "x", "--rig", "web").strip()
    cli("sling", bead, "web", "--agent", "sleeper")
    failed = feed.wait("polecat_setup_failed", bead=bead, timeout=60)
    assert "timed out after 1s" in str(failed["reason"])
    wait_until(lambda: beads(cli)[bead]["status"] == "open" or None, what="bead open")
    assert "timed out" in str(beads(cli)[bead]["reason"])
    assert not alive(int(pid.read_text()))
    nothing_left(town)


def test_kill_9_of_the_mayor_during_setup_converges(
        cli: Cli, town: Path, source: Path, tmp_path: Path, feed: FeedWaiter) -> None:
    """The first setup blocks on a fifo; the mayor is killed; the restarted mayor stops
    that setup, discards its files, rolls back, and the sling is done again (its second
    setup passes)."""
    fifo, pid, once = tmp_path / "fifo", tmp_path / "setup.pid", tmp_path / "once"
    os.mkfifo(fifo)
    configure(town, setup_toml(source, command=(
        f"touch made-by-setup.txt; if [ ! -e {once} ]; then touch {once}; "
        f"echo $$ > {pid}; cat {fifo}; fi")))
    cli.ok("up")
    bead = cli.ok("bead", "create", "x", "--rig", "web").strip()
    slinger = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "sling", bead,
                                "web", "--agent", "sleeper"], env=cli.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (pid.exists() and pid.read_text().strip()) or None,
               what="the setup to block")
    first = int(pid.read_text())
    os.kill(role_processes(town)["mayor"], signal.SIGKILL)
    slinger.communicate(timeout=60)
    wait_until(lambda: [p for p in polecats(cli).values() if p["state"] == "working"] or None,
               what="the sling done again after the restart", timeout=90)
    assert not alive(first)
    assert not setup_processes(town)
    (working,) = polecats(cli).values()
    tree = Path(str(working["worktree"]))
    assert (tree / "made-by-setup.txt").exists() and (tree / ".env").exists()
    assert not list((town / "web" / "polecats").glob(".*.setup"))
    assert polecat_branches(town) == [f"polecat/{working['name']}"]
    # The feed's follower may print the rollback after `status` already shows the new spawn.
    feed.wait("polecat_nuked", bead=bead,
              where=lambda e: "interrupted during its setup" in str(e.get("reason")))


def test_teardown_runs_before_the_nuke_and_its_failure_does_not_block_it(
        cli: Cli, town: Path, source: Path, tmp_path: Path, feed: FeedWaiter) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    configure(town, setup_toml(source, command="true")
              + f'[polecats.teardown]\ncommand = "test -e .git && echo $GASTOWN_PORT > '
                f'{marks}/$GASTOWN_POLECAT; exit 4"\n')
    cli.ok("up")
    bead = cli.ok("bead", "create", "x", "--rig", "web", "-d", "echo 1 > one.txt").strip()
    name = cli.ok("sling", bead, "web").split()[0]
    feed.wait("polecat_nuked", bead=bead, timeout=120)
    failed = feed.wait("polecat_teardown_failed", bead=bead, timeout=5)
    assert "teardown failed (exit 4)" in str(failed["reason"])
    assert (marks / name).read_text().strip().isdigit()
    assert beads(cli)[bead]["status"] == "closed"
    nothing_left(town)


def test_crew_add_setup_runs_the_rig_setup_in_the_workspace(
        cli: Cli, town: Path, source: Path) -> None:
    configure(town, setup_toml(source, command="echo $GASTOWN_RIG > made.txt"))
    path = Path(cli.ok("crew", "add", "bob", "--rig", "web", "--setup").strip())
    assert (path / "made.txt").read_text() == "web\n" and (path / ".env").exists()
    plain = Path(cli.ok("crew", "add", "ann", "--rig", "web").strip())
    assert not (plain / "made.txt").exists() and not (plain / ".env").exists()
    rig_toml = town / "web" / "rig.toml"
    rig_toml.write_text(rig_toml.read_text().replace("echo $GASTOWN_RIG > made.txt",
                                                     "echo nope >&2; exit 2"))
    failed = cli("crew", "add", "cid", "--rig", "web", "--setup")
    assert failed.code == 1 and failed.err.count("\n") == 1
    assert "setup failed (exit 2): nope" in failed.err

