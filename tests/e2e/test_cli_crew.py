"""``gastown crew`` and ``gastown worktree`` as a black box, from inside crew workspaces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Cli, git, make_remote


@pytest.fixture
def rigs(cli: Cli, town: Path, tmp_path: Path) -> Path:
    """Rigs ``web`` (default branch main) and ``api`` (default branch trunk); returns town."""
    cli.ok("rig", "add", "web", str(make_remote(tmp_path / "src-web")))
    cli.ok("rig", "add", "api", str(make_remote(tmp_path / "src-api", branch="trunk",
                                              files={"api.txt": "v1\n"})))
    return town


@pytest.fixture
def alice(cli: Cli, rigs: Path) -> Path:
    """Alice's crew workspace in web, created through the CLI; returns its path."""
    path = Path(cli.ok("crew", "add", "alice", "--rig", "web").strip())
    assert path == rigs / "web" / "crew" / "alice" and path.is_dir()
    return path


def branches(repo: Path) -> list[str]:
    return git("branch", "--format=%(refname:short)", cwd=repo).split()


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_cross_rig_worktree_round_trip(cli: Cli, rigs: Path, alice: Path) -> None:
    """The acceptance path: create, idempotent re-create, list clean/dirty, refuse, force."""
    expected = rigs / "api" / "crew" / "web-alice"
    assert cli.ok("worktree", "api", cwd=alice).strip() == str(expected)
    assert expected.is_dir() and (expected / "api.txt").read_text() == "v1\n"
    assert cli.ok("worktree", "api", cwd=alice).strip() == str(expected)

    listing = cli.ok("worktree", "list", cwd=alice)
    assert [line.split() for line in listing.splitlines()[1:]] == \
        [["api", "clean", str(expected)]]

    (expected / "api.txt").write_text("v2\n")
    assert "1 uncommitted" in cli.ok("worktree", "list", cwd=alice)

    refused = cli("worktree", "remove", "api", cwd=alice)
    assert refused.code == 1
    assert "1 uncommitted file" in one_line(refused.err)
    assert (expected / "api.txt").read_text() == "v2\n"

    cli.ok("worktree", "remove", "api", "--force", cwd=alice)
    assert not expected.exists()
    assert "crew/web-alice" not in branches(rigs / "api" / "refinery" / "rig")
    assert "missing" in cli.ok("worktree", "list", cwd=alice)


def test_worktree_path_is_capturable_from_a_subfolder(cli: Cli, rigs: Path,
                                                      alice: Path) -> None:
    """stdout is exactly the path, so cd "$(gastown worktree api)" works from deep inside."""
    deep = alice / "src" / "pkg"
    deep.mkdir(parents=True)
    out = cli.ok("worktree", "api", cwd=deep)
    assert out == f"{rigs / 'api' / 'crew' / 'web-alice'}\n"


def test_target_default_branch_is_not_main(cli: Cli, rigs: Path, alice: Path) -> None:
    """A target whose default branch is trunk gets a worktree from trunk, not main."""
    path = Path(cli.ok("worktree", "api", cwd=alice).strip())
    clone = rigs / "api" / "refinery" / "rig"
    assert "main" not in branches(clone)
    assert git("rev-parse", "HEAD", cwd=path) == git("rev-parse", "trunk", cwd=clone)
    assert git("symbolic-ref", "--short", "HEAD", cwd=path).strip() == "crew/web-alice"
    assert git("config", "user.name", cwd=path).strip() == "web/crew/alice"


def test_worktree_outside_a_crew_workspace_is_one_line(cli: Cli, rigs: Path,
                                                       tmp_path: Path) -> None:
    """Outside <rig>/crew/<name> every worktree command fails with one line, nothing made."""
    for cwd in (tmp_path, rigs, rigs / "web"):
        for args in (["api"], ["list"], ["remove", "api"]):
            result = cli("worktree", *args, cwd=cwd)
            assert result.code != 0
            assert "run this inside a crew workspace" in one_line(result.err)
    assert list((rigs / "api" / "crew").iterdir()) == []


