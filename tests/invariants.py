"""The project's first promises, checked on real git after a scenario.

- :func:`main_never_moved_backwards`: every update of the branch's reflog, oldest to
  newest, is a descendant of the one before (no reset that dropped a landed commit).
- :func:`every_merged_patch_on_main`: every ``merged`` MR's change is on the default
  branch (by ``git patch-id``, so rebased work counts), and no patch is there twice.
- :func:`check_invariants`: both, on the refinery's clone and, when the rig's repository
  is a local path, on that remote too.

Each raises :class:`AssertionError` with every problem it found. A bare remote has no
reflog unless ``core.logAllRefUpdates=always``: :func:`make_bare_remote` sets it.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from itertools import pairwise
from pathlib import Path

from gastown.roles.adapters.store import MergeRequest, Rig, Store, open_store


def _git(repo: Path, *args: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                            input=stdin, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} in {repo}: {result.stderr.strip()}")
    return result.stdout


def make_bare_remote(src: Path, dest: Path) -> Path:
    """``git clone --bare src dest`` with a reflog for every ref update (for the checks)."""
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(dest)], check=True)
    _git(dest, "config", "core.logAllRefUpdates", "always")
    return dest


def reflog(repo: Path, branch: str) -> list[str]:
    """The commits ``refs/heads/<branch>`` pointed at, oldest first (empty: no reflog)."""
    out = _git(repo, "reflog", "show", "--format=%H", f"refs/heads/{branch}", "--",
               check=False)
    return [line.strip() for line in out.splitlines() if line.strip()][::-1]


def _is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", ancestor, descendant],
                          cwd=repo, capture_output=True, check=False).returncode == 0


def main_never_moved_backwards(repo: Path, branch: str) -> None:
    """Each reflog entry of ``branch`` in ``repo`` descends from the previous one."""
    entries = reflog(repo, branch)
    problems = []
    for older, newer in pairwise(entries):
        if not _is_ancestor(repo, older, newer):
            lines = _git(repo, "reflog", "show", "--format=%h %gs", f"refs/heads/{branch}",
                         "--", check=False)
            problems.append(f"{repo}: {branch} moved from {older[:10]} to {newer[:10]}, "
                            f"which does not descend from it; reflog (newest first):\n"
                            f"{lines}")
            break
    assert not problems, "\n".join(problems)


def patch_ids(repo: Path, *revs: str) -> dict[str, str]:
    """``commit -> patch id`` for the non-merge commits of ``git log revs`` (no empty ones)."""
    log = _git(repo, "log", "--no-merges", "--format=commit %H", "-p", *revs, "--")
    if not log.strip():
        return {}
    out = _git(repo, "patch-id", "--stable", stdin=log)
    ids = {}
    for line in out.splitlines():
        patch, _, commit = line.partition(" ")
        ids[commit.strip()] = patch
    return ids


#: An MR's commits and their patch ids, or why they cannot be read.
MrPatches = dict[str, str] | str


def _mr_patches(clone: Path, mr: MergeRequest) -> MrPatches:
    """The MR's commits and their patch ids, read in the clone (or why they cannot be)."""
    assert mr.head is not None
    if subprocess.run(["git", "cat-file", "-e", f"{mr.head}^{{commit}}"], cwd=clone,
                      capture_output=True, check=False).returncode != 0:
        return f"MR {mr.id}: its head {mr.head[:10]} is not in {clone}"
    spec = [mr.head, f"^{mr.base}"] if mr.base else [mr.head]
    return patch_ids(clone, *spec)


def _merged_problems(store: Store, rig: Rig, clone: Path, repo: Path,
                     mr_patches: dict[str, MrPatches] | None = None) -> list[str]:
    """``repo``'s default branch against the merged MRs; ``mr_patches`` keeps what was read
    of each MR in the clone, for a second repository checked against the same MRs."""
    mr_patches = {} if mr_patches is None else mr_patches
    branch = rig.default_branch
    on_main = patch_ids(repo, branch)
    problems = []
    counts = Counter(on_main.values())
    for commit, patch in on_main.items():
        if counts[patch] > 1:
            problems.append(f"{repo}: patch {patch[:10]} (commit {commit[:10]}) is on "
                            f"{branch} {counts[patch]} times")
    have = set(on_main.values())
    for mr in store.merge_requests(rig.name):
        if mr.state != "merged" or not mr.head:
            continue
        if mr.id not in mr_patches:
            mr_patches[mr.id] = _mr_patches(clone, mr)
        patches = mr_patches[mr.id]
        if isinstance(patches, str):
            problems.append(patches)
            continue
        missing = [c for c, p in patches.items() if p not in have]
        if missing:
            problems.append(f"MR {mr.id} (bead {mr.bead}) is merged but {len(missing)} of "
                            f"its commit(s) are not on {branch} in {repo}: "
                            + ", ".join(c[:10] for c in missing))
    return problems


def _open(store_or_town: Store | Path) -> tuple[Store, bool]:
    if isinstance(store_or_town, Store):
        return store_or_town, False
    return open_store(store_or_town / "state.db"), True


def every_merged_patch_on_main(store_or_town: Store | Path, rig: str, *,
                               repo: Path | None = None) -> None:
    """Every merged MR of ``rig`` is on the default branch of ``repo`` (default: the
    refinery's clone) by patch id, and no patch is on it twice."""
    store, owned = _open(store_or_town)
    try:
        record = store.rig(rig)
        town = store.path.parent
        clone = town / rig / "refinery" / "rig"
        problems = _merged_problems(store, record, clone, repo or clone)
    finally:
        if owned:
            store.close()
    assert not problems, "\n".join(problems)


def local_remote(rig: Rig) -> Path | None:
    """The rig's repository when it is a local git repository (not a URL)."""
    if "://" in rig.repo or ":" in rig.repo.split("/")[0]:
        return None
    path = Path(rig.repo)
    return path if path.is_dir() else None


def check_invariants(town: Path, rig: str) -> None:
    """Both checks on the refinery's clone, and on a local remote: the reflog always (when
    it has one), merged patches when the rig records no unpushed work."""
    problems: list[str] = []
    with open_store(town / "state.db") as store:
        record = store.rig(rig)
        branch = record.default_branch
        clone = town / rig / "refinery" / "rig"
        repos = [clone]
        remote = local_remote(record)
        if remote is not None:
            repos.append(remote)
        for repo in repos:
            try:
                main_never_moved_backwards(repo, branch)
            except AssertionError as exc:
                problems.append(str(exc))
        mr_patches: dict[str, MrPatches] = {}
        problems += _merged_problems(store, record, clone, clone, mr_patches)
        if remote is not None and record.push_error is None and record.mq_paused is None:
            problems += _merged_problems(store, record, clone, remote, mr_patches)
    assert not problems, f"rig {rig}: " + "\n".join(problems)


def check_town_invariants(town: Path) -> list[str]:
    """:func:`check_invariants` for every rig of the town; the problems, one per rig."""
    if not (town / "state.db").exists():
        return []
    try:
        with open_store(town / "state.db") as store:
            rigs = [r.name for r in store.rigs()]
    except Exception:  # a test that broke the store on purpose has nothing to check here
        return []
    problems = []
    for rig in rigs:
        if not (town / rig / "refinery" / "rig").is_dir():
            continue
        try:
            check_invariants(town, rig)
        except AssertionError as exc:
            problems.append(str(exc))
    return problems
