"""The invariants checked after every chaos run, one violation class each.

Each check returns human-readable lines, one per violation; an empty list is a pass.
They read git (the bare remote and the refinery clone), the harness's own records
(``gate.txt``, ``commits.txt``), the CLI's JSON and ``/proc``.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.chaos.world import Census, World, tmux_sessions

ZERO = "0" * 40

#: Violation classes, in the order the summary prints them.
CLASSES = (
    "lost_work",          # an agent commit neither on main (by patch) nor on a kept branch
    "double_patch",       # one patch twice on the remote's main
    "untested_on_main",   # main (remote or clone) set to a commit whose tree no gate passed
    "main_backwards",     # a reflog entry of main that is not a fast-forward
    "merged_not_on_main", # a closed bead or merged MR whose work is not on the remote's main
    "stranded_bead",      # an open bead with no kept work and no rejected MR
    "orphan",             # worktree/branch/folder/file/session/process nobody accounts for
    "duplicate_role",     # two processes acting as one role, or one outliving its supervisor
    "supervisor_died",    # the supervisor went away without being killed
    "doctor",             # `gastown doctor` exit status not 0
    "traceback",          # a traceback in a log
    "not_converged",      # the town did not settle within the bounded wait
    "cli",                # a CLI call of the harness failed or hung (`up`, `sling`)
)


def _git(repo: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                            input=stdin, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {repo}: {result.stderr.strip()}")
    return result.stdout


def _is_ancestor(repo: Path, old: str, new: str) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", old, new], cwd=repo,
                          capture_output=True, check=False).returncode == 0


@dataclass(frozen=True)
class AgentCommit:
    commit: str
    patch: str  # "none" for a commit without a diff
    bead: str
    polecat: str


#: The subject the ``script`` agent gives its commit: ``<bead id>: <bead title>``.
AGENT_SUBJECT = re.compile(r"^([a-z]{2,4}-[0-9a-z]{5}): chaos ")


def _patch_ids(repo: Path, commits: list[str]) -> dict[str, str]:
    """commit -> patch id (``git patch-id --stable``) for ``commits`` that have a diff."""
    if not commits:
        return {}
    log = _git(repo, "log", "--no-walk=unsorted", "-p", "--format=commit %H", "--stdin",
               stdin="\n".join(commits) + "\n")
    out = _git(repo, "patch-id", "--stable", stdin=log)
    return {line.split()[1]: line.split()[0] for line in out.splitlines() if line.strip()}


def agent_commits(world: World) -> list[AgentCommit]:
    """Every commit an agent made: the post-commit hook's records, and (should a hook have
    been killed before it wrote its line) every commit object of the clone, reachable or
    not, that carries a script agent's subject. Rebased copies of an agent commit have the
    same patch, so counting them too changes nothing."""
    found: dict[str, tuple[str, str]] = {}  # commit -> (bead, polecat)
    if world.commit_record.exists():
        for line in world.commit_record.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                found[parts[0]] = (parts[1], parts[2])
    objects = _git(world.clone, "cat-file", "--batch-all-objects",
                   "--batch-check=%(objecttype) %(objectname)")
    commits = [line.split()[1] for line in objects.splitlines() if line.startswith("commit ")]
    if commits:
        subjects = _git(world.clone, "log", "--no-walk=unsorted", "--format=%H%x00%an%x00%s",
                        "--stdin", stdin="\n".join(commits) + "\n")
        for line in subjects.splitlines():
            commit, author, subject = [*line.split("\0", 2), "", ""][:3]
            match = AGENT_SUBJECT.match(subject)
            if match and commit not in found:
                found[commit] = (match.group(1), author)
    patches = _patch_ids(world.clone, sorted(found))
    return [AgentCommit(commit, patches.get(commit, "none"), bead, polecat)
            for commit, (bead, polecat) in sorted(found.items())]


def main_patches(world: World) -> list[tuple[str, str]]:
    """(patch id, commit) for each commit on the remote's main after the initial commit."""
    log = _git(world.remote, "log", "-p", "--format=commit %H", f"{world.initial}..main")
    out = _git(world.remote, "patch-id", "--stable", stdin=log)
    return [(line.split()[0], line.split()[1]) for line in out.splitlines() if line.strip()]


def passed_trees(world: World) -> set[str]:
    if not world.gate_record.exists():
        return set()
    return {line.split()[0] for line in world.gate_record.read_text().splitlines()
            if line.endswith(" pass")}


def reflog(git_dir: Path, branch: str = "main") -> list[tuple[str, str, str]]:
    """(old, new, message) for each update of ``branch``, oldest first."""
    path = git_dir / "logs" / "refs" / "heads" / branch
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        head, _, message = line.partition("\t")
        parts = head.split()
        if len(parts) >= 2:
            entries.append((parts[0], parts[1], message))
    return entries


