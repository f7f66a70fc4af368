"""The doctor's checks against a real town, real git, real processes: found, fixed, and
unlanded work kept in every case."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gastown.roles.adapters.git import repo_lock
from gastown.roles.adapters.processes import is_same_process, process_start_time
from gastown.roles.adapters.store import Polecat, Store, open_store
from gastown.roles.adapters.town import Town, install_town
from gastown.roles.core.lifecycle import Done, SessionStarted
from gastown.roles.operations.reconcile import Finding, reconcile
from gastown.roles.operations.rigs import add_rig
from tests.conftest import git, make_remote, make_repo


@pytest.fixture
def town(tmp_path: Path) -> Iterator[Town]:
    """A town with rig ``web`` (branch ``main``) in a short /tmp path."""
    root = Path(tempfile.mkdtemp(prefix="gtr", dir="/tmp")) / "t"
    town = install_town(root)[0]
    with open_store(town.db_path) as store:
        add_rig(town, store, "web", str(make_remote(tmp_path / "src-web",
                                                  files={"app.py": "x = 1\n"})), cwd=tmp_path)
    yield town
    from gastown.roles.adapters.sessions import tmux_socket_name

    if shutil.which("tmux"):
        subprocess.run(["tmux", "-L", tmux_socket_name(root), "kill-server"],
                       capture_output=True, check=False)
    shutil.rmtree(root.parent, ignore_errors=True)


@pytest.fixture
def store(town: Town) -> Iterator[Store]:
    with open_store(town.db_path) as store:
        yield store


def clone(town: Town) -> Path:
    return town.refinery_clone("web")


def add_worktree(town: Town, name: str) -> Path:
    """``git worktree add <rig>/polecats/<name> -b polecat/<name> main``, under the lock."""
    path = town.polecats_dir("web") / name
    with repo_lock(clone(town)):
        git("worktree", "add", "-q", "-b", f"polecat/{name}", str(path), "main",
            cwd=clone(town))
    return path


def commit(worktree: Path, name: str, text: str = "new\n") -> str:
    (worktree / name).write_text(text)
    git("add", "-A", cwd=worktree)
    git("commit", "-q", "-m", f"add {name}", cwd=worktree)
    return git("rev-parse", "HEAD", cwd=worktree).strip()


def land_by_cherry_pick(town: Town, commit_id: str) -> None:
    """Put ``commit_id``'s change on main as a new commit (what the refinery's rebase does)."""
    git("cherry-pick", commit_id, cwd=clone(town))


def polecat_row(town: Town, store: Store, name: str, *, working: bool = True) -> Polecat:
    """A real polecat row through the store API: bead, sling, reservation (name ``name``)."""
    bead = store.create_bead(prefix="web", rig="web", title=f"work for {name}")
    sling = store.queue_sling(bead.id, "web", agent="script", force=False)
    polecat = store.reserve_polecat(sling.id, pool=[name], branch_template="polecat/{name}",
                                    polecats_dir=str(town.polecats_dir("web")),
                                    agent="script", rig_cap=10, town_cap=10)
    assert polecat is not None and polecat.name == name
    if working:
        store.apply_polecat_event("web", name, SessionStarted())
    return store.polecat("web", name)


def branches(town: Town) -> list[str]:
    return git("branch", "--format=%(refname:short)", cwd=clone(town)).split()


def kinds(findings: list[Finding]) -> list[tuple[str, str]]:
    return sorted((f.kind, f.subject) for f in findings)


def commit_exists(town: Town, commit_id: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{commit_id}^{{commit}}"],
                          cwd=clone(town), check=False).returncode == 0


def down(town: Town, store: Store, *, fix: bool = False, rig: str | None = None
         ) -> list[Finding]:
    return reconcile(town, store, rig=rig, fix=fix, town_up=False)


# -- clean ---------------------------------------------------------------------------


def test_clean_town_finds_nothing(town: Town, store: Store) -> None:
    """A rig with a registered polecat whose worktree, branch and row agree is all clear."""
    polecat_row(town, store, "toast")
    add_worktree(town, "toast")
    assert down(town, store) == []
    assert reconcile(town, store) == []  # asks read_supervisor: the town is down


def test_fresh_town_without_rigs_finds_nothing(tmp_path: Path) -> None:
    """An installed town with no rig at all is all clear."""
    town = install_town(tmp_path / "empty")[0]
    with open_store(town.db_path) as store:
        assert down(town, store, fix=True) == []


# -- orphan folders --------------------------------------------------------------------


def test_half_created_folders_are_removed(town: Town, store: Store) -> None:
    """An empty folder and a folder without .git (no row) are found, then removed."""
    empty = town.polecats_dir("web") / "ghost"
    empty.mkdir()
    partial = town.polecats_dir("web") / "husk"
    partial.mkdir()
    (partial / "app.py").write_text("x = 1\n")
    (town.polecats_dir("web") / ".husk.prompt").write_text("ignored dot-file\n")
    found = down(town, store)
    assert kinds(found) == [("half_created", str(empty)), ("half_created", str(partial))]
    assert not any(f.fixed for f in found)
    fixed = down(town, store, fix=True)
    assert all(f.fixed for f in fixed) and len(fixed) == 2
    assert not empty.exists() and not partial.exists()
    assert down(town, store) == []


def test_orphan_worktree_with_nothing_unlanded_is_removed(town: Town, store: Store) -> None:
    """A registered worktree without a row and without new commits loses folder and branch."""
    path = add_worktree(town, "toast")
    found = down(town, store)
    assert kinds(found) == [("orphan_worktree", str(path))]
    fixed = down(town, store, fix=True)
    assert fixed[0].fixed and "removed" in (fixed[0].action or "")
    assert not path.exists()
    assert "polecat/toast" not in branches(town)
    assert str(path) not in git("worktree", "list", cwd=clone(town))
    assert down(town, store) == []


def test_orphan_worktree_whose_work_was_rebased_onto_main_is_removed(town: Town,
                                                                       store: Store) -> None:
    """Patch equivalence: a commit whose change landed as another commit counts as landed."""
    path = add_worktree(town, "toast")
    work = commit(path, "feature.txt")
    land_by_cherry_pick(town, work)
    fixed = down(town, store, fix=True)
    assert [(f.kind, f.fixed) for f in fixed] == [("orphan_worktree", True)]
    assert not path.exists() and "polecat/toast" not in branches(town)


def test_orphan_worktree_with_unmerged_commits_is_kept(town: Town, store: Store) -> None:
    """A worktree without a row whose branch has unlanded commits is reported, never removed."""
    path = add_worktree(town, "toast")
    work = commit(path, "feature.txt")
    for fix in (False, True, True):
        found = down(town, store, fix=fix)
        assert [(f.kind, f.fixed) for f in found] == [("orphan_worktree", False)]
        assert (found[0].action or "").startswith("kept: has 1 unmerged commit")
    assert (path / "feature.txt").is_file()
    assert "polecat/toast" in branches(town)
    assert git("rev-parse", "polecat/toast", cwd=clone(town)).strip() == work


def test_orphan_worktree_with_uncommitted_changes_is_kept(town: Town, store: Store) -> None:
    """A dirty worktree without a row keeps its uncommitted file."""
    path = add_worktree(town, "toast")
    (path / "draft.txt").write_text("not committed yet\n")
    found = down(town, store, fix=True)
    assert [(f.kind, f.fixed) for f in found] == [("orphan_worktree", False)]
    assert "uncommitted" in (found[0].action or "")
    assert (path / "draft.txt").read_text() == "not committed yet\n"


def test_foreign_git_folder_is_kept(town: Town, store: Store, tmp_path: Path) -> None:
    """A folder with its own .git that is not a worktree of the clone is left alone."""
    foreign = make_repo(town.polecats_dir("web") / "stranger")
    found = down(town, store, fix=True)
    assert [(f.kind, f.fixed) for f in found] == [("orphan_worktree", False)]
    assert (foreign / ".git").is_dir()


# -- stale registrations -----------------------------------------------------------------


def test_stale_registration_is_nuked_and_bead_reopened(town: Town, store: Store) -> None:
    """A row whose folder and branch are gone is nuked: name released, bead open again."""
    polecat = polecat_row(town, store, "toast")
    found = down(town, store)
    assert kinds(found) == [("stale_registration", "toast")]
    fixed = down(town, store, fix=True)
    assert fixed[0].fixed
    assert store.live_polecats("web") == []
    assert polecat.bead is not None and store.bead(polecat.bead).status == "open"
    assert down(town, store) == []


def test_stale_registration_with_landed_branch_deletes_branch(town: Town,
                                                              store: Store) -> None:
    """A row whose folder is gone but whose branch landed: branch deleted, row nuked."""
    polecat_row(town, store, "toast")
    path = add_worktree(town, "toast")
    land_by_cherry_pick(town, commit(path, "feature.txt"))
    shutil.rmtree(path)
    fixed = down(town, store, fix=True)
    assert {f.kind for f in fixed} == {"stale_git_worktree", "stale_registration"}
    assert all(f.fixed for f in fixed)
    assert "polecat/toast" not in branches(town)
    assert store.live_polecats("web") == []
    assert down(town, store) == []


def test_stale_registration_with_unlanded_branch_is_kept(town: Town, store: Store) -> None:
    """A row whose folder is gone but whose branch holds unlanded commits keeps row and branch."""
    polecat_row(town, store, "toast")
    path = add_worktree(town, "toast")
    work = commit(path, "feature.txt")
    shutil.rmtree(path)
    fixed = down(town, store, fix=True)
    stale = [f for f in fixed if f.kind == "stale_registration"]
    assert len(stale) == 1 and not stale[0].fixed
    assert (stale[0].action or "").startswith("kept: branch polecat/toast has 1 unmerged")
    assert store.live_polecats("web") == ["toast"]
    assert git("rev-parse", "polecat/toast", cwd=clone(town)).strip() == work
    again = down(town, store, fix=True)
    assert [(f.kind, f.fixed) for f in again] == [("stale_registration", False)]


def test_stale_registration_with_unlanded_merge_request_is_kept(town: Town,
                                                                store: Store) -> None:
    """A row whose branch is gone but whose queued MR's head has not landed is kept."""
    polecat_row(town, store, "toast")
    path = add_worktree(town, "toast")
    head = commit(path, "feature.txt")
    mr = store.record_done("web", "toast", Done("completed"), head=head,
                           base=git("rev-parse", "main", cwd=clone(town)).strip(), with_mr=True)
    assert mr is not None
    with repo_lock(clone(town)):
        git("worktree", "remove", "--force", str(path), cwd=clone(town))
        git("branch", "-D", "polecat/toast", cwd=clone(town))
    fixed = down(town, store, fix=True)
    assert [(f.kind, f.fixed) for f in fixed] == [("stale_registration", False)]
    assert mr.id in (fixed[0].action or "")
    assert store.merge_request(mr.id).state == "queued"
    assert commit_exists(town, head)


