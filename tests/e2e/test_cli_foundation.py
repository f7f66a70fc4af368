"""The ``gastown`` command as a black box: install, rigs, beads, config, errors."""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path

import pytest

from tests.conftest import Cli, git, make_remote
from tests.unit.test_names import BAD_NAMES


def test_version_and_help(cli: Cli) -> None:
    """--version prints the version; --help lists the commands; both exit 0 outside a town."""
    assert cli.ok("--version").startswith("gastown ")
    out = cli.ok("--help")
    for command in ("install", "rig", "bead"):
        assert command in out


def test_install_is_idempotent_and_lays_out_the_town(cli: Cli, tmp_path: Path) -> None:
    """install creates town.toml, a 0700 .runtime, logs/ and the store; twice is fine."""
    root = tmp_path / "T"
    assert "created town" in cli.ok("install", str(root))
    assert "already exists" in cli.ok("install", str(root))
    assert (root / "town.toml").is_file() and (root / "logs").is_dir()
    assert (root / "state.db").is_file()
    assert (root / ".runtime").stat().st_mode & 0o777 == 0o700


def test_install_defaults_to_gastown_town_then_home(cli: Cli, tmp_path: Path) -> None:
    """Without PATH, install uses $GASTOWN_TOWN, else ~/gt."""
    cli.env["GASTOWN_TOWN"] = str(tmp_path / "from-env")
    cli.ok("install")
    assert (tmp_path / "from-env" / "town.toml").is_file()
    del cli.env["GASTOWN_TOWN"]
    cli.ok("install")
    assert (Path(cli.env["HOME"]) / "gt" / "town.toml").is_file()


def test_install_refuses_a_non_empty_non_town(cli: Cli, tmp_path: Path) -> None:
    """A directory with someone's files in it is not turned into a town."""
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    result = cli("install", str(tmp_path / "stuff"))
    assert result.code == 1 and "not empty and is not a town" in result.err
    assert sorted(p.name for p in (tmp_path / "stuff").iterdir()) == ["notes.txt"]


def test_town_discovery(cli: Cli, town: Path, tmp_path: Path) -> None:
    """--town, then $GASTOWN_TOWN, then walking up from the cwd find the town."""
    deep = town / "a" / "b"
    deep.mkdir(parents=True)
    env_less = Cli(cwd=deep, env={k: v for k, v in cli.env.items() if k != "GASTOWN_TOWN"})
    assert env_less.ok("rig", "list").startswith("no rigs")
    outside = Cli(cwd=tmp_path, env=env_less.env)
    result = outside("rig", "list")
    assert result.code == 1
    assert result.err.strip().count("\n") == 0 and "not inside a town" in result.err
    assert outside.ok("--town", str(town), "rig", "list").startswith("no rigs")
    result = outside("--town", str(tmp_path), "rig", "list")
    assert result.code == 1 and "is not a town" in result.err


def test_rig_add_and_list_json(cli: Cli, town: Path, tmp_path: Path) -> None:
    """The acceptance path: rig add of a local repository, then rig list --json."""
    repo = make_remote(tmp_path / "src", branch="trunk")
    cli.ok("rig", "add", "web", str(repo))
    clone = town / "web" / "refinery" / "rig"
    assert git("symbolic-ref", "--short", "HEAD", cwd=clone).strip() == "trunk"
    rigs = json.loads(cli.ok("rig", "list", "--json"))
    assert [(r["name"], r["default_branch"], r["prefix"], r["path"]) for r in rigs] == [
        ("web", "trunk", "web", str(town / "web"))]
    assert "web" in cli.ok("rig", "list")


@pytest.mark.parametrize("repo", ["https://nonexistent.invalid/x.git", "NOT-A-REPO"])
def test_rig_add_failure_is_one_line_and_leaves_nothing(cli: Cli, town: Path, tmp_path: Path,
                                                        repo: str) -> None:
    """An unreachable URL or a non-repository path: exit 1, one line, nothing on disk."""
    (tmp_path / "NOT-A-REPO").mkdir()
    result = cli("rig", "add", "web", repo)
    assert result.code == 1
    assert result.err.startswith("gastown: ") and result.err.count("\n") == 1
    assert not (town / "web").exists()
    assert json.loads(cli.ok("rig", "list", "--json")) == []
    staging = town / ".runtime" / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_rig_add_rejects_bad_names(cli: Cli, town: Path, git_repo: Path, name: str) -> None:
    """Every class of bad name gets one line and exit 2, and no clone happens."""
    result = cli("rig", "add", "--", name, str(git_repo))
    assert result.code == 2, result
    assert result.err.count("\n") == 1 and "invalid rig name" in result.err
    assert json.loads(cli.ok("rig", "list", "--json")) == []


def test_rig_add_rejects_bad_branch(cli: Cli, town: Path, git_repo: Path) -> None:
    """--branch is validated like every other name."""
    result = cli("rig", "add", "web", str(git_repo), "--branch", "polecat/..")
    assert result.code == 2 and "invalid branch name" in result.err


def test_rig_toml_typo_names_file_and_key(cli: Cli, town: Path, git_repo: Path) -> None:
    """A typo'd key in rig.toml is reported with the file, line and key."""
    cli.ok("rig", "add", "web", str(git_repo))
    rig_toml = town / "web" / "rig.toml"
    rig_toml.write_text(rig_toml.read_text() + "[polecats]\nmax_polecat = 3\n")
    result = cli("config", "show", "--rig", "web")
    assert result.code == 1
    assert result.err.strip() == (f"gastown: {rig_toml}:6: unknown key 'polecats.max_polecat' "
                                  "(known: branch_template, max, max_respawns, names, pool_size, "
                                  "ports, setup, stall_timeout, teardown)")


