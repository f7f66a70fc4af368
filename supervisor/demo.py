"""The README's main job (``make demo``): a demo town driven through the real CLI.

Each step prints the ``gastown`` command it runs and that command's output, so the demo
doubles as a walkthrough. It builds a small sample repository, a town around it, a rig
and a few beads. The running town (supervisor, mayor, witness, refinery, ``script``
agents merged through the queue) joins the demo as those parts land; until then the demo
stops after the ledger and says so.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SAMPLE_FILES = {
    "README.md": "# calc\n\nA tiny calculator the demo's agents improve.\n",
    "calc.py": "def add(a, b):\n    return a + b\n",
    "test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
}

DEMO_BEADS = [
    ("Add subtraction", "printf 'def sub(a, b):\\n    return a - b\\n' > sub.py"),
    ("Add multiplication", "printf 'def mul(a, b):\\n    return a * b\\n' > mul.py"),
    ("Write a changelog", "echo '- first release' > CHANGELOG.md"),
]


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GIT_AUTHOR_NAME", "gastown demo")
    env.setdefault("GIT_AUTHOR_EMAIL", "demo@gastown.invalid")
    env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
    env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    return env


def make_sample_repo(path: Path) -> None:
    path.mkdir(parents=True)
    for name, text in SAMPLE_FILES.items():
        (path / name).write_text(text)
    env = _git_env()
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["commit", "-q", "-m", "calc: first version"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True)


def gastown(town: Path, *args: str) -> str:
    """Run one real ``gastown`` command, echoing it and its output; stop the demo on failure."""
    print(f"\n$ gastown {shlex.join(args)}", flush=True)
    env = _git_env()
    env["GASTOWN_TOWN"] = str(town)
    proc = subprocess.run([sys.executable, "-m", "gastown.supervisor", *args], env=env,
                          capture_output=True, text=True, check=False)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"demo: 'gastown {shlex.join(args)}' failed ({proc.returncode})")
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gastown-demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to build the demo (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the demo town afterwards")
    args = parser.parse_args(argv)
    base = args.dir or Path(tempfile.mkdtemp(prefix="gastown-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    town, repo = base / "town", base / "calc"
    if town.exists() or repo.exists():
        raise SystemExit(f"demo: {base} already holds a demo; remove it or pass another --dir")
    try:
        make_sample_repo(repo)
        print(f"sample repository: {repo}")
        gastown(town, "install", str(town))
        gastown(town, "rig", "add", "calc", str(repo))
        gastown(town, "rig", "list")
        for title, script in DEMO_BEADS:
            gastown(town, "bead", "create", title, "--rig", "calc", "-d", script)
        gastown(town, "bead", "list")
        print("\nThe ledger is ready. Slinging these beads to script agents, merging them "
              "through the refinery and nuking the polecats joins this demo with the "
              "running town (see the README's status section).")
    finally:
        if args.keep or args.dir:
            print(f"\ndemo town kept at {town}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