def test_spawning_polecat_is_left_to_the_mayor(town: Town, store: Store) -> None:
    """A ``spawning`` row is ignored while the town is up, reported (not fixed) while down."""
    polecat_row(town, store, "toast", working=False)
    assert reconcile(town, store, fix=True, town_up=True) == []
    found = down(town, store, fix=True)
    assert [(f.kind, f.subject, f.fixed) for f in found] == [("half_created", "toast", False)]
    assert "mayor" in (found[0].action or "")
    assert store.polecat("web", "toast").state == "spawning"


# -- git registry and branches ------------------------------------------------------------


def test_stale_git_worktree_entry_is_pruned(town: Town, store: Store) -> None:
    """A crew-style worktree whose folder vanished is pruned from git's registry."""
    elsewhere = town.crew_dir("web") / "max"
    with repo_lock(clone(town)):
        git("worktree", "add", "-q", "-b", "crew/max", str(elsewhere), "main", cwd=clone(town))
    shutil.rmtree(elsewhere)
    found = down(town, store)
    assert kinds(found) == [("stale_git_worktree", str(elsewhere))]
    assert down(town, store, fix=True)[0].fixed
    assert str(elsewhere) not in git("worktree", "list", cwd=clone(town))
    assert "crew/max" in branches(town)  # pruning drops bookkeeping, never a branch
    assert down(town, store) == []