def test_malformed_town_toml(cli: Cli, town: Path) -> None:
    """A broken town.toml stops every command with one line naming the file and line,
    except status, down, logs, feed and doctor, which print one warning line and work
    (doctor also reports it and exits 1), so that the town can be looked at and stopped."""
    (town / "town.toml").write_text("prefix = \n")
    where = f"{town / 'town.toml'}:1: malformed TOML: Invalid value"
    for args in (["bead", "create", "x"], ["bead", "list"], ["rig", "list"],
                 ["config", "show"], ["up"], ["polecat", "list"], ["mq", "list"],
                 ["install", str(town)]):
        result = cli(*args)
        assert (result.code, result.err) == (1, f"gastown: {where}\n"), (args, result)
    for args in (["status"], ["down"], ["logs"], ["feed"]):
        result = cli(*args)
        assert (result.code, result.err) == (0, f"gastown: warning: {where}\n"), (args, result)
    assert "supervisor: down" in cli.ok("status")
    result = cli("doctor")
    assert (result.code, result.err) == (1, f"gastown: warning: {where}\n")
    assert result.out.startswith(f"-  config_error  {town / 'town.toml'}: {where}")


@pytest.mark.parametrize("where", ["/proc/x", "/proc/x/town", "file/town", "/dev/null/town",
                                   "read-only/town"])
def test_install_where_it_cannot_create_is_one_line(cli: Cli, tmp_path: Path,
                                                    where: str) -> None:
    """A path install cannot create (procfs, a file in the way, a read-only directory):
    one line naming it, exit 1, no traceback."""
    (tmp_path / "file").write_text("in the way")
    (tmp_path / "read-only").mkdir(mode=0o555)
    if where.startswith("read-only") and os.geteuid() == 0:
        pytest.skip("root writes into a mode 0555 directory")
    path = where if where.startswith("/") else str(tmp_path / where)
    result = cli("install", path)
    assert result.code == 1 and result.err.count("\n") == 1, result
    assert result.err.startswith(f"gastown: cannot create a town at {path}: "), result.err


def test_bead_create_list_show(cli: Cli, town: Path, git_repo: Path) -> None:
    """bead create prints only the id; list and show agree, with the JSON shape scripts use."""
    cli.ok("rig", "add", "web", str(git_repo))
    bead = cli.ok("bead", "create", "Fix login", "--rig", "web", "-d", "echo hi", "-p", "1")
    bead = bead.strip()
    assert bead.startswith("web-") and len(bead) == 9
    town_bead = cli.ok("bead", "create", "Town chore").strip()
    assert town_bead.startswith("gt-")
    listed = json.loads(cli.ok("bead", "list", "--json"))
    assert [(b["id"], b["title"], b["status"], b["rig"], b["priority"]) for b in listed] == [
        (bead, "Fix login", "open", "web", 1), (town_bead, "Town chore", "open", None, 2)]
    assert [b["id"] for b in json.loads(cli.ok("bead", "list", "--rig", "web", "--json"))] \
        == [bead]
    assert json.loads(cli.ok("bead", "list", "--status", "closed", "--json")) == []
    shown = json.loads(cli.ok("bead", "show", bead, "--json"))
    assert shown["description"] == "echo hi"
    assert "Fix login" in cli.ok("bead", "show", bead)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["bead", "show", "gt-zzzzz"], 1, "no bead 'gt-zzzzz'"),
    (["bead", "create", "x", "--rig", "nope"], 1, "no rig named 'nope'"),
    (["bead", "create", "x", "-p", "5"], 2, "priority must be 0-4"),
    (["bead", "create", "  "], 2, "non-empty title"),
    (["bead", "list", "--status", "done"], 2, "unknown bead status 'done'"),
    (["rig", "remove", "nope"], 1, "no rig named 'nope'"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_user_errors_are_one_line(cli: Cli, town: Path, args: list[str], code: int,
                                  message: str) -> None:
    """Mistakes get one line on stderr and the documented exit code, never a traceback."""
    result = cli(*args)
    assert result.code == code
    assert result.err.count("\n") == 1 and message in result.err


def test_200_beads_from_8_concurrent_processes(cli: Cli, town: Path) -> None:
    """The acceptance figure: 200 beads from 8 concurrent CLIs are 200 distinct listed ids.

    Eight threads here each run 25 ``bead create`` one after the other, every one its own
    process (forked, see tests/cli_template.py): eight CLI processes write at once."""

    def create(count: int) -> list[str]:
        return [cli.ok("bead", "create", f"bead {i}").strip() for i in range(count)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(create, [25] * 8))
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == 200
    listed = {b["id"] for b in json.loads(cli.ok("bead", "list", "--json"))}
    assert listed == set(ids)


def test_rig_remove(cli: Cli, town: Path, git_repo: Path) -> None:
    """rig remove deletes the folder and the row."""
    cli.ok("rig", "add", "web", str(git_repo))
    cli.ok("rig", "remove", "web")
    assert not (town / "web").exists()
    assert json.loads(cli.ok("rig", "list", "--json")) == []


def test_cli_logs_are_json_lines_with_context(cli: Cli, town: Path, git_repo: Path) -> None:
    """Commands log structlog JSON lines carrying role, rig and bead."""
    cli.ok("rig", "add", "web", str(git_repo))
    bead = cli.ok("bead", "create", "x", "--rig", "web").strip()
    lines = [json.loads(line) for line in (town / "logs" / "cli.log").read_text().splitlines()]
    created = [line for line in lines if line["event"] == "bead_created"]
    assert created and created[-1]["bead"] == bead and created[-1]["rig"] == "web"
    assert created[-1]["role"] == "cli" and "timestamp" in created[-1]
    assert os.access(town / "logs" / "cli.log", os.R_OK)
