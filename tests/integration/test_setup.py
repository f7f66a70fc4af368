"""The worktree bootstrap's building blocks on real processes, files and SQLite: slots
allocated by concurrent reservations, the setup command's process group, copies and links.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from gastown.roles.adapters.store import Rig, open_store
from gastown.roles.core.config_setup import SetupConfig
from gastown.roles.core.lifecycle import Nuke, SessionStarted
from gastown.roles.operations.setup import place_files, port_free, run_command

NAMES = ["toast", "alpha", "bravo", "cobalt", "dingo", "echo", "fox", "golf"]


def _reserve(path: str, bead: str) -> tuple[str, int | None]:
    with open_store(Path(path)) as store:
        sling = store.queue_sling(bead, "web", agent=None, force=False)
        polecat = store.reserve_polecat(sling.id, pool=NAMES, branch_template="polecat/{name}",
                                        polecats_dir="/p", agent="script", rig_cap=8,
                                        town_cap=8)
        assert polecat is not None
        return polecat.name, polecat.slot


def test_concurrent_reservations_get_distinct_slots_and_a_nuke_frees_one(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_store(path) as store:
        store.add_rig(Rig("web", "web", "/r", "main", time.time()))
        beads = [store.create_bead(prefix="web", rig="web", title=f"b{i}").id
                 for i in range(6)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(6) as pool:
        got = pool.starmap(_reserve, [(str(path), b) for b in beads])
    assert sorted(slot for _, slot in got if slot is not None) == list(range(6))
    with open_store(path) as store:
        victim = next(name for name, slot in got if slot == 2)
        store.apply_polecat_event("web", victim, SessionStarted())
        store.apply_polecat_event("web", victim, Nuke(force=True, reason="test"))
        bead = store.create_bead(prefix="web", rig="web", title="next").id
    assert _reserve(str(path), bead)[1] == 2  # the freed slot, the smallest


def test_a_setup_past_its_timeout_is_killed_with_its_whole_group(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    pids = tmp_path / "pids"
    result = run_command(f"sleep 300 & echo $! > {pids}; echo started; sleep 300",
                         cwd=tmp_path, env=dict(os.environ), timeout=0.5, log_path=log)
    assert not result.ok and "timed out after 0.5s" in result.reason
    assert "started" in result.tail
    background = int(pids.read_text())
    stat = Path(f"/proc/{background}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert "== setup: sleep 300" in log.read_text()


def test_a_failed_setup_reports_its_tail_and_a_passing_one_nothing(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    bad = run_command("echo one; echo two >&2; exit 5", cwd=tmp_path, env=dict(os.environ),
                      timeout=30, log_path=log)
    assert bad.reason == "setup failed (exit 5)" and bad.tail == "one\ntwo"
    good = run_command("true", cwd=tmp_path, env=dict(os.environ), timeout=30, log_path=log)
    assert good.ok and good.tail == ""


def test_copies_and_links_skip_what_the_source_lacks(tmp_path: Path) -> None:
    source, tree = tmp_path / "src", tmp_path / "tree"
    (source / "config").mkdir(parents=True)
    (source / ".env").write_text("A=1\n")
    (source / "config" / "local.toml").write_text("x = 1\n")
    (source / "node_modules" / "pkg").mkdir(parents=True)
    tree.mkdir()
    setup = SetupConfig(copy=(".env", "config/local.toml", "absent.txt"),
                        link=("node_modules", "absent_dir"))
    done = place_files(setup, source, tree)
    assert done == ["copied .env", "copied config/local.toml", "linked node_modules"]
    assert (tree / ".env").read_text() == "A=1\n"
    assert (tree / "node_modules").is_symlink()
    assert (tree / "node_modules").resolve() == (source / "node_modules").resolve()
    assert not (tree / "absent.txt").exists() and not (tree / "absent_dir").exists()
    again = place_files(setup, source, tree)  # again: the copies refreshed, the link kept
    assert again == done[:2] and (tree / "node_modules").is_symlink()


def test_port_free_is_a_bind_test() -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        assert not port_free(held.getsockname()[1])
