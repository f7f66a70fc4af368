"""The warm worktree pool (``polecats.pool_size``) through the real CLI and a real town.

A polecat's worktree that came from the pool is recognised by its git directory: a tree
the pool made was created as ``<rig>/pool/.busy-<name>``, so git named its directory
``.git/worktrees/-busy-<name>`` (git turns the leading dot into a dash), and ``git
worktree move`` keeps that name wherever the tree goes; a worktree added for a sling is
named after its polecat.
"""

from __future__ import annotations

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
    polecats,
    role_processes,
    script_town,
    tear_down_town,
    wait_until,
)

AGENTS = '[agents.sleeper]\ncommand = ["sleep", "600"]\n'


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remote.git", files={"README.md": "hello\n",
                                                       ".gitignore": "*.log\n",
                                                       "src/app.py": "x = 1\n"})


@pytest.fixture
def town(cli: Cli, remote: Path, tmp_path: Path) -> Iterator[Path]:
    cli.env["GASTOWN_FAULT_STATE"] = str(tmp_path)
    root = script_town(cli, remote, town_toml="max_polecats = 10\n" + AGENTS,
                       rig_toml="[polecats]\npool_size = 2\n")
    yield root
    tear_down_town(cli, root)


def pool_dir(town: Path) -> Path:
    return town / "web" / "pool"


def ready(town: Path) -> list[str]:
    folder = pool_dir(town)
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) \
        if folder.is_dir() else []


def busy(town: Path) -> list[str]:
    folder = pool_dir(town)
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) \
        if folder.is_dir() else []


def admin_of(worktree: Path) -> str:
    """The name of the worktree's git directory under ``.git/worktrees``."""
    return (worktree / ".git").read_text().strip().rsplit("/", 1)[1]


def detached_head(tree: Path) -> str | None:
    if subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=tree,
                      capture_output=True).returncode == 0:
        return None  # on a branch
    return git("rev-parse", "HEAD", cwd=tree).strip()


def files_of(tree: Path) -> set[str]:
    """Every file and folder in ``tree`` but ``.git``, relative."""
    return {str(p.relative_to(tree)) for p in tree.rglob("*")
            if p.relative_to(tree).parts[0] != ".git"}


def pool_settled(town: Path, size: int) -> list[str] | None:
    """The ready trees once there are ``size``, none in flight, all detached and clean at
    the default branch's tip, holding exactly its files; else None."""
    names = ready(town)
    if len(names) != size or busy(town):
        return None
    tip = git("rev-parse", "main", cwd=clone(town)).strip()
    tracked = set(git("ls-tree", "-r", "-t", "--name-only", "main", cwd=clone(town)).split())
    for name in names:
        tree = pool_dir(town) / name
        try:
            if detached_head(tree) != tip or files_of(tree) != tracked:
                return None
        except (OSError, subprocess.CalledProcessError):
            return None  # taken or moved while we looked
    return names