def test_worktree_refuses_the_home_rig_and_bad_words(cli: Cli, rigs: Path,
                                                     alice: Path) -> None:
    """The home rig, unknown rigs, bad names and malformed words get one line each."""
    cases = [(["web"], 1, "your home rig"), (["nope"], 1, "no rig named 'nope'"),
             (["../x"], 2, "invalid rig name"), (["remove"], 2, "usage"),
             (["list", "api"], 2, "usage"), (["remove", "a", "b"], 2, "usage"),
             (["list", "--force"], 2, "--force"), (["api", "--force"], 2, "--force")]
    for words, code, message in cases:
        result = cli("worktree", *words, cwd=alice)
        assert (result.code, message in one_line(result.err)) == (code, True), words


def test_kill_after_worktree_add_is_completed_on_retry(cli: Cli, rigs: Path,
                                                       alice: Path) -> None:
    """A CLI killed between 'worktree add' and the identity write is finished by a re-run."""
    cli.env["GASTOWN_FAULTS"] = "cli@crew.after_worktree=exit:9"
    assert cli("worktree", "api", cwd=alice).code == 9
    del cli.env["GASTOWN_FAULTS"]
    path = Path(cli.ok("worktree", "api", cwd=alice).strip())
    assert git("config", "user.name", cwd=path).strip() == "web/crew/alice"
    assert "clean" in cli.ok("worktree", "list", cwd=alice)


def test_crew_add_list_remove(cli: Cli, rigs: Path, alice: Path) -> None:
    """crew list --json shows the workspace; remove refuses unmerged work until --force."""
    cli.ok("worktree", "api", cwd=alice)
    rows = json.loads(cli.ok("crew", "list", "--json"))
    assert [(r["rig"], r["name"], r["branch"], r["state"], r["uncommitted"], r["cross_rig"])
            for r in rows] == [("api", "web-alice", "crew/web-alice", "clean", 0, True),
                               ("web", "alice", "crew/alice", "clean", 0, False)]
    assert {r["path"] for r in rows} == {str(alice), str(rigs / "api/crew/web-alice")}
    assert [r["name"] for r in json.loads(cli.ok("crew", "list", "--rig", "web", "--json"))] \
        == ["alice"]
    assert "alice" in cli.ok("crew", "list")

    (alice / "feature.txt").write_text("f\n")
    git("add", "feature.txt", cwd=alice)
    git("commit", "-q", "-m", "feature", cwd=alice)
    result = cli("crew", "remove", "alice", "--rig", "web")
    assert result.code == 1 and "1 commit not on main" in one_line(result.err)
    assert alice.is_dir()
    cli.ok("crew", "remove", "alice", "--rig", "web", "--force")
    assert not alice.exists()
    assert "crew/alice" not in branches(rigs / "web" / "refinery" / "rig")


def test_crew_errors_are_one_line(cli: Cli, rigs: Path, alice: Path) -> None:
    """A taken name, bad names and unknown rigs fail with one line and the right exit code."""
    cases = [(["crew", "add", "alice", "--rig", "web"], 1, "already exists"),
             (["crew", "add", "../x", "--rig", "web"], 2, "invalid crew name"),
             (["crew", "add", "a b", "--rig", "web"], 2, "invalid crew name"),
             (["crew", "add", "bob", "--rig", "../web"], 2, "invalid rig name"),
             (["crew", "add", "bob", "--rig", "nope"], 1, "no rig named 'nope'"),
             (["crew", "list", "--rig", "nope"], 1, "no rig named 'nope'"),
             (["crew", "remove", "bob", "--rig", "web"], 1, "no crew workspace web/bob")]
    for args, code, message in cases:
        result = cli(*args)
        assert (result.code, message in one_line(result.err)) == (code, True), args
    assert sorted(p.name for p in (rigs / "web" / "crew").iterdir()) == ["alice"]


def test_shell_capture(cli: Cli, rigs: Path, alice: Path) -> None:
    """The documented script idiom works: cd "$(gastown worktree api)" && git status."""
    script = 'cd "$("$PY" -m gastown.supervisor worktree api)" && pwd && git status --short'
    env = {**cli.env, "PY": sys.executable}
    out = subprocess.run(["sh", "-c", script], cwd=alice, env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out == f"{rigs / 'api' / 'crew' / 'web-alice'}\n"
