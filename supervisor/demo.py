"""The README's main job (``make demo``): a running town merges, rejects and cleans up.

It builds a small sample project (a ``calc`` package that ships its ``unittest`` tests) with
a bare clone standing for its remote, a town around it whose rig gates every merge on those
tests, and a ledger of ``script`` beads (each bead's description is the shell script its
agent runs): independent good changes, a pair that rewrites the same line, and one change
that breaks the tests. Then it starts the town, slings every bead, follows the live feed
until every bead has settled, checks the outcomes, the remote and the clean-up, and stops
the town. Every ``gastown`` command it runs is the real CLI, echoed with its output.

Sessions use the ``process`` backend (detached process groups, output in
``logs/sessions/``), so the demo needs no tmux.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: How long the beads get to settle before the demo gives up and says what is pending.
SETTLE_TIMEOUT = 300.0

SAMPLE_FILES = {
    "README.md": "# calc\n\nA tiny calculator the demo's agents improve.\n\n"
                 "Run the tests with `python -m unittest discover -s tests -t .`.\n",
    "calc/__init__.py": '"""calc: a tiny calculator."""\n',
    "calc/core.py": "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n",
    "calc/version.py": 'VERSION = "1.0"\n',
    "tests/__init__.py": "",
    "tests/test_core.py": textwrap.dedent("""\
        import unittest

        from calc.core import add, mul


        class CoreTest(unittest.TestCase):
            def test_add(self):
                self.assertEqual(add(2, 3), 5)

            def test_mul(self):
                self.assertEqual(mul(4, 5), 20)
        """),
}


def _new_function(module: str, name: str, body: str, call: str, result: str) -> str:
    """A bead script adding ``calc/<module>.py`` with one function and its own test file."""
    return textwrap.dedent(f"""\
        cat > calc/{module}.py <<'EOF'
        def {name}:
            return {body}
        EOF
        cat > tests/test_{module}.py <<'EOF'
        import unittest

        from calc.{module} import {name.split("(")[0]}


        class Test(unittest.TestCase):
            def test_{module}(self):
                self.assertEqual({call}, {result})
        EOF
        """)


def _release(version: str) -> str:
    """A bead script rewriting the one line of ``calc/version.py``."""
    return ("# start late, so that its rival is surely slung from the same main\n"
            "sleep 1\n"
            f"printf 'VERSION = \"{version}\"\\n' > calc/version.py\n")


@dataclass(frozen=True)
class DemoBead:
    title: str
    script: str
    expect: str  # "merged", "gate", or "pair" (one of the pair lands, the other conflicts)


DEMO_BEADS = [
    DemoBead("Add subtraction", _new_function("sub", "sub(a, b)", "a - b", "sub(7, 2)", "5"),
             "merged"),
    DemoBead("Add integer division",
             _new_function("div", "div(a, b)", "a // b", "div(17, 5)", "3"), "merged"),
    DemoBead("Add power", _new_function("power", "power(a, n)", "a ** n", "power(2, 10)",
                                        "1024"), "merged"),
    DemoBead("Add mean", _new_function("mean", "mean(xs)", "sum(xs) / len(xs)",
                                       "mean([1, 2, 3, 6])", "3"), "merged"),
    DemoBead("Release as 1.1", _release("1.1"), "pair"),
    DemoBead("Release as 2.0", _release("2.0"), "pair"),
    DemoBead("Make add faster", "# an optimisation that breaks add: the test gate stops it\n"
                                "sed -i 's/return a + b/return a - b/' calc/core.py\n", "gate"),
]


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GIT_AUTHOR_NAME", "gastown demo")
    env.setdefault("GIT_AUTHOR_EMAIL", "demo@gastown.invalid")
    env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
    env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    return env


def git(*args: str, cwd: Path, echo: bool = False) -> str:
    if echo:
        print(f"\n$ git -C {cwd} {shlex.join(args)}", flush=True)
    out = subprocess.run(["git", *args], cwd=cwd, env=_git_env(), check=True,
                         capture_output=True, text=True).stdout
    if echo:
        sys.stdout.write(out)
    return out


def test_command() -> str:
    """The rig's test gate: the project's own tests, run by this interpreter."""
    return f"{shlex.quote(sys.executable)} -m unittest discover -q -s tests -t ."


def make_sample_repo(path: Path, remote: Path) -> None:
    """The sample project as a git repository, and a bare clone of it as its remote."""
    for name, text in SAMPLE_FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git("init", "-q", "-b", "main", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "calc: first version", cwd=path)
    subprocess.run([sys.executable, "-m", "unittest", "discover", "-q", "-s", "tests", "-t",
                    "."], cwd=path, check=True, capture_output=True)
    git("clone", "-q", "--bare", str(path), str(remote), cwd=path.parent)


class Town:
    """The demo town, driven through the real ``gastown`` CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = _git_env()
        self.env["GASTOWN_TOWN"] = str(root)
        self.up = False

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gastown.supervisor", *args]

    def run(self, *args: str, shown: str | None = None, check: bool = True) -> str:
        """Run one command, echoing it (as ``shown`` when given) and its output."""
        print(f"\n$ gastown {shown or shlex.join(args)}", flush=True)
        proc = subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True,
                              check=False)
        sys.stdout.write(proc.stdout)
        sys.stdout.write(proc.stderr)
        sys.stdout.flush()
        if check and proc.returncode != 0:
            raise DemoFailed(f"'gastown {shown or shlex.join(args)}' failed "
                             f"(exit {proc.returncode})")
        return proc.stdout

    def query(self, *args: str) -> Any:
        """A ``--json`` listing, read quietly (the settle checks run after every event)."""
        proc = subprocess.run(self.argv(*args, "--json"), env=self.env, capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise DemoFailed(f"'gastown {shlex.join(args)} --json' failed: "
                             f"{proc.stderr.strip()}")
        return json.loads(proc.stdout)


class DemoFailed(Exception):
    """The demo cannot go on, or its outcome is not the one expected."""


# -- the live feed -----------------------------------------------------------------------

class Feed:
    """``gastown feed -f --json`` as a subprocess; its events arrive on a queue."""

    def __init__(self, town: Town) -> None:
        self.proc = subprocess.Popen(town.argv("feed", "-f", "--json"), env=town.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue
        self.events.put(None)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def describe(event: dict[str, Any]) -> str:
    """One readable line for an event (the feed's own wording, merge requests shortened)."""
    from gastown.supervisor.feed import format_event

    kind = event.get("kind")
    who = f"{event.get('rig')}/{event.get('polecat')}"
    if kind == "mr_started":
        return f"merge request {event.get('mr')} started: {who} ({event.get('bead')})"
    if kind == "mr_merged":
        return (f"merge request {event.get('mr')} MERGED as {str(event.get('commit'))[:10]}"
                f" ({event.get('bead')})")
    if kind == "mr_rejected":
        reason = str(event.get("reason") or "").splitlines()[0:1]
        return f"merge request {event.get('mr')} REJECTED: {''.join(reason)} " \
               f"({event.get('bead')})"
    return format_event(event).partition("  ")[2]


# -- settling --------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    kind: str  # merged, rejected, escalated
    detail: str  # the merged commit, or the reason
    polecat: str
    branch: str
    worktree: str | None
    log: str | None = None  # the merge queue's log of its gate run

    def __str__(self) -> str:
        if self.kind == "merged":
            return f"merged as {self.detail[:10]}"
        return f"{self.kind}: {self.detail}"


def outcomes(town: Town, beads: list[str]) -> dict[str, Outcome | str]:
    """Each bead's outcome once settled, else a word on where it is."""
    by_bead = {b["id"]: b for b in town.query("bead", "list", "--rig", "calc")}
    mrs: dict[str, dict[str, Any]] = {}
    for mr in sorted(town.query("mq", "list", "calc"), key=lambda m: float(m["created_at"])):
        mrs[mr["bead"]] = mr
    polecats = {p["bead"]: p for p in town.query("polecat", "list", "calc")}
    found: dict[str, Outcome | str] = {}
    for bead_id in beads:
        bead, mr, cat = by_bead[bead_id], mrs.get(bead_id), polecats.get(bead_id)
        if bead["status"] == "blocked" or (cat is not None and cat["state"] == "escalated"):
            found[bead_id] = Outcome("escalated", str(bead.get("reason") or
                                                      (cat or {}).get("reason")),
                                     cat["name"] if cat else "?",
                                     cat["branch"] if cat else "?",
                                     cat["worktree"] if cat else None)
        elif mr is not None and mr["state"] == "merged" and bead["status"] == "closed" \
                and cat is None:
            found[bead_id] = Outcome("merged", str(mr["merged_commit"]), mr["polecat"],
                                     mr["branch"], None)
        elif mr is not None and mr["state"] == "rejected" and bead["status"] == "open" \
                and bead.get("reason"):
            found[bead_id] = Outcome("rejected", str(mr["reason"]).splitlines()[0],
                                     mr["polecat"], mr["branch"],
                                     cat["worktree"] if cat else None, mr.get("log"))
        else:
            where = f"bead {bead['status']}"
            if cat is not None:
                where += f", polecat {cat['name']} {cat['state']}"
            if mr is not None:
                where += f", MR {mr['id']} {mr['state']}" + (
                    f" ({mr['step']})" if mr.get("step") else "")
            found[bead_id] = where
    return found


SETTLE_KINDS = {"mr_merged", "mr_rejected", "polecat_nuked", "polecat_escalated",
                "polecat_rejected", "bead_status_changed"}


def follow_until_settled(town: Town, beads: list[str], since: float,
                         timeout: float) -> dict[str, Outcome]:
    """Print the live feed; after each burst of relevant events, check whether all settled."""
    print("\n$ gastown feed -f --json\n# the events since the first sling, then live, each as "
          "a readable line; after each\n# one the demo reads `gastown bead list/mq list/"
          "polecat list --json` to see what has settled", flush=True)
    feed = Feed(town)
    deadline = time.monotonic() + timeout
    try:
        state = outcomes(town, beads)
        while True:
            if all(isinstance(o, Outcome) for o in state.values()):
                return {b: o for b, o in state.items() if isinstance(o, Outcome)}
            relevant = False
            try:
                event = feed.events.get(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
            except queue.Empty:
                event, relevant = {}, True  # a safety net: look again now and then
            while event is not None:
                if event and float(event.get("ts", 0)) >= since:
                    print(f"  +{float(event['ts']) - since:6.2f}s  {describe(event)}",
                          flush=True)
                    relevant = relevant or event.get("kind") in SETTLE_KINDS
                try:
                    event = feed.events.get_nowait()
                except queue.Empty:
                    break
            if event is None:
                raise DemoFailed("the feed stopped unexpectedly")
            late = time.monotonic() > deadline
            if relevant or late:
                state = outcomes(town, beads)
            if late and not all(isinstance(o, Outcome) for o in state.values()):
                lines = "\n".join(f"  {b}: {o}" for b, o in state.items()
                                  if not isinstance(o, Outcome))
                raise DemoFailed(f"timed out after {timeout:.0f}s; still pending:\n{lines}")
    finally:
        feed.close()


# -- checks ----------------------------------------------------------------------------

def expected_differences(beads: dict[str, DemoBead], got: dict[str, Outcome]) -> list[str]:
    wrong = []
    pair = [b for b, d in beads.items() if d.expect == "pair"]
    for bead_id, demo in beads.items():
        outcome = got[bead_id]
        if demo.expect == "merged" and outcome.kind != "merged":
            wrong.append(f"{bead_id} ({demo.title}) should have merged, but {outcome}")
        if demo.expect == "gate" and not (outcome.kind == "rejected"
                                          and outcome.detail.startswith("gate test")):
            wrong.append(f"{bead_id} ({demo.title}) should have been rejected by the test "
                         f"gate, but {outcome}")
    kinds = sorted(got[b].kind for b in pair)
    if kinds != ["merged", "rejected"] or not any(
            got[b].kind == "rejected" and got[b].detail.startswith("conflict: calc/version.py")
            for b in pair):
        wrong.append("of the conflicting pair one should have merged and the other been "
                     "rejected as a conflict on calc/version.py, but: "
                     + "; ".join(f"{b} {got[b]}" for b in pair))
    return wrong


def check_repositories(town: Town, remote: Path, base: Path,
                       got: dict[str, Outcome]) -> list[str]:
    """The remote's main, the refinery clone's worktrees and branches; returns problems."""
    wrong = []
    clone = town.root / "calc" / "refinery" / "rig"
    git("log", "--oneline", "main", cwd=remote, echo=True)
    landed = git("log", "--format=%H", "main", cwd=remote).split()
    for bead_id, outcome in got.items():
        if outcome.kind == "merged" and outcome.detail not in landed:
            wrong.append(f"{bead_id}'s commit {outcome.detail[:10]} is not on the remote")
    if git("log", "--merges", "--format=%H", "main", cwd=remote).strip():
        wrong.append("the remote's main has merge commits (the queue only fast-forwards)")

    git("worktree", "list", cwd=clone, echo=True)
    listed = {Path(line.split(" ", 1)[1]).resolve() for line in
              git("worktree", "list", "--porcelain", cwd=clone).splitlines()
              if line.startswith("worktree ")}
    kept = {Path(o.worktree).resolve() for o in got.values()
            if o.kind != "merged" and o.worktree}
    if listed != {clone.resolve()} | kept:
        wrong.append(f"worktrees {sorted(map(str, listed))}, expected the clone and "
                     f"{sorted(map(str, kept))}")

    git("branch", "--list", "polecat/*", cwd=clone, echo=True)
    branches = {line.strip(" *+") for line in
                git("branch", "--list", "polecat/*", cwd=clone).splitlines()}
    unmerged = {o.branch for o in got.values() if o.kind != "merged"}
    if branches != unmerged:  # a name (so a branch) may serve a merged bead, then a rejected one
        wrong.append(f"polecat branches {sorted(branches)}, expected only the unmerged "
                     f"{sorted(unmerged)}")

    print("\n# the remote's main passes the project's tests:", flush=True)
    check = base / "check"
    git("clone", "-q", str(remote), str(check), cwd=base)
    print(f"$ {test_command()}    (in a fresh clone of the remote)", flush=True)
    tests = subprocess.run(shlex.split(test_command()), cwd=check, capture_output=True,
                           text=True, check=False)
    sys.stdout.write(tests.stderr)
    if tests.returncode != 0:
        wrong.append("the remote's main fails its tests")
    return wrong


def town_processes(root: Path) -> list[str]:
    """Live processes whose command line names the town (Linux ``/proc``; else none)."""
    found = []
    needle = str(root).encode()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if needle in cmdline and stat.rpartition(")")[2].split()[0] != "Z":
            argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry}: {argv}")
    return found


# -- the demo --------------------------------------------------------------------------

def model_script(title: str, script: str) -> str:
    """A demo bead for a real agent CLI driven by the scripted model server (tests/
    scripted_model): one shell command per step — the bead's script (sent whole, so that
    its here-documents survive), a commit, then `gastown done`."""
    packed = base64.b64encode(script.encode()).decode()
    return ("The scripted model makes the agent run these commands, one per step.\n"
            "SCRIPT-BEGIN\n"
            f"printf %s {packed} | base64 -d | sh\n"
            f"git add -A && git commit -qm {shlex.quote(title)}\n"
            "gastown done\n"
            "SCRIPT-END\n"
            "NUDGE-BEGIN\ngastown done\nNUDGE-END\n")


def run_demo(base: Path, town: Town, agent: str = "script") -> int:
    repo, remote = base / "calc", base / "calc.git"
    make_sample_repo(repo, remote)
    print(f"sample project: {repo} (its remote: the bare clone {remote})")
    git("log", "--oneline", "--stat", cwd=repo, echo=True)

    town.run("install", str(town.root))
    if agent == "script":
        town_toml = (
            "# the demo's agents run their bead's description as a shell script; sessions\n"
            "# are detached process groups (no tmux needed), output in logs/sessions/\n"
            'default_agent = "script"\n[sessions]\nbackend = "process"\n')
    else:
        backend = "tmux" if shutil.which("tmux") else "process"
        town_toml = (
            f"# the demo's agents are the real {agent} CLI, its model a scripted server on\n"
            f"# loopback; watch one work with: gastown attach calc/NAME\n"
            f'default_agent = "{agent}"\n[sessions]\nbackend = "{backend}"\n')
    (town.root / "town.toml").write_text(town_toml + '[supervisor]\nstop_timeout = "5s"\n')
    print(f"\n# {town.root / 'town.toml'}:\n{(town.root / 'town.toml').read_text()}", end="")
    town.run("rig", "add", "calc", str(remote))
    rig_toml = town.root / "calc" / "rig.toml"
    rig_toml.write_text(rig_toml.read_text() + (
        "\n# every merge candidate must pass the project's tests\n"
        f'[[merge_queue.gates]]\nname = "test"\ncommand = {json.dumps(test_command())}\n'
        'timeout = "2m"\n'))
    print(f"\n# {rig_toml}:\n{rig_toml.read_text()}", end="")

    beads: dict[str, DemoBead] = {}
    for demo in DEMO_BEADS:
        description = demo.script if agent == "script" else model_script(demo.title,
                                                                         demo.script)
        bead_id = town.run("bead", "create", demo.title, "--rig", "calc", "-d", description,
                           shown=f"bead create {shlex.quote(demo.title)} --rig calc -d "
                                 "\"$script\"   # the script:\n"
                                 + textwrap.indent(demo.script, "      | ", lambda _: True)).strip()
        beads[bead_id] = demo
    town.run("bead", "list")

    town.up = True
    town.run("up")
    since = time.time()
    for bead_id in beads:
        town.run("sling", bead_id, "calc")
    got = follow_until_settled(town, list(beads), since, SETTLE_TIMEOUT)
    print(f"\nevery bead settled {time.time() - since:.1f}s after the first sling")

    town.run("mq", "list")
    town.run("bead", "list")
    town.run("polecat", "list")
    for bead_id, outcome in got.items():
        if outcome.detail.startswith("gate") and outcome.log and Path(outcome.log).is_file():
            tail = Path(outcome.log).read_text(errors="replace").rstrip().splitlines()[-12:]
            print(f"\n# why the gate rejected {bead_id}: the end of {outcome.log}")
            print(textwrap.indent("\n".join(tail), "  | ", lambda _: True))
    wrong = expected_differences(beads, got)
    wrong += check_repositories(town, remote, base, got)

    print("\n== outcomes ==")
    width = max(len(d.title) for d in beads.values())
    for bead_id, demo in beads.items():
        print(f"  {bead_id}  {demo.title:<{width}}  {got[bead_id]}")
    return report(wrong)


def report(wrong: list[str]) -> int:
    if wrong:
        print("\nDEMO FAILED: the outcomes differ from what the demo expects:")
        for line in wrong:
            print(f"  - {line}")
        return 1
    print("\nall as expected: the good beads merged and were pushed, the conflicting pair "
          "landed one\nand rejected the other, the test gate stopped the broken change; merged "
          "polecats were\nnuked, rejected work was kept.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gastown-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to build the demo (default: a new temporary directory, "
                             "removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the demo town afterwards")
    parser.add_argument("--agent", default="script", choices=["script", "claude", "codex"],
                        help="the agent the polecats run (default: script); claude and codex "
                             "need a model: `make demo AGENT=claude` brings a scripted one")
    args = parser.parse_args(argv)
    base: Path = (args.dir or Path(tempfile.mkdtemp(prefix="gastown-demo-"))).absolute()
    base.mkdir(parents=True, exist_ok=True)
    town = Town(base / "town")
    if any((base / name).exists() for name in ("town", "calc", "calc.git", "check")):
        print(f"demo: {base} already holds a demo; remove it or pass another --dir",
              file=sys.stderr)
        return 1
    started = time.monotonic()
    status = 1
    try:
        status = run_demo(base, town, args.agent)
    except DemoFailed as exc:
        print(f"\nDEMO FAILED: {exc}", flush=True)
        print(f"(logs: {town.root / 'logs'})", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the town", flush=True)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the town stop cleanly
        if town.up:
            town.run("down", "--all", check=False)
            left = town_processes(town.root)
            if left:
                print("processes of the town still running:\n  " + "\n  ".join(left))
                status = status or 1
            else:
                print("no process of the town is left")
        if args.keep or args.dir:
            print(f"\ndemo kept in {base} (town: {town.root})")
        else:
            shutil.rmtree(base, ignore_errors=True)
        print(f"demo finished in {time.monotonic() - started:.1f}s: "
              f"{'OK' if status == 0 else 'FAILED'}", flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
