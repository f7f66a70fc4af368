"""The chaos test in CI: a few runs with fixed seeds, and the harness's own checks.

Each run builds a real town, kills its processes at random moments and at armed fail
points, waits for it to settle and checks the invariants (tests/chaos/README.md). A run
that finds a violation fails with every violation listed; reproduce it with
``python -m tests.chaos --runs 1 --seed <seed> --keep -v``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.chaos import checks
from tests.chaos.harness import run_once
from tests.chaos.plan import (
    FAIL_POINTS,
    POOL_POINTS,
    RIG,
    SPECULATION_POINTS,
    UNREACHED_POINTS,
    make_plan,
)
from tests.chaos.world import build_world, census, remove_world
from tests.conftest import git

#: Seeds of the CI runs, chosen so that together they kill every kind of target and arm
#: six fail points: the spawn race (mayor paused after starting the session, killed 3 s
#: later), the supervisor's start, the witness's readiness, three merge steps, one of them
#: with the supervisor killed while the refinery is paused (``python -m tests.chaos``
#: prints what a seed does).
SEEDS = (17, 36, 49)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_chaos_run_keeps_every_invariant(seed: int) -> None:
    """kill -9s and fail points in a working town: after `up`, nothing is lost, doubled,
    untested, moved backwards, orphaned or crashed."""
    record = run_once(seed, max_kills=4, max_faults=2, converge_timeout=120)
    assert sum(record.kills.values()) > 0, record.report()
    assert record.ok, "\n" + record.report()


def test_plan_is_a_function_of_the_seed() -> None:
    """A seed names one plan, and plans differ between seeds."""
    assert make_plan(7).describe() == make_plan(7).describe()
    assert len({make_plan(s).describe() for s in range(20)}) == 20
    plan = make_plan(3)
    kinds = [b.kind for b in plan.beads]
    assert kinds.count("conflict") == 2 and kinds.count("broken") == 1
    assert 7 <= len(kinds) <= 9


def test_every_fail_point_of_the_code_is_known_to_the_plan() -> None:
    """A fail point added to the code is either armed by chaos runs or listed as one
    they cannot reach."""
    in_code = set()
    for path in [*(ROOT / "roles").rglob("*.py"), *(ROOT / "supervisor").rglob("*.py")]:
        for match in re.finditer(r'fault_point\([^,]+,\s*"([^"]+)"\)', path.read_text()):
            in_code.add(match.group(1))
    assert in_code, "no fault_point( calls found"
    armed = {point for _, point in (*FAIL_POINTS, *POOL_POINTS, *SPECULATION_POINTS)}
    assert in_code - armed - UNREACHED_POINTS == set()


def _agent_commit(world_clone: Path, worktree: Path, name: str, text: str, *,
                  hook: bool = True, subject: str | None = None) -> str:
    """A commit as an agent makes it; ``hook=False``: as if its hook had been killed."""
    git("worktree", "add", "-q", str(worktree), "-b", f"polecat/{name}", "main",
        cwd=world_clone)
    (worktree / f"{name}.txt").write_text(text)
    env = {"GASTOWN_ROLE": "polecat" if hook else "", "GASTOWN_BEAD": f"web-{name}",
           "GASTOWN_POLECAT": name}
    subprocess.run(["git", "add", "-A"], cwd=worktree, check=True)
    subprocess.run(["git", "commit", "-q", "-m", subject or name], cwd=worktree, check=True,
                   env={**os.environ, **env})
    return git("rev-parse", "HEAD", cwd=worktree).strip()


def test_checks_catch_each_kind_of_damage() -> None:
    """Each check fires on the damage it exists for (a check that cannot fail proves
    nothing): deleted agent commits (one its hook recorded, one it did not), a patch
    landed twice, an ungated main, a main moved backwards, a stray worktree, branch and
    folder."""
    world = build_world(make_plan(1))
    try:
        clone = world.clone
        lost = _agent_commit(clone, world.polecats_dir / "lost", "lost", "lost work\n")
        unrecorded = _agent_commit(clone, world.polecats_dir / "hidden", "hidden", "hidden\n",
                                   hook=False, subject="web-hid01: chaos hidden")
        for name in ("lost", "hidden"):
            git("worktree", "remove", "--force", str(world.polecats_dir / name), cwd=clone)
            git("branch", "-D", f"polecat/{name}", cwd=clone)
        _agent_commit(clone, world.polecats_dir / "kept", "kept", "kept work\n")
        # Main: a change, its revert and the change again (one patch twice), pushed
        # without any gate; then pushed backwards.
        (clone / "twice.txt").write_text("twice\n")
        git("add", "-A", cwd=clone)
        git("commit", "-q", "-m", "twice", cwd=clone)
        git("revert", "--no-edit", "HEAD", cwd=clone)
        git("cherry-pick", "HEAD~1", cwd=clone)
        git("push", "-q", "origin", "main", cwd=clone)
        git("push", "-q", "--force", "origin", f"{world.initial}:main", cwd=clone)
        git("push", "-q", "origin", "main", cwd=clone)
        git("branch", "polecat/stray", "main", cwd=clone)
        (world.polecats_dir / "ghost").mkdir()

        kept = git("rev-parse", "polecat/kept", cwd=clone).strip()
        work = checks.check_work(world, {"web-lost": {"status": "closed", "title": "x"}},
                                 [{"id": "mr-1", "bead": "web-kept", "state": "merged",
                                   "head": kept, "merged_commit": lost}])
        assert sorted(line.split()[1] for line in work["lost_work"]) == sorted(
            [lost[:10], unrecorded[:10]])
        assert len(work["double_patch"]) == 1
        assert len(work["merged_not_on_main"]) == 3
        # Two commits pushed at once (as a chain is): the first was never main's tip.
        tree = git("rev-parse", "main^{tree}", cwd=clone).strip()
        first = git("commit-tree", tree, "-p", "main", "-m", "first", cwd=clone).strip()
        second = git("commit-tree", tree, "-p", first, "-m", "second", cwd=clone).strip()
        git("push", "-q", "origin", f"{second}:refs/heads/main", cwd=clone)
        main = checks.check_main(world)
        assert any("not a fast-forward" in line for line in main["main_backwards"])
        assert main["untested_on_main"]
        each = checks.check_main(world, each_gated=True)["untested_on_main"]
        assert [line for line in each if "with batches of one" in line] == [
            f"remote: {first[:10]} is on main, with batches of one, and no gate passed "
            "its tree"]
        orphans = checks.check_orphans(world, [], census(world))
        assert any("worktree of no polecat" in line for line in orphans)
        assert any("polecat/stray" in line for line in orphans)
        assert any("folder of no polecat: ghost" in line for line in orphans)
        stranded = checks.check_beads({"web-x": {"status": "open", "title": "x"}}, [], [])
        assert stranded
        logs = world.town / "logs"
        logs.mkdir(exist_ok=True)
        (logs / "mayor.log").write_text('{"exception": "Traceback (most recent call last):'
                                        '\\n  File \\"x\\"\\nValueError: boom"}\n')
        assert checks.check_tracebacks(world) == ["mayor.log: ValueError: boom"]
        assert RIG == "web"
    finally:
        remove_world(world)