def _kept_patches(world: World) -> set[str]:
    """Patch ids of the commits that kept work holds: every branch of the clone and every
    worktree's HEAD (commits since the initial one)."""
    refs = _git(world.clone, "for-each-ref", "--format=%(objectname)",
                "refs/heads/").split()
    for line in _git(world.clone, "worktree", "list", "--porcelain").splitlines():
        if line.startswith("HEAD "):
            refs.append(line.split()[1])
    commits = _git(world.clone, "rev-list", *sorted(set(refs)), f"^{world.initial}").split()
    return set(_patch_ids(world.clone, commits).values())


def stats(world: World, beads: dict[str, dict[str, Any]]) -> dict[str, int]:
    """What the run did, to show that the checks had something to check."""
    status = Counter(b["status"] for b in beads.values())
    return {"patches": len({c.patch for c in agent_commits(world) if c.patch != "none"}),
            "on_main": len(main_patches(world)),
            "gated": len(world.gate_record.read_text().splitlines())
            if world.gate_record.exists() else 0,
            "closed": status["closed"], "open": status["open"], "blocked": status["blocked"]}


def check_work(world: World, beads: dict[str, dict[str, Any]],
               mrs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """lost_work, double_patch, merged_not_on_main."""
    found: dict[str, list[str]] = {"lost_work": [], "double_patch": [],
                                   "merged_not_on_main": []}
    on_main = main_patches(world)
    patches = Counter(p for p, _ in on_main)
    for patch, count in patches.items():
        if count > 1:
            commits = [c[:10] for p, c in on_main if p == patch]
            found["double_patch"].append(f"patch {patch[:10]} {count} times on main: "
                                         f"{', '.join(commits)}")
    kept = _kept_patches(world)
    landed_beads = set()
    for record in agent_commits(world):
        if record.patch in patches:
            landed_beads.add(record.bead)
            continue
        if record.patch == "none" or record.patch in kept:
            continue  # no work in it, or kept on a branch or in a worktree
        found["lost_work"].append(f"commit {record.commit[:10]} of {record.bead} "
                                  f"(polecat {record.polecat}) is neither on main nor kept")
    for bead_id, bead in beads.items():
        if bead["status"] == "closed" and bead_id not in landed_beads:
            found["merged_not_on_main"].append(f"{bead_id} ({bead['title']}) is closed but "
                                               "none of its commits is on main")
    main = _git(world.remote, "rev-parse", "main").strip()
    for mr in mrs:
        if mr["state"] != "merged":
            continue
        found["merged_not_on_main"].extend(_mr_not_on_main(world, mr, main))
    return found


def _mr_not_on_main(world: World, mr: dict[str, Any], main: str) -> list[str]:
    """Why merged ``mr`` is not on the remote's ``main`` (its head's commits by patch, its
    merged commit by ancestry), or nothing."""
    out = []
    head, merged = mr.get("head"), mr.get("merged_commit")
    if head:
        try:
            cherry = _git(world.clone, "cherry", main, head)
        except RuntimeError as exc:
            return [f"MR {mr['id']} of {mr['bead']}: head {head[:10]} unreadable ({exc})"]
        missing = [line[2:12] for line in cherry.splitlines() if line.startswith("+ ")]
        if missing:
            out.append(f"MR {mr['id']} of {mr['bead']} is merged but commit(s) "
                       f"{', '.join(missing)} of its head are not on main")
    if merged and not _is_ancestor(world.remote, merged, main):
        out.append(f"MR {mr['id']} of {mr['bead']} merged as {merged[:10]}, which is not "
                   "on main")
    return out


def check_main(world: World, *, each_gated: bool = False) -> dict[str, list[str]]:
    """main_backwards and untested_on_main, from the reflogs of the remote and the clone;
    with ``each_gated`` (batches of one), also every commit on the remote's main, not
    only those main was set to (a chain pushes several gated commits at once)."""
    found: dict[str, list[str]] = {"main_backwards": [], "untested_on_main": []}
    passed = passed_trees(world)
    tips: dict[str, str] = {}
    for where, git_dir, repo in (("remote", world.remote, world.remote),
                                 ("refinery clone", world.clone / ".git", world.clone)):
        for old, new, message in reflog(git_dir):
            if new == ZERO:
                found["main_backwards"].append(f"{where}: main deleted ({message})")
                continue
            tips.setdefault(new, where)
            if old != ZERO and not _is_ancestor(repo, old, new):
                found["main_backwards"].append(
                    f"{where}: main moved {old[:10]} -> {new[:10]}, not a fast-forward "
                    f"({message})")
    final = _git(world.remote, "rev-parse", "main").strip()
    tips.setdefault(final, "remote")
    for tip, where in tips.items():
        if tip == world.initial:
            continue
        tree = _git(world.clone if where != "remote" else world.remote, "rev-parse",
                    f"{tip}^{{tree}}").strip()
        if tree not in passed:
            found["untested_on_main"].append(f"{where}: main was set to {tip[:10]}, whose "
                                             "tree no gate passed")
    if each_gated:
        log = _git(world.remote, "log", "--format=%H %T", f"{world.initial}..{final}")
        for line in log.splitlines():
            commit, tree = line.split()
            if tree not in passed and commit not in tips:
                found["untested_on_main"].append(f"remote: {commit[:10]} is on main, with "
                                                 "batches of one, and no gate passed its tree")
    return found


def check_beads(beads: dict[str, dict[str, Any]], polecats: list[dict[str, Any]],
                mrs: list[dict[str, Any]]) -> list[str]:
    """stranded_bead: an open bead must have kept work or a rejected MR to show for it."""
    out = []
    for bead_id, bead in beads.items():
        if bead["status"] != "open":
            continue
        kept = any(p["bead"] == bead_id for p in polecats)
        rejected = any(m["bead"] == bead_id and m["state"] == "rejected" for m in mrs)
        if not (kept or rejected):
            out.append(f"{bead_id} ({bead['title']}) is open with no polecat and no "
                       f"rejected MR (reason: {bead.get('reason')})")
    return out


def check_orphans(world: World, polecats: list[dict[str, Any]], seen: Census) -> list[str]:
    """Worktrees, branches, folders, files, sessions and processes nobody accounts for."""
    out = []
    by_path = {str(Path(p["worktree"])): p for p in polecats}
    names = {p["name"] for p in polecats}
    branches = {p["branch"] for p in polecats}
    for p in polecats:
        if p["state"] not in ("rejected", "escalated"):
            out.append(f"polecat {p['name']} left in state {p['state']}")
        if not Path(p["worktree"]).is_dir():
            out.append(f"polecat {p['name']} ({p['state']}) has no worktree")
        if p.get("session_alive"):
            out.append(f"polecat {p['name']} ({p['state']}) still has a live session")
    porcelain = _git(world.clone, "worktree", "list", "--porcelain")
    for block in porcelain.strip().split("\n\n"):
        lines = block.splitlines()
        path = lines[0].removeprefix("worktree ") if lines else ""
        if not path or Path(path) == world.clone:
            continue
        if any(line.startswith("prunable") for line in lines):
            out.append(f"worktree registration without a folder: {path}")
        elif Path(path) == world.speculative_checkout:
            if "detached" not in lines:
                out.append(f"speculative checkout on a branch: {path} ({lines[2:3]})")
        elif Path(path).parent == world.pool_dir:
            if "detached" not in lines:
                out.append(f"pool tree on a branch: {path} ({lines[2:3]})")
        elif path not in by_path:
            out.append(f"worktree of no polecat: {path}")
    for branch in _git(world.clone, "for-each-ref", "--format=%(refname:short)",
                       "refs/heads/polecat/").split():
        if branch not in branches:
            out.append(f"branch of no polecat: {branch}")
    if world.polecats_dir.is_dir():
        for entry in sorted(world.polecats_dir.iterdir()):
            match = re.fullmatch(r"\.(.+)\.(prompt|done)", entry.name)
            if match and match.group(1) not in names:
                out.append(f"file of no polecat: {entry.name}")
            elif not entry.name.startswith(".") and entry.name not in names:
                out.append(f"folder of no polecat: {entry.name}")
    for session in tmux_sessions(world):
        out.append(f"tmux session left: {session}")
    for pid in seen.agents:
        out.append(f"agent process left: {pid} {_cmd(pid)}")
    for pid in seen.gates:
        out.append(f"gate process left: {pid} {_cmd(pid)}")
    for pid, cmd in seen.others.items():
        if "tmux" in cmd.split(" ", 1)[0]:
            continue  # the town's tmux server; its sessions are checked above
        out.append(f"town process left: {pid} {cmd}")
    return out


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return "(gone)"


def check_tracebacks(world: World) -> list[str]:
    """Every log file of the town (role logs, role stdout, sessions, gates) without a
    Python traceback."""
    out: list[str] = []
    logs = world.town / "logs"
    if not logs.is_dir():
        return out
    for path in sorted(logs.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        at = text.find("Traceback (most recent call last)")
        if at >= 0:
            out.append(f"{path.relative_to(logs)}: {_exception_line(text[at:at + 20000])}")
    return out


def _exception_line(traceback: str) -> str:
    """The ``Error: message`` line that ends a traceback (JSON logs escape newlines)."""
    lines = traceback.replace("\\n", "\n").splitlines()[1:]
    for line in lines:
        if line and not line.startswith((" ", "Traceback", "During handling", "The above")):
            return line[:200].rstrip('"},')
    return "(traceback)"