def registered(town: Path) -> set[str]:
    out = git("worktree", "list", "--porcelain", cwd=clone(town))
    return {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")}


def test_slings_take_pooled_trees_and_the_pool_follows_merges(cli: Cli, town: Path,
                                                               feed: FeedWaiter) -> None:
    """pool_size = 2: both slings get pool trees, the work merges, the nukes recycle or
    drop the trees, and the pool ends with two clean trees at the new tip of main."""
    cli.ok("up")
    first_pool = wait_until(lambda: pool_settled(town, 2), what="the pool to fill")
    first_admins = {admin_of(pool_dir(town) / n) for n in first_pool}
    ids = [cli.ok("bead", "create", f"change {i}", "--rig", "web", "-d",
                  f"echo {i} > change{i}.txt").strip() for i in range(2)]
    worktrees = [Path(cli.ok("sling", bead, "web").split()[1]) for bead in ids]
    assert admin_of(worktrees[0]) in first_admins  # a tree of the pool, moved into place
    assert admin_of(worktrees[1]).startswith("-busy-")  # the pool's, maybe refilled since
    feed.wait_each("mr_merged", "bead", ids, timeout=120)
    feed.wait_each("polecat_nuked", "bead", ids, timeout=120)
    assert all(beads(cli)[b]["status"] == "closed" for b in ids) and not polecats(cli)
    main_files = git("ls-tree", "--name-only", "main", cwd=clone(town)).split()
    assert {"change0.txt", "change1.txt"} <= set(main_files)
    # The pool follows main after the merges: two trees, detached at the new tip.
    names = wait_until(lambda: pool_settled(town, 2), what="the pool at the new tip")
    assert registered(town) == {str(clone(town))} | {str(pool_dir(town) / n) for n in names}
    assert git("branch", "--list", "polecat/*", cwd=clone(town)).strip() == ""
    assert not any((town / "web" / "polecats").iterdir())


def test_a_recycled_tree_keeps_nothing_of_its_previous_polecat(cli: Cli, town: Path) -> None:
    """A nuked polecat's tree goes back into the pool and to the next sling without one
    file of its own: tracked changes, staged and untracked files, ignored files, a
    nested repository, a commit on its branch -- all gone."""
    cli.ok("up")
    wait_until(lambda: pool_settled(town, 2), what="the pool to fill")
    bead = cli.ok("bead", "create", "first", "--rig", "web").strip()
    name, path = cli.ok("sling", bead, "web", "--agent", "sleeper").split()
    tree = Path(path)
    admin = admin_of(tree)
    assert admin.startswith("-busy-")
    wait_until(lambda: pool_settled(town, 2), what="the pool to be refilled")
    (tree / "committed.txt").write_text("on the branch\n")
    git("add", "committed.txt", cwd=tree)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "work", cwd=tree)
    (tree / "README.md").write_text("changed\n")
    (tree / "staged.txt").write_text("staged\n")
    git("add", "staged.txt", cwd=tree)
    (tree / "untracked.txt").write_text("untracked\n")
    (tree / "build.log").write_text("ignored\n")
    (tree / "src" / "cache").mkdir()
    (tree / "src" / "cache" / "deep.log").write_text("ignored too\n")
    git("init", "-q", str(tree / "nested"), cwd=tree)
    cli.ok("down")  # no mayor: nothing tends the pool while we look at it
    rig_toml = town / "web" / "rig.toml"
    rig_toml.write_text(rig_toml.read_text().replace("pool_size = 2", "pool_size = 3"))
    cli.ok("polecat", "nuke", f"web/{name}", "--force")
    assert not tree.exists()
    assert git("branch", "--list", f"polecat/{name}", cwd=clone(town)).strip() == ""
    (dirty,) = [n for n in busy(town) if n.startswith(".dirty-")]  # for the mayor to clean
    assert admin_of(pool_dir(town) / dirty) == admin
    cli.ok("up")
    names = wait_until(lambda: pool_settled(town, 3), what="the recycled tree cleaned")
    recycled = pool_dir(town) / names[-1]  # the newest: where the recycled tree went
    assert admin_of(recycled) == admin
    second = cli.ok("bead", "create", "second", "--rig", "web").strip()
    _, path2 = cli.ok("sling", second, "web", "--agent", "sleeper").split()
    tree2 = Path(path2)
    assert admin_of(tree2) == admin  # the recycled tree, taken first (the newest)
    leftovers = {"committed.txt", "staged.txt", "untracked.txt", "build.log", "src/cache",
                 "src/cache/deep.log", "nested"}
    assert not leftovers & files_of(tree2)
    assert (tree2 / "README.md").read_text() == "hello\n"
    status = git("status", "--porcelain", "--ignored", "--untracked-files=all", cwd=tree2)
    assert status.strip() == ""
    # A fresh branch at main (the name may be the same: it was released by the nuke).
    assert git("rev-parse", "HEAD", cwd=tree2) == git("rev-parse", "main", cwd=clone(town))


