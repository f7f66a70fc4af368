"""``gastown prime`` inside a live polecat's worktree, and what agents spent as the CLI
shows it (``polecat list``, ``bead show``, ``status``, ``feed``).

The town runs for real; the polecat is a ``script`` agent held in the middle of its
work (a commit made, a file left uncommitted, then ``sleep``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gastown.roles.adapters.store import open_store
from tests.conftest import Cli, make_remote
from tests.e2e.town_helpers import script_town, tear_down_town, wait_until

SCRIPT = """echo one > a.txt
git add a.txt
git commit -qm "add a"
echo two > b.txt
sleep 600
"""


@pytest.fixture
def held(cli: Cli, tmp_path: Path) -> Iterator[tuple[Path, str, Path]]:
    """A running town with one polecat held mid-work: (town, bead id, worktree)."""
    root = script_town(cli, make_remote(tmp_path / "web.git"))
    try:
        cli.ok("up")
        bead = cli.ok("bead", "create", "Add the a file", "--rig", "web", "-d", SCRIPT).strip()
        name, worktree = cli.ok("sling", bead, "web").split()
        wait_until(lambda: (Path(worktree) / "b.txt").exists(), what="the script's b.txt")
        assert name == "toast"
        yield root, bead, Path(worktree)
    finally:
        tear_down_town(cli, root)


def test_prime_in_the_worktree_prints_the_bead_rules_and_where_the_work_stands(
        cli: Cli, held: tuple[Path, str, Path]) -> None:
    _root, bead, worktree = held
    (worktree / "sub").mkdir()
    for cwd in (worktree, worktree / "sub"):  # found by the directory alone
        out = cli.ok("prime", cwd=cwd)
        assert "you are polecat toast of rig web" in out
        assert f"bead:      {bead}  Add the a file" in out
        assert "state:     working" in out
        assert f"worktree:  {worktree}" in out
        assert "branch:    polecat/toast" in out
        assert "  echo one > a.txt" in out  # the task, i.e. the bead's description
        assert "commit it, then run `gastown done`" in out
        assert 'gastown done --status escalated --reason "..."' in out
        assert "- 1 commit(s) ahead of main:" in out and "add a" in out
        assert "?? b.txt" in out
        assert "note:" not in out
    data = json.loads(cli.ok("prime", "--json", cwd=worktree))
    assert (data["rig"], data["polecat"], data["bead"]) == ("web", "toast", bead)
    assert data["title"] == "Add the a file" and data["description"] == SCRIPT
    assert data["branch"] == "polecat/toast" and data["worktree"] == str(worktree)
    assert data["default_branch"] == "main" and data["state"] == "working"
    assert data["commits_ahead"] == 1 and data["commits"][0].endswith("add a")
    assert any(line.endswith("b.txt") for line in data["dirty"])
    assert any("gastown done" in rule for rule in data["rules"]) and data["notes"] == []


def test_prime_finds_the_polecat_by_its_environment_from_anywhere(
        cli: Cli, held: tuple[Path, str, Path], tmp_path: Path) -> None:
    """The agent's own environment (GASTOWN_RIG, GASTOWN_POLECAT) names the polecat, as
    in a hook run from elsewhere."""
    _root, bead, _worktree = held
    env = Cli(cwd=tmp_path, env={**cli.env, "GASTOWN_RIG": "web",
                                 "GASTOWN_POLECAT": "toast"})
    data = json.loads(env.ok("prime", "--json"))
    assert data["bead"] == bead and data["commits_ahead"] == 1


def test_prime_never_fails_inside_a_polecat_even_when_nothing_can_be_read(
        cli: Cli, held: tuple[Path, str, Path], tmp_path: Path) -> None:
    """A hook must not fail the agent: a polecat the store does not know, or no town at
    all, still gets its rules (from the environment) and exit 0, with a note."""
    root, bead, worktree = held
    ghost = Cli(cwd=tmp_path, env={**cli.env, "GASTOWN_RIG": "web", "GASTOWN_POLECAT": "ghost",
                                   "GASTOWN_BEAD": "web-zzzzz",
                                   "GASTOWN_BRANCH": "polecat/ghost"})
    result = ghost("prime")
    assert result.code == 0, result.err
    assert "you are polecat ghost of rig web" in result.out and "bead:      web-zzzzz" in result.out
    assert "note: the town's records could not be read: no polecat web/ghost" in result.out
    assert "`gastown done`" in result.out
    env = {k: v for k, v in cli.env.items() if k != "GASTOWN_TOWN"}
    lost = Cli(cwd=tmp_path, env={**env, "GASTOWN_RIG": "web", "GASTOWN_POLECAT": "toast",
                                  "GASTOWN_WORKTREE": str(worktree)})
    result = lost("prime")
    assert result.code == 0, result.err
    assert "note: the town was not found" in result.out and str(worktree) in result.out
    (root / "town.toml").write_text("this is [not toml\n")  # a broken town.toml
    result = cli("prime", cwd=worktree)
    assert result.code == 0 and f"bead:      {bead}" in result.out, result.err


def test_prime_outside_a_polecat_says_so_in_one_line(cli: Cli, tmp_path: Path) -> None:
    root = script_town(cli, make_remote(tmp_path / "web.git"))
    try:
        for cwd in (root, root / "web", tmp_path):
            result = cli("prime", cwd=cwd)
            assert (result.code, result.out) == (1, "")
            assert result.err == "gastown: not in a polecat worktree\n"
        outside = Cli(cwd=tmp_path, env={k: v for k, v in cli.env.items()
                                         if k != "GASTOWN_TOWN"})
        result = outside("prime", "--json")
        assert result.code == 1 and result.err == "gastown: not in a polecat worktree\n"
    finally:
        tear_down_town(cli, root)


def test_what_agents_spent_shows_in_list_show_status_and_feed(
        cli: Cli, held: tuple[Path, str, Path]) -> None:
    """Turns recorded in the store (as the witness and the agent hooks do) read back
    through every view."""
    root, bead, _worktree = held
    assert "TOKENS" not in cli.ok("polecat", "list")
    assert "tokens:" not in cli.ok("bead", "show", bead)
    assert "agents:" not in cli.ok("status")
    with open_store(root / "state.db") as store:
        store.record_turn("web", "toast", tokens_in=12_345, tokens_out=1_100, cost_usd=0.5,
                          agent_session="sess-1")
        store.record_turn("web", "toast", tokens_in=1_000, tokens_out=80, cost_usd=0.25)
    listed = json.loads(cli.ok("polecat", "list", "--json"))[0]
    assert (listed["turns"], listed["tokens_in"], listed["tokens_out"]) == (2, 13_345, 1_180)
    assert listed["cost_usd"] == pytest.approx(0.75) and listed["nudges"] == 0
    table = cli.ok("polecat", "list").splitlines()
    assert "TOKENS" in table[0] and "13.3k/1.2k" in table[1]
    assert "  tokens:   in 13345, out 1180, cost $0.7500" in cli.ok("bead", "show", bead)
    shown = json.loads(cli.ok("bead", "show", bead, "--json"))
    assert (shown["tokens_in"], shown["tokens_out"]) == (13_345, 1_180)
    assert shown["polecats"][0]["turns"] == 2
    usage = json.loads(cli.ok("status", "--json"))["usage"]
    assert (usage["turns"], usage["tokens_in"], usage["tokens_out"]) == (2, 13_345, 1_180)
    assert "agents:         2 turns, 13345 tokens in, 1180 out, $0.7500" in cli.ok("status")
    feed = cli.ok("feed")
    assert "web/toast turn 1 ended: 12.3k in, 1.1k out, $0.5000" in feed
    assert "web/toast turn 2 ended: 1.0k in, 80 out, $0.2500" in feed
