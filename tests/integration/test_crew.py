"""Crew workspaces and cross-rig worktrees against real repositories: nothing unlanded lost."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gastown.roles.adapters.store import Store, open_store
from gastown.roles.adapters.town import Town, install_town
from gastown.roles.core.errors import GitError, NotFound, Refused, UsageError
from gastown.roles.operations import crew as crew_mod
from gastown.roles.operations.crew import (
    add_crew,
    crew_identity,
    ensure_cross_rig_worktree,
    list_crew,
    list_cross_rig_worktrees,
    remove_crew,
    remove_cross_rig_worktree,
)
from gastown.roles.operations.rigs import add_rig
from tests.conftest import git, make_repo


@pytest.fixture
def town(tmp_path: Path) -> Town:
    """A town with rig ``web`` (default branch ``main``) and ``api`` (``trunk``)."""
    town = install_town(tmp_path / "town")[0]
    with open_store(town.db_path) as store:
        # Working copies the tests commit in: pushes update them (rig add --push-to-checkout).
        add_rig(town, store, "web", str(make_repo(tmp_path / "src-web")), cwd=tmp_path,
                push_to_checkout=True)
        add_rig(town, store, "api", str(make_repo(tmp_path / "src-api", branch="trunk",
                                                  files={"api.txt": "v1\n"})), cwd=tmp_path,
                push_to_checkout=True)
    return town


@pytest.fixture
def store(town: Town) -> Iterator[Store]:
    with open_store(town.db_path) as store:
        yield store


def branches(repo: Path) -> list[str]:
    return git("branch", "--format=%(refname:short)", cwd=repo).split()


def worktree_paths(repo: Path) -> list[Path]:
    out = git("worktree", "list", "--porcelain", cwd=repo)
    return [Path(line.split(" ", 1)[1]) for line in out.splitlines()
            if line.startswith("worktree ")]


def is_ancestor(repo: Path, commit: str, ref: str) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", commit, ref], cwd=repo,
                          check=False).returncode == 0


def commit(worktree: Path, name: str, text: str = "x\n") -> str:
    (worktree / name).write_text(text)
    git("add", name, cwd=worktree)
    git("commit", "-q", "-m", f"add {name}", cwd=worktree)
    return git("rev-parse", "HEAD", cwd=worktree).strip()


def assert_gone(town: Town, rig: str, name: str) -> None:
    clone = town.refinery_clone(rig)
    assert not (town.crew_dir(rig) / name).exists()
    assert f"crew/{name}" not in branches(clone)
    assert worktree_paths(clone) == [clone]


class TestCrewWorkspaces:
    def test_add_list_remove_round_trip(self, town: Town, store: Store) -> None:
        """A crew workspace is a worktree on crew/NAME from the default branch, listed, removed."""
        ws = add_crew(town, store, "web", "alice")
        clone = town.refinery_clone("web")
        assert ws.path == town.crew_dir("web") / "alice" and ws.path.is_dir()
        assert (ws.branch, ws.state, ws.uncommitted) == ("crew/alice", "clean", 0)
        assert git("rev-parse", "HEAD", cwd=ws.path) == git("rev-parse", "main", cwd=clone)
        assert git("symbolic-ref", "--short", "HEAD", cwd=clone).strip() == "main"
        assert list_crew(town, store) == [ws]
        assert list_crew(town, store, "api") == []
        remove_crew(town, store, "web", "alice")
        assert_gone(town, "web", "alice")
        assert list_crew(town, store) == []

    def test_starts_from_a_non_main_default_branch(self, town: Town, store: Store) -> None:
        """In a rig whose default branch is trunk, crew branch from trunk."""
        ws = add_crew(town, store, "api", "bob")
        assert (ws.path / "api.txt").read_text() == "v1\n"
        assert git("rev-parse", "HEAD", cwd=ws.path) == \
            git("rev-parse", "trunk", cwd=town.refinery_clone("api"))

    def test_list_counts_uncommitted_files(self, town: Town, store: Store) -> None:
        """An edited tracked file and an untracked file make '2 uncommitted'."""
        ws = add_crew(town, store, "web", "alice")
        (ws.path / "README.md").write_text("changed\n")
        (ws.path / "new.txt").write_text("new\n")
        [listed] = list_crew(town, store, "web")
        assert (listed.state, listed.uncommitted, listed.cross_rig) == ("2 uncommitted", 2,
                                                                       False)

    def test_add_refuses_an_existing_folder_or_branch(self, town: Town, store: Store) -> None:
        """A taken folder or a taken branch is refused, and neither is touched."""
        add_crew(town, store, "web", "alice")
        with pytest.raises(Refused, match="already exists"):
            add_crew(town, store, "web", "alice")
        clone = town.refinery_clone("web")
        git("branch", "crew/bob", cwd=clone)
        with pytest.raises(Refused, match="branch crew/bob already exists"):
            add_crew(town, store, "web", "bob")
        assert not (town.crew_dir("web") / "bob").exists()
        assert "crew/bob" in branches(clone)
        (town.crew_dir("web") / "carol").mkdir()
        with pytest.raises(Refused, match="already exists"):
            add_crew(town, store, "web", "carol")
        assert "crew/carol" not in branches(clone)

    def test_remove_refuses_uncommitted_files(self, town: Town, store: Store) -> None:
        """A dirty workspace is kept, and the refusal names the count."""
        ws = add_crew(town, store, "web", "alice")
        (ws.path / "README.md").write_text("changed\n")
        with pytest.raises(Refused, match="1 uncommitted file;"):
            remove_crew(town, store, "web", "alice")
        assert (ws.path / "README.md").read_text() == "changed\n"
        assert "crew/alice" in branches(town.refinery_clone("web"))

    def test_remove_refuses_unmerged_commits(self, town: Town, store: Store) -> None:
        """Commits not on the default branch keep the workspace, whatever its tree."""
        ws = add_crew(town, store, "web", "alice")
        commit(ws.path, "a.txt")
        commit(ws.path, "b.txt")
        with pytest.raises(Refused, match="2 commits not on main") as info:
            remove_crew(town, store, "web", "alice")
        assert "uncommitted" not in str(info.value) and "\n" not in str(info.value)
        assert ws.path.is_dir()

    def test_remove_names_both_problems(self, town: Town, store: Store) -> None:
        """Dirty and unmerged at once: one line says both."""
        ws = add_crew(town, store, "web", "alice")
        commit(ws.path, "a.txt")
        (ws.path / "b.txt").write_text("b\n")
        with pytest.raises(Refused, match="1 uncommitted file and 1 commit not on main"):
            remove_crew(town, store, "web", "alice")

    def test_remove_refuses_commits_on_a_detached_head(self, town: Town, store: Store) -> None:
        """Commits made on a detached HEAD would vanish with the worktree, so they count."""
        ws = add_crew(town, store, "web", "alice")
        git("switch", "-q", "--detach", cwd=ws.path)
        commit(ws.path, "a.txt")
        with pytest.raises(Refused, match="1 commit not on main"):
            remove_crew(town, store, "web", "alice")

    def test_force_removes_everything(self, town: Town, store: Store) -> None:
        """--force removes a dirty, unmerged workspace: folder, branch and registration."""
        ws = add_crew(town, store, "web", "alice")
        commit(ws.path, "a.txt")
        (ws.path / "untracked.txt").write_text("u\n")
        (ws.path / "build").mkdir()
        (ws.path / "build" / "out.o").write_text("o\n")
        remove_crew(town, store, "web", "alice", force=True)
        assert_gone(town, "web", "alice")

    def test_cherry_picked_work_counts_as_landed(self, town: Town, store: Store) -> None:
        """A crew commit whose patch reached main by cherry-pick (as a rebase does) is landed."""
        ws = add_crew(town, store, "web", "alice")
        clone = town.refinery_clone("web")
        commit(clone, "other.txt")  # main moves on, so the pick gets a new id
        work = commit(ws.path, "feature.txt", "feature\n")
        git("cherry-pick", work, cwd=clone)
        assert not is_ancestor(clone, work, "main")  # landed by patch, not by ancestry
        remove_crew(town, store, "web", "alice")
        assert_gone(town, "web", "alice")

    def test_work_on_the_remote_default_counts_as_landed(self, town: Town, store: Store,
                                                         tmp_path: Path) -> None:
        """Work already on origin's default branch (fetched) counts as landed."""
        ws = add_crew(town, store, "web", "alice")
        work = commit(ws.path, "feature.txt", "feature\n")
        source = tmp_path / "src-web"
        git("fetch", "-q", str(town.refinery_clone("web")), "crew/alice", cwd=source)
        git("cherry-pick", work, cwd=source)
        git("fetch", "-q", "origin", cwd=town.refinery_clone("web"))
        remove_crew(town, store, "web", "alice")
        assert_gone(town, "web", "alice")

    def test_remove_of_a_missing_folder_deletes_the_stale_branch(self, town: Town,
                                                                 store: Store) -> None:
        """A folder deleted by hand leaves a branch and a registration; remove cleans both."""
        ws = add_crew(town, store, "web", "alice")
        git("worktree", "remove", str(ws.path), cwd=town.refinery_clone("web"))
        remove_crew(town, store, "web", "alice")
        assert_gone(town, "web", "alice")
        with pytest.raises(NotFound, match="no crew workspace web/alice"):
            remove_crew(town, store, "web", "alice")

    @pytest.mark.parametrize("name", ["../x", "-rf", "a b", "a/b", "x.lock", ""])
    def test_bad_names_are_rejected(self, town: Town, store: Store, name: str) -> None:
        """Names that would escape the folder or break git are usage errors, nothing made."""
        with pytest.raises(UsageError, match="invalid crew name"):
            add_crew(town, store, "web", name)
        with pytest.raises(UsageError, match="invalid rig name"):
            add_crew(town, store, name, "alice")
        with pytest.raises(UsageError):
            remove_crew(town, store, "web", name)
        assert list(town.crew_dir("web").iterdir()) == []

    def test_unknown_rig_is_not_found(self, town: Town, store: Store) -> None:
        """A rig the town does not have is reported as such."""
        with pytest.raises(NotFound, match="no rig named 'nope'"):
            add_crew(town, store, "nope", "alice")
        with pytest.raises(NotFound):
            list_crew(town, store, "nope")

    def test_missing_clone_is_not_found(self, town: Town, store: Store) -> None:
        """A rig whose canonical clone was deleted by hand gets a clear NotFound."""
        shutil.rmtree(town.refinery_clone("web"))
        with pytest.raises(NotFound, match="has no canonical clone"):
            add_crew(town, store, "web", "alice")
        assert not (town.crew_dir("web") / "alice").exists()

    def test_stray_folder_is_listed_and_kept(self, town: Town, store: Store) -> None:
        """A plain folder under crew/ shows as 'not a worktree' and needs --force to go."""
        stray = town.crew_dir("web") / "notes"
        stray.mkdir()
        (stray / "todo.txt").write_text("t\n")
        [listed] = list_crew(town, store)
        assert (listed.name, listed.state, listed.uncommitted) == ("notes", "not a worktree",
                                                                   None)
        with pytest.raises(Refused, match="stray files"):
            remove_crew(town, store, "web", "notes")
        assert (stray / "todo.txt").is_file()
        remove_crew(town, store, "web", "notes", force=True)
        assert not stray.exists()

    def test_git_failure_leaves_nothing(self, town: Town, store: Store) -> None:
        """When the worktree cannot be made (default branch gone), no folder or branch stays."""
        clone = town.refinery_clone("web")
        git("branch", "-m", "main", "renamed", cwd=clone)
        with pytest.raises(GitError, match="worktree add"):
            add_crew(town, store, "web", "alice")
        assert not (town.crew_dir("web") / "alice").exists()
        assert branches(clone) == ["renamed"] and worktree_paths(clone) == [clone]

    def test_interruption_after_worktree_add_rolls_back(self, town: Town, store: Store,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """An interruption after git made the worktree still removes folder and branch."""
        def interrupted(*_args: object, **_kwargs: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(crew_mod, "_set_worktree_config", interrupted)
        with pytest.raises(KeyboardInterrupt):
            add_crew(town, store, "web", "alice")
        assert_gone(town, "web", "alice")


class TestCrossRigWorktrees:
    @pytest.fixture
    def home(self, town: Town, store: Store) -> Path:
        """Alice's crew workspace in web, and a folder deep inside it."""
        ws = add_crew(town, store, "web", "alice")
        deep = ws.path / "src" / "pkg"
        deep.mkdir(parents=True)
        return deep

    def test_identity_is_found_walking_up(self, town: Town, store: Store, home: Path) -> None:
        """From any folder inside web/crew/alice, the caller is web/crew/alice."""
        who = crew_identity(town, store, home)
        assert (who.home_rig, who.name, str(who)) == ("web", "alice", "web/crew/alice")

    @pytest.mark.parametrize("where", [".", "web", "web/crew", "web/polecats", "../outside"])
    def test_outside_a_crew_workspace_is_refused(self, town: Town, store: Store,
                                                 where: str) -> None:
        """Anywhere but inside <rig>/crew/<name> gets one line saying where to run it."""
        cwd = town.root / where
        cwd.mkdir(parents=True, exist_ok=True)
        with pytest.raises(Refused, match=r"run this inside a crew workspace") as info:
            ensure_cross_rig_worktree(town, store, cwd, "api")
        assert "\n" not in str(info.value)

    def test_create_on_the_target_default_branch(self, town: Town, store: Store,
                                                 home: Path) -> None:
        """The worktree is in api/crew/web-alice on crew/web-alice from api's trunk."""
        path = ensure_cross_rig_worktree(town, store, home, "api")
        clone = town.refinery_clone("api")
        assert path == town.crew_dir("api") / "web-alice"
        assert git("symbolic-ref", "--short", "HEAD", cwd=path).strip() == "crew/web-alice"
        assert git("rev-parse", "HEAD", cwd=path) == git("rev-parse", "trunk", cwd=clone)
        assert git("config", "user.name", cwd=path).strip() == "web/crew/alice"
        assert subprocess.run(["git", "config", "--get", "user.name"], cwd=clone,
                              capture_output=True, text=True,
                              check=False).stdout.strip() != "web/crew/alice"
        assert ensure_cross_rig_worktree(town, store, home, "api") == path

    def test_commits_carry_the_home_identity(self, town: Town, store: Store, home: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
        """Without an author in the environment, commits in it are by web/crew/alice."""
        path = ensure_cross_rig_worktree(town, store, home, "api")
        monkeypatch.delenv("GIT_AUTHOR_NAME")
        commit(path, "x.txt")
        assert git("log", "-1", "--format=%an", cwd=path).strip() == "web/crew/alice"

    def test_identity_inside_the_cross_rig_worktree_is_the_home(self, town: Town,
                                                                store: Store,
                                                                home: Path) -> None:
        """Run from inside api/crew/web-alice, commands still act for web/crew/alice."""
        path = ensure_cross_rig_worktree(town, store, home, "api")
        who = crew_identity(town, store, path)
        assert (who.home_rig, who.name) == ("web", "alice")
        assert [w.rig for w in list_cross_rig_worktrees(town, store, path)] == ["api"]

    def test_home_rig_and_unknown_rig_are_refused(self, town: Town, store: Store,
                                                  home: Path) -> None:
        """The home rig is not a target; an unknown rig is not found; a bad name is usage."""
        with pytest.raises(Refused, match="your home rig"):
            ensure_cross_rig_worktree(town, store, home, "web")
        with pytest.raises(NotFound):
            ensure_cross_rig_worktree(town, store, home, "nope")
        with pytest.raises(UsageError):
            ensure_cross_rig_worktree(town, store, home, "../api")

    def test_someone_elses_folder_is_refused(self, town: Town, store: Store,
                                             home: Path) -> None:
        """A home crew workspace that happens to be called web-alice is not adopted."""
        add_crew(town, store, "api", "web-alice")
        with pytest.raises(Refused, match="belongs to api/crew/web-alice"):
            ensure_cross_rig_worktree(town, store, home, "api")
        with pytest.raises(Refused, match="belongs to api/crew/web-alice"):
            remove_cross_rig_worktree(town, store, home, "api", force=True)
        assert (town.crew_dir("api") / "web-alice").is_dir()

    def test_half_made_worktree_is_completed(self, town: Town, store: Store,
                                             home: Path) -> None:
        """A worktree left without its identity (killed mid-way) is finished, not refused."""
        clone = town.refinery_clone("api")
        path = town.crew_dir("api") / "web-alice"
        git("worktree", "add", "-q", "-b", "crew/web-alice", str(path), "trunk", cwd=clone)
        assert ensure_cross_rig_worktree(town, store, home, "api") == path
        assert git("config", "user.name", cwd=path).strip() == "web/crew/alice"

    def test_list_remove_round_trip(self, town: Town, store: Store, home: Path) -> None:
        """List shows missing, clean, then N uncommitted; remove refuses dirt until forced."""
        [before] = list_cross_rig_worktrees(town, store, home)
        assert (before.rig, before.state) == ("api", "missing")
        path = ensure_cross_rig_worktree(town, store, home, "api")
        [clean] = list_cross_rig_worktrees(town, store, home)
        assert (clean.state, clean.path, clean.cross_rig) == ("clean", path, True)
        (path / "api.txt").write_text("v2\n")
        [dirty] = list_cross_rig_worktrees(town, store, home)
        assert (dirty.state, dirty.uncommitted) == ("1 uncommitted", 1)
        with pytest.raises(Refused, match="1 uncommitted file"):
            remove_cross_rig_worktree(town, store, home, "api")
        assert path.is_dir()
        assert remove_cross_rig_worktree(town, store, home, "api", force=True) == path
        assert_gone(town, "api", "web-alice")
        with pytest.raises(NotFound):
            remove_cross_rig_worktree(town, store, home, "api")

    def test_remove_refuses_unlanded_commits(self, town: Town, store: Store,
                                             home: Path) -> None:
        """A clean cross-rig worktree with commits not on trunk is kept."""
        path = ensure_cross_rig_worktree(town, store, home, "api")
        commit(path, "x.txt")
        with pytest.raises(Refused, match="1 commit not on trunk"):
            remove_cross_rig_worktree(town, store, home, "api")
        assert path.is_dir()

    def test_crew_list_marks_cross_rig_worktrees(self, town: Town, store: Store,
                                                 home: Path) -> None:
        """crew list shows the cross-rig worktree under its target rig with its home."""
        ensure_cross_rig_worktree(town, store, home, "api")
        rows = [(w.rig, w.name, w.home, w.cross_rig) for w in list_crew(town, store)]
        assert rows == [("api", "web-alice", "web/crew/alice", True),
                        ("web", "alice", "web/crew/alice", False)]