def test_orphan_branches_landed_deleted_unlanded_kept(town: Town, store: Store) -> None:
    """``polecat/*`` branches with no row and no folder: landed ones deleted, others kept."""
    git("branch", "polecat/done1", "main", cwd=clone(town))
    git("branch", "polecat/busy", "main", cwd=clone(town))
    path = add_worktree(town, "tmp")
    work = commit(path, "unlanded.txt")
    with repo_lock(clone(town)):
        git("worktree", "remove", "--force", str(path), cwd=clone(town))
    git("branch", "-m", "polecat/tmp", "polecat/keeper", cwd=clone(town))
    found = down(town, store)
    assert kinds(found) == [("orphan_branch", "polecat/busy"), ("orphan_branch", "polecat/done1"),
                            ("orphan_branch", "polecat/keeper")]
    fixed = {f.subject: f for f in down(town, store, fix=True)}
    assert fixed["polecat/done1"].fixed and fixed["polecat/busy"].fixed
    assert not fixed["polecat/keeper"].fixed
    assert (fixed["polecat/keeper"].action or "").startswith("kept: has 1 unmerged commit")
    assert [b for b in branches(town) if b.startswith("polecat/")] == ["polecat/keeper"]
    assert git("rev-parse", "polecat/keeper", cwd=clone(town)).strip() == work
    assert [f.subject for f in down(town, store, fix=True)] == ["polecat/keeper"]


