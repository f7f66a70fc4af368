"""The demo's run: build, start, sling, follow, check, stop."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from demo.checks import check_repositories, expected_differences, town_processes
from demo.sample import (
    DEMO_BEADS,
    SETTLE_TIMEOUT,
    DemoBead,
    git,
    make_sample_repo,
    model_script,
    test_command,
)
from demo.town import DemoFailed, Town, follow_until_settled


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
                print("processes of the town still running:\n  "
                      + "\n  ".join(f"{pid}: {argv}" for pid, argv in left.items()))
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
