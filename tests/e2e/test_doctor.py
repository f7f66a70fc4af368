"""``gastown doctor [--fix] [--rig R] [--json]`` through the real CLI, on a real town."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gastown.roles.adapters.processes import processes_with_env
from tests.conftest import Cli, git, make_remote
from tests.e2e.town_helpers import (
    feed_kinds,
    tear_down_town,
    wait_until,
)

TOWN_TOML = ('default_agent = "script"\n[sessions]\nbackend = "process"\n'
             '[supervisor]\nstop_timeout = "2s"\nrestart_delay = "0.05s"\n'
             '[agents.sleeper]\ncommand = ["sleep", "600"]\n')


@pytest.fixture
def town(cli: Cli, tmp_path: Path) -> Iterator[Path]:
    """A town with rig ``web`` in a short path (process sessions); torn down hard."""
    root = Path(tempfile.mkdtemp(prefix="gtd", dir="/tmp")) / "t"
    cli.ok("install", str(root))
    (root / "town.toml").write_text(TOWN_TOML)
    cli.env["GASTOWN_TOWN"] = str(root)
    cli.ok("rig", "add", "web", str(make_remote(tmp_path / "web", files={"app.py": "x = 1\n"})))
    yield root
    tear_down_town(cli, root)


def polecats(cli: Cli) -> dict[str, dict[str, object]]:
    return {p["name"]: p for p in json.loads(cli.ok("polecat", "list", "--json"))}


def agent_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def sling_sleeper(cli: Cli) -> str:
    bead = cli.ok("bead", "create", "sleep", "--rig", "web").strip()
    name = cli.ok("sling", bead, "web", "--agent", "sleeper").split()[0]
    wait_until(lambda: polecats(cli)[name]["session_alive"], what="the agent to run")
    return name


def test_clean_town_is_all_clear(cli: Cli, town: Path) -> None:
    """A fresh town, down and then up with a working polecat, is all clear (exit 0)."""
    result = cli("doctor")
    assert (result.code, result.out) == (0, "all clear\n")
    cli.ok("up")
    sling_sleeper(cli)
    result = cli("doctor", "--fix")
    assert (result.code, result.out) == (0, "all clear\n"), result.err


def test_doctor_reports_then_fixes_orphan_folder_and_stale_row(cli: Cli, town: Path) -> None:
    """An orphan folder and a row whose worktree vanished: exit 1, then --fix, then clean."""
    cli.ok("up")
    name = sling_sleeper(cli)
    bead = str(polecats(cli)[name]["bead"])
    cli.ok("down")  # the agent keeps running; the town is down
    agents = processes_with_env({"GASTOWN_TOWN": str(town), "GASTOWN_POLECAT": name})
    assert agents
    shutil.rmtree(town / "web" / "polecats" / name)
    (town / "web" / "polecats" / "ghost").mkdir()

    result = cli("doctor")
    assert result.code == 1
    lines = result.out.splitlines()
    assert any(line.startswith(f"web  stale_registration  {name}: ") for line in lines)
    assert any(line.startswith(f"web  half_created  {town}/web/polecats/ghost: ")
               for line in lines)
    assert all(" -> " in line for line in lines)

    result = cli("doctor", "--fix")
    assert result.code == 0, result.out
    assert not (town / "web" / "polecats" / "ghost").exists()
    assert polecats(cli) == {}
    assert f"polecat/{name}" not in git("branch", cwd=town / "web" / "refinery" / "rig")
    assert json.loads(cli.ok("bead", "show", bead, "--json"))["status"] == "open"
    assert not any(agent_alive(pid) for pid in agents)
    assert "doctor_fixed" in feed_kinds(cli)
    assert cli("doctor").out == "all clear\n"


def test_doctor_keeps_unmerged_work_and_exits_1(cli: Cli, town: Path) -> None:
    """An orphan worktree with an unmerged commit is kept by --fix, which then exits 1."""
    clone = town / "web" / "refinery" / "rig"
    path = town / "web" / "polecats" / "stray"
    git("worktree", "add", "-q", "-b", "polecat/stray", str(path), "main", cwd=clone)
    (path / "work.txt").write_text("precious\n")
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "precious work", cwd=path)
    result = cli("doctor", "--fix")
    assert result.code == 1
    assert "kept: has 1 unmerged commit" in result.out
    assert (path / "work.txt").read_text() == "precious\n"
    assert "polecat/stray" in git("branch", cwd=clone)


def test_json_shape_and_rig_filter(cli: Cli, town: Path, tmp_path: Path) -> None:
    """``--json`` is a list of {rig, kind, subject, detail, action, fixed}; --rig scopes it."""
    assert json.loads(cli.ok("doctor", "--json")) == []
    (town / "web" / "polecats" / "ghost").mkdir()
    result = cli("doctor", "--json")
    assert result.code == 1
    findings = json.loads(result.out)
    assert findings == [{"rig": "web", "kind": "half_created",
                         "subject": str(town / "web" / "polecats" / "ghost"),
                         "detail": findings[0]["detail"], "action": "remove the folder",
                         "fixed": False}]
    cli.ok("rig", "add", "api", str(make_remote(tmp_path / "api")))
    assert cli("doctor", "--rig", "api").code == 0
    assert cli("doctor", "--rig", "nope").code == 1
    fixed = json.loads(cli("doctor", "--fix", "--json", "--rig", "web").out)
    assert [(f["kind"], f["fixed"]) for f in fixed] == [("half_created", True)]
    assert cli("doctor", "--rig", "-rf").code == 2