def test_kill_9_mayor_mid_take_converges(cli: Cli, town: Path) -> None:
    """kill -9 of the mayor after it moved a pool tree to the polecat's path but before
    the branch: after restart the polecat works (or was rolled back), nothing is
    orphaned, and the pool is whole again."""
    cli.env["GASTOWN_FAULTS"] = "mayor@sling.after_pool_take=pause:600:once"
    cli.ok("up")
    wait_until(lambda: pool_settled(town, 2), what="the pool to fill")
    bead = cli.ok("bead", "create", "crash", "--rig", "web").strip()
    slinger = subprocess.Popen([sys.executable, "-m", "gastown.supervisor", "sling", bead,
                                "web", "--agent", "sleeper"], env=cli.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = town / "logs" / "mayor.out"
    wait_until(lambda: out.exists() and "pause at mayor@sling.after_pool_take"
               in out.read_text(), what="the mayor to pause mid-take")
    taken = [p for p in (town / "web" / "polecats").iterdir() if not p.name.startswith(".")]
    assert len(taken) == 1 and detached_head(taken[0]) is not None  # moved, no branch yet
    os.kill(role_processes(town)["mayor"], signal.SIGKILL)
    slinger.communicate(timeout=60)

    def settled() -> list[dict[str, object]] | None:
        mine = [p for p in polecats(cli).values() if p["bead"] == bead]
        return mine if mine and all(p["state"] == "working" for p in mine) else None

    try:
        (polecat,) = wait_until(settled, what="the sling to be rolled back and redone")
    except (AssertionError, ValueError):
        print(cli("polecat", "list").out, cli("feed").out[-4000:],
              (town / "logs" / "mayor.log").read_text()[-6000:])
        raise
    name = str(polecat["name"])
    assert polecat["session_alive"] is True
    assert git("symbolic-ref", "--short", "HEAD",
               cwd=town / "web" / "polecats" / name).strip() == f"polecat/{name}"
    names = wait_until(lambda: pool_settled(town, 2), what="the pool to be whole again")
    assert registered(town) == {str(clone(town)), str(town / "web" / "polecats" / name)} | \
        {str(pool_dir(town) / n) for n in names}
    dirs = [p.name for p in (town / "web" / "polecats").iterdir() if not p.name.startswith(".")]
    assert dirs == [name]
    branches = git("branch", "--list", "polecat/*", "--format=%(refname:short)",
                   cwd=clone(town)).split()
    assert branches == [f"polecat/{name}"]
    assert cli("doctor").out == "all clear\n"


@pytest.mark.parametrize("point", ["pool.after_fill_add", "pool.after_clean_move"])
def test_kill_9_mayor_mid_tending_converges(cli: Cli, town: Path, point: str) -> None:
    """kill -9 of the mayor while it fills the pool or cleans a recycled tree: the busy
    tree's lock dies with it, the next mayor removes the tree and the pool is whole."""
    cli.env["GASTOWN_FAULTS"] = f"mayor@{point}=pause:600:once"
    cli.ok("up")
    if point == "pool.after_clean_move":
        wait_until(lambda: pool_settled(town, 2), what="the pool to fill")
        bead = cli.ok("bead", "create", "first", "--rig", "web").strip()
        name, path = cli.ok("sling", bead, "web", "--agent", "sleeper").split()
        (Path(path) / "left.log").write_text("ignored\n")
        wait_until(lambda: pool_settled(town, 2), what="the pool to be refilled")
        configure_pool(town, 3)  # room for the recycled tree
        cli.ok("polecat", "nuke", f"web/{name}", "--force")
    out = town / "logs" / "mayor.out"
    wait_until(lambda: out.exists() and f"pause at mayor@{point}" in out.read_text(),
               what="the mayor to pause with a busy tree")
    assert [n for n in busy(town) if n.startswith(".busy-") and not n.endswith(".lock")]
    mayor = role_processes(town)["mayor"]
    os.kill(mayor, signal.SIGKILL)
    size = 3 if point == "pool.after_clean_move" else 2
    names = wait_until(lambda: pool_settled(town, size), what="the pool to be whole again")
    assert role_processes(town)["mayor"] != mayor
    assert registered(town) == {str(clone(town))} | {str(pool_dir(town) / n) for n in names}
    assert not polecats(cli) or all(p["state"] == "nuked" for p in polecats(cli).values())
    assert cli("doctor").out == "all clear\n"


def configure_pool(town: Path, size: int) -> None:
    rig_toml = town / "web" / "rig.toml"
    text = rig_toml.read_text()
    rig_toml.write_text("\n".join(f"pool_size = {size}" if line.startswith("pool_size")
                                  else line for line in text.splitlines()) + "\n")


def test_leftovers_doctor_down_all_and_rig_remove_leave_nothing(cli: Cli, town: Path) -> None:
    """A half-made pool tree (its worker died: no lock held) is removed by doctor --fix;
    down --all drains the pool; rig remove takes whatever is left with the rig."""
    cli.ok("up")
    wait_until(lambda: pool_settled(town, 2), what="the pool to fill")
    cli.ok("down")
    leftover = pool_dir(town) / ".busy-0000000000000000-dead00"
    git("worktree", "add", "-q", "--detach", str(leftover), "main", cwd=clone(town))
    (leftover / "half.txt").write_text("half made\n")
    found = cli("doctor")
    assert found.code != 0 and "pool_leftover" in found.out + found.err, found
    cli.ok("doctor", "--fix")
    assert not leftover.exists() and busy(town) == []
    assert cli("doctor").out == "all clear\n"
    assert len(ready(town)) == 2  # ready trees are the pool's, not orphans
    assert "removed 2 idle pooled worktree(s)" in cli.ok("down", "--all")
    assert not pool_dir(town).exists()
    assert registered(town) == {str(clone(town))}
    cli.ok("up")
    wait_until(lambda: pool_settled(town, 2), what="the pool to fill again")
    cli.ok("rig", "remove", "web")
    assert not (town / "web").exists()
