"""Adding and removing rigs against real repositories: all or nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gastown.roles.adapters.store import open_store
from gastown.roles.adapters.town import Town, install_town
from gastown.roles.core.errors import GitError, NotFound, Refused, UsageError
from gastown.roles.operations.rigs import add_rig, remove_rig
from tests.conftest import git, make_remote, make_repo


@pytest.fixture
def town(tmp_path: Path) -> Town:
    return install_town(tmp_path / "town")[0]


def leftovers(town: Town) -> list[str]:
    """Everything in the town besides what ``install`` made."""
    staging = town.runtime_dir / "staging"
    extra = [p.name for p in town.root.iterdir()
             if p.name not in {"town.toml", ".runtime", "logs", "state.db", "state.db-wal",
                               "state.db-shm"}]
    if staging.is_dir():
        extra += [f"staging/{p.name}" for p in staging.iterdir()]
    return extra


def test_add_clones_on_the_remote_default_branch(town: Town, tmp_path: Path) -> None:
    """The clone sits at <rig>/refinery/rig on the repository's HEAD branch."""
    repo = make_remote(tmp_path / "src", branch="trunk")
    with open_store(town.db_path) as store:
        rig = add_rig(town, store, "web", str(repo), cwd=tmp_path)
        assert store.rigs() == [rig]
    clone = town.refinery_clone("web")
    assert rig.default_branch == "trunk" and rig.prefix == "web"
    assert git("symbolic-ref", "--short", "HEAD", cwd=clone).strip() == "trunk"
    assert (town.rig_dir("web") / "polecats").is_dir() and (town.rig_dir("web") / "crew").is_dir()
    config = town.rig_config("web")
    assert (config.repo, config.default_branch, config.prefix) == (str(repo), "trunk", "web")


def test_add_with_branch_checks_it_out(town: Town, tmp_path: Path) -> None:
    """--branch picks another existing branch as the rig's default."""
    repo = make_repo(tmp_path / "src")
    git("branch", "develop", cwd=repo)
    with open_store(town.db_path) as store:
        rig = add_rig(town, store, "web", str(repo), cwd=tmp_path, branch="develop")
    assert rig.default_branch == "develop"
    assert git("symbolic-ref", "--short", "HEAD", cwd=town.refinery_clone("web")).strip() \
        == "develop"


def test_relative_repo_path_is_recorded_absolute(town: Town, tmp_path: Path) -> None:
    """A relative local path is stored absolute, so the rig works from any cwd."""
    make_remote(tmp_path / "src")
    with open_store(town.db_path) as store:
        rig = add_rig(town, store, "web", "src", cwd=tmp_path)
    assert rig.repo == str((tmp_path / "src").resolve())


@pytest.mark.parametrize("repo", ["https://nonexistent.invalid/x.git", "file:///nonexistent/x"])
def test_unreachable_url_leaves_nothing(town: Town, tmp_path: Path, repo: str) -> None:
    """A clone that fails leaves no folder and no row."""
    with open_store(town.db_path) as store, pytest.raises(GitError, match="clone"):
        add_rig(town, store, "web", repo, cwd=tmp_path)
    with open_store(town.db_path) as store:
        assert store.rigs() == [] and store.events_after(0) == []
    assert leftovers(town) == []


def test_non_repository_path_leaves_nothing(town: Town, tmp_path: Path) -> None:
    """A directory that is not a git repository is refused cleanly."""
    (tmp_path / "plain").mkdir()
    with open_store(town.db_path) as store, pytest.raises(GitError):
        add_rig(town, store, "web", str(tmp_path / "plain"), cwd=tmp_path)
    with pytest.raises(NotFound), open_store(town.db_path) as store:
        add_rig(town, store, "web", str(tmp_path / "missing"), cwd=tmp_path)
    assert leftovers(town) == []


def test_missing_branch_and_empty_repo_leave_nothing(town: Town, tmp_path: Path) -> None:
    """A --branch the repository lacks, or a repository without commits, is refused cleanly."""
    repo = make_repo(tmp_path / "src")
    empty = tmp_path / "empty"
    empty.mkdir()
    git("init", "-q", cwd=empty)
    with open_store(town.db_path) as store:
        with pytest.raises(GitError):
            add_rig(town, store, "web", str(repo), cwd=tmp_path, branch="nope")
        with pytest.raises(Refused, match="no commits"):
            add_rig(town, store, "web", str(empty), cwd=tmp_path)
        assert store.rigs() == []
    assert leftovers(town) == []


def test_names_prefixes_and_collisions(town: Town, tmp_path: Path) -> None:
    """Bad names are usage errors; taken names and prefixes are refused; prefixes stay unique."""
    repo = make_remote(tmp_path / "src")
    with open_store(town.db_path) as store:
        with pytest.raises(UsageError):
            add_rig(town, store, "../x", str(repo), cwd=tmp_path)
        with pytest.raises(UsageError, match="prefix"):
            add_rig(town, store, "web", str(repo), cwd=tmp_path, prefix="W3")
        add_rig(town, store, "web", str(repo), cwd=tmp_path)
        with pytest.raises(Refused, match="already exists"):
            add_rig(town, store, "web", str(repo), cwd=tmp_path)
        with pytest.raises(Refused, match="prefix 'web'"):
            add_rig(town, store, "api", str(repo), cwd=tmp_path, prefix="web")
        second = add_rig(town, store, "webapp", str(repo), cwd=tmp_path)
        town_level = add_rig(town, store, "gt", str(repo), cwd=tmp_path)
    assert second.prefix == "we"
    assert town_level.prefix != "gt"  # the town's own bead prefix is taken too
    assert sorted(leftovers(town)) == ["gt", "web", "webapp"]


def test_remove_refuses_live_polecats_unless_forced(town: Town, tmp_path: Path) -> None:
    """A rig with a live polecat is kept unless --force; then folder and row are gone."""
    repo = make_remote(tmp_path / "src")
    with open_store(town.db_path) as store:
        add_rig(town, store, "web", str(repo), cwd=tmp_path)
        with store.transaction() as conn:
            conn.execute("INSERT INTO polecats (rig, name, branch, worktree, state, created_at,"
                         " updated_at) VALUES ('web', 'toast', 'polecat/toast', 'x', 'working',"
                         " ?, ?)", (time.time(), time.time()))
        with pytest.raises(Refused, match="1 live polecat"):
            remove_rig(town, store, "web")
        assert town.rig_dir("web").is_dir()
        remove_rig(town, store, "web", force=True)
        assert store.rigs() == [] and store.live_polecats("web") == []
    assert leftovers(town) == []


def test_remove_refuses_crew_workspaces(town: Town, tmp_path: Path) -> None:
    """Crew workspaces hold a human's work: removing their rig needs --force."""
    repo = make_remote(tmp_path / "src")
    with open_store(town.db_path) as store:
        add_rig(town, store, "web", str(repo), cwd=tmp_path)
        (town.crew_dir("web") / "alice").mkdir()
        with pytest.raises(Refused, match="crew"):
            remove_rig(town, store, "web")
        remove_rig(town, store, "web", force=True)
        with pytest.raises(NotFound):
            remove_rig(town, store, "web")