def test_branch_of_registered_polecat_is_not_an_orphan(town: Town, store: Store) -> None:
    """A branch whose polecat has a row is the polecat's, even before its folder exists."""
    polecat_row(town, store, "toast", working=False)
    git("branch", "polecat/toast", "main", cwd=clone(town))
    assert reconcile(town, store, fix=True, town_up=True) == []
    assert "polecat/toast" in branches(town)


# -- merge requests -----------------------------------------------------------------------


def _done_polecat_with_mr(town: Town, store: Store, name: str) -> tuple[str, str]:
    polecat_row(town, store, name)
    path = add_worktree(town, name)
    head = commit(path, f"{name}.txt")
    mr = store.record_done("web", name, Done("completed"), head=head,
                           base=git("rev-parse", "main", cwd=clone(town)).strip(),
                           with_mr=True)
    assert mr is not None
    return mr.id, head


def test_queued_mr_that_already_landed_is_recorded_merged(town: Town, store: Store) -> None:
    """A queued MR whose head is on main by patch is marked merged and its bead closed."""
    mr_id, head = _done_polecat_with_mr(town, store, "toast")
    assert reconcile(town, store, town_up=True) == []  # not landed yet: nothing to say
    land_by_cherry_pick(town, head)
    found = reconcile(town, store, town_up=True)
    assert kinds(found) == [("landed_mr", mr_id)]
    fixed = reconcile(town, store, fix=True, town_up=True)
    assert fixed[0].fixed
    mr = store.merge_request(mr_id)
    assert mr.state == "merged"
    assert mr.merged_commit == git("rev-parse", "main", cwd=clone(town)).strip()
    assert store.bead(store.polecat("web", "toast").bead or "").status == "closed"
    assert reconcile(town, store, town_up=True) == []


def test_running_mr_is_left_to_the_refinery_while_the_town_is_up(town: Town,
                                                                 store: Store) -> None:
    """A running MR that landed is the refinery's while up, and settled while down."""
    mr_id, head = _done_polecat_with_mr(town, store, "toast")
    store.start_merge_requests([mr_id])
    land_by_cherry_pick(town, head)
    assert reconcile(town, store, fix=True, town_up=True) == []
    assert store.merge_request(mr_id).state == "running"
    fixed = down(town, store, fix=True)
    assert [(f.kind, f.fixed) for f in fixed] == [("landed_mr", True)]
    assert store.merge_request(mr_id).state == "merged"


def test_unlanded_mr_is_not_touched(town: Town, store: Store) -> None:
    """A queued MR whose change is not on main stays queued."""
    mr_id, _ = _done_polecat_with_mr(town, store, "toast")
    assert down(town, store, fix=True) == []
    assert store.merge_request(mr_id).state == "queued"


# -- sessions ----------------------------------------------------------------------------


def _tagged_sleeper(town: Town, name: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GASTOWN_TOWN=str(town.root), GASTOWN_RIG="web",
               GASTOWN_POLECAT=name)
    return subprocess.Popen(["sleep", "600"], env=env, start_new_session=True)


def test_orphan_process_is_stopped_and_owned_one_kept(town: Town, store: Store) -> None:
    """A process tagged for a polecat with no row is stopped; one whose row exists lives."""
    polecat_row(town, store, "toast")
    add_worktree(town, "toast")
    owned = _tagged_sleeper(town, "toast")
    orphan = _tagged_sleeper(town, "ghost")
    try:
        found = down(town, store)
        assert [(f.kind, f.subject) for f in found] == [("orphan_session", "gt-web-ghost")]
        assert str(orphan.pid) in found[0].detail
        assert down(town, store, fix=True)[0].fixed
        assert orphan.wait(timeout=10) == -signal.SIGTERM
        assert owned.poll() is None
        assert down(town, store) == []
    finally:
        for proc in (owned, orphan):
            proc.kill()
            proc.wait()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_orphan_tmux_session_is_stopped(town: Town, store: Store) -> None:
    """A tmux session ``gt-web-<name>`` on the town's server with no row is stopped."""
    from gastown.roles.adapters.sessions import tmux_socket_name, town_sessions

    socket = tmux_socket_name(town.root)
    subprocess.run(["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s",
                    "gt-web-ghost", "sleep", "600"], check=True)
    subprocess.run(["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s",
                    "someone-else", "sleep", "600"], check=True)
    pane = subprocess.run(["tmux", "-L", socket, "list-panes", "-t", "=gt-web-ghost", "-F",
                           "#{pane_pid}"], capture_output=True, text=True,
                          check=True).stdout.strip()
    start = process_start_time(int(pane))
    assert start is not None
    found = down(town, store)
    assert [(f.kind, f.subject) for f in found] == [("orphan_session", "gt-web-ghost")]
    assert down(town, store, fix=True)[0].fixed
    assert town_sessions(town.root) == ["someone-else"]
    assert not is_same_process(int(pane), start)
    assert down(town, store) == []


# -- staging -----------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for folder, dirs, _files in os.walk(path):
        for name in [*dirs, "."]:
            os.utime(Path(folder) / name, (then, then))


def test_staging_leftovers_are_removed_unless_recent(town: Town, store: Store) -> None:
    """An old ``rig add`` leftover is removed; a fresh one (maybe still cloning) is not."""
    staging = town.runtime_dir / "staging"
    old = staging / "rig-api-0123abcd"
    (old / "refinery" / "rig").mkdir(parents=True)
    _age(old, 3600)
    fresh = staging / "rig-cli-89abcdef"
    (fresh / "refinery").mkdir(parents=True)
    found = down(town, store)
    assert [(f.rig, f.kind, f.subject) for f in found] == [("api", "staging_leftover", str(old))]
    assert down(town, store, fix=True)[0].fixed
    assert not old.exists() and fresh.exists()
    assert down(town, store) == []


def test_interrupted_rig_remove_is_moved_back(town: Town, store: Store) -> None:
    """A registered rig whose folder an interrupted remove left in staging gets it back."""
    doomed = town.runtime_dir / "staging" / "removed-web-0123abcd"
    os.rename(town.rig_dir("web"), doomed)
    _age(doomed, 3600)
    found = down(town, store, fix=True)
    assert [(f.kind, f.fixed) for f in found if f.kind == "staging_leftover"] == \
        [("staging_leftover", True)]
    assert (town.refinery_clone("web") / ".git").is_dir()
    assert down(town, store) == []


# -- events and scope ----------------------------------------------------------------------


def test_fixes_are_domain_events(town: Town, store: Store) -> None:
    """Every fix is a ``doctor_fixed`` event naming the rig, polecat and check."""
    (town.polecats_dir("web") / "ghost").mkdir()
    polecat_row(town, store, "toast")
    before = store.last_event_seq()
    down(town, store, fix=True)
    events = [e for e in store.events_after(before) if e.kind == "doctor_fixed"]
    assert sorted((e.rig, e.polecat, e.data["check"]) for e in events) == [
        ("web", "ghost", "half_created"), ("web", "toast", "stale_registration")]


def test_rig_filter(town: Town, store: Store, tmp_path: Path) -> None:
    """``rig=`` limits the checks to that rig."""
    add_rig(town, store, "api", str(make_remote(tmp_path / "src-api")), cwd=tmp_path)
    (town.polecats_dir("web") / "ghost").mkdir()
    assert down(town, store, rig="api") == []
    assert [f.rig for f in down(town, store, rig="web")] == ["web"]
